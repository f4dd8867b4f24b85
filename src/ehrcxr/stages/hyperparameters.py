"""``ehrcxr hyperparameters``: each grid cell's model settings, defaults or searched.

Writes ``--out``/``<model>-<task>-<cohort>.json`` for every registered model, task and cohort
(format: ehrcxr/hyperparameters.py): the model's ``models.<model>`` section (its paper's
defaults, profile applied) with, for the cells params ``tune`` searches, the searched dimensions
replaced by the best call of ``tune@<cell>`` (``--tuning``/``<cell>/best.json``). A train stage
depends on its cell's file only, so a search reruns the training of its own cell and no other;
setting ``tune.models: []`` puts every cell back on its paper defaults.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ehrcxr import params as params_mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tuning", default="data/tuning", help="folder of the tune@ stages")
    parser.add_argument("--out", required=True, help="folder of one JSON file per cell")
    parser.add_argument("--params", default="params.yaml", help="params file")


def run(args: argparse.Namespace) -> None:
    from ehrcxr.errors import EhrcxrError
    from ehrcxr.hyperparameters import cell_name
    from ehrcxr.io import atomic_path
    from ehrcxr.models.registry import model_modules
    from ehrcxr.tasks import COHORTS, TASKS

    params = params_mod.load(args.params)
    cfg = params_mod.tune_config(params)
    files: dict[str, dict] = {}
    tuned: list[str] = []
    for model in model_modules():
        defaults = params_mod.model_params(params, model)
        for task in TASKS:
            for cohort in COHORTS:
                cell = cell_name(model, task, cohort)
                payload = {"model": model, "task": task, "cohort": cohort, "source": "defaults"}
                values = dict(defaults)
                if cfg.searched(model, task, cohort):
                    best_file = Path(args.tuning) / cell / "best.json"
                    if not best_file.is_file():
                        raise EhrcxrError(f"no {best_file}: run tune@{cell} first (dvc repro)")
                    best = json.loads(best_file.read_text())
                    unknown = set(best["hyperparameters"]) - set(defaults)
                    if unknown:
                        raise EhrcxrError(f"{best_file}: {sorted(unknown)} are not {model}'s")
                    values |= best["hyperparameters"]
                    payload["source"] = f"tune@{cell}"
                    tuned.append(cell)
                files[f"{cell}.json"] = payload | {"params": values}
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for name, payload in files.items():
            (tmp / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"hyperparameters": len(files), "tuned": tuned}))
