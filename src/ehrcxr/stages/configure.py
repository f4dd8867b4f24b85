"""``ehrcxr configure``: one small file per grid stage kind that says what the stage depends on.

A ``train@`` stage reads its model's ``models.<name>`` section (without its search space), the
shared ``encoders``, ``augment`` and ``train`` sections after the profile is applied, and runs
the code of the training core plus its model's file; an ``evaluate@`` stage reads ``evaluate``
and ``fairness`` and runs the evaluation code. Listing those files and sections in every stage
of ``dvc.yaml`` made ``dvc.lock`` ≈ 5 kB per stage, and DVC parses and rewrites the whole lock
after every stage (≈ 7 µs per byte here): the grid's DVC cost grew with the square of its size.
This stage writes them once, resolved, and each grid stage depends on one file:

- ``--out``/``train-<model>.json`` for every registered model: ``{"code": {file: sha256},
  "params": {"model", "encoders", "augment", "train"}}``;
- ``--out``/``tune-<model>.json`` (a ``tune@`` stage): the train file's code and params plus the
  search's code, ``search`` (``models.<model>.search``) and ``tune`` (without its lists of cells);
- ``--out``/``evaluate.json``: ``{"code": …, "params": {"evaluate", "fairness"}}``.

Only what changes a stage's outputs is in its file, so a stage reruns exactly when one of them
changes: editing a model's search space, the paper profile (under the default one), the report or
another model's file reruns no training. ``tests/test_training_core.py`` runs the commands and
checks that every package file they import is listed here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from ehrcxr import params as params_mod

# Package files (relative to the package folder) that `ehrcxr train` runs, besides its model's
# own file `models/<name>.py`; and those of `ehrcxr evaluate`.
TRAIN_CODE = (
    "__init__.py",
    "batch.py",
    "cli.py",
    "errors.py",
    "hyperparameters.py",
    "io.py",
    "model_names.py",
    "params.py",
    "params_schema.yaml",
    "tasks.py",
    "training.py",
    "warm.py",
    "data/__init__.py",
    "data/augment.py",
    "data/datamodule.py",
    "data/phenotypes.py",
    "data/resources/phenotypes.csv",
    "evaluation/__init__.py",
    "evaluation/metrics.py",
    "models/__init__.py",
    "models/encoders.py",
    "models/registry.py",
    "stages/__init__.py",
    "stages/_data.py",
    "stages/train.py",
)
# … and those `ehrcxr tune` runs besides (it trains through the training core).
TUNE_CODE = ("tuning.py", "stages/tune.py")
EVALUATE_CODE = (
    "__init__.py",
    "cli.py",
    "errors.py",
    "io.py",
    "model_names.py",
    "params.py",
    "params_schema.yaml",
    "tasks.py",
    "warm.py",
    "data/__init__.py",
    "data/phenotypes.py",
    "data/resources/phenotypes.csv",
    "evaluation/__init__.py",
    "evaluation/fairness.py",
    "evaluation/metrics.py",
    "evaluation/runs.py",
    "stages/__init__.py",
    "stages/evaluate.py",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder of the stage configuration files")
    parser.add_argument("--params", default="params.yaml", help="params file")


def package_dir() -> Path:
    import ehrcxr

    return Path(ehrcxr.__file__).resolve().parent


def code_hashes(files: tuple[str, ...] | list[str]) -> dict[str, str]:
    """sha256 of each package file (paths relative to the package folder)."""
    root = package_dir()
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in sorted(files)}


def train_config(params: dict, model: str) -> dict:
    """What ``train@<model>-…`` depends on: its code and its resolved params sections."""
    return {
        "code": code_hashes([*TRAIN_CODE, f"models/{model}.py"]),
        "params": {
            "model": params_mod.model_params(params, model),
            **{name: params_mod.section(params, name) for name in ("encoders", "augment", "train")},
        },
    }


def tune_config(params: dict, model: str) -> dict:
    """What ``tune@<model>-…`` depends on: the training code and its own, the model's settings
    and search space, and how the search runs (``tune`` without the lists that say which cells
    are searched: adding a model to them reruns no other search)."""
    train = train_config(params, model)
    tune = dict(params_mod.section(params, "tune"))
    for key in ("models", "tasks", "cohorts"):
        tune.pop(key, None)
    return {
        "code": train["code"] | code_hashes(TUNE_CODE),
        "params": {
            **train["params"],
            "search": params_mod.search_space(params, model),
            "tune": tune,
        },
    }


def evaluate_config(params: dict) -> dict:
    return {
        "code": code_hashes(EVALUATE_CODE),
        "params": {name: params_mod.section(params, name) for name in ("evaluate", "fairness")},
    }


def run(args: argparse.Namespace) -> None:
    from ehrcxr.io import atomic_path
    from ehrcxr.models.registry import model_modules

    params = params_mod.load(args.params)
    files = {f"train-{m}.json": train_config(params, m) for m in model_modules()}
    files |= {f"tune-{m}.json": tune_config(params, m) for m in model_modules()}
    files["evaluate.json"] = evaluate_config(params)
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for name, payload in files.items():
            (tmp / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"configure": sorted(files)}))
