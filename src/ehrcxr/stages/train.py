"""``ehrcxr train``: train one model on one task and cohort (every seed), write predictions.

Writes:

- ``--predictions`` (parquet, DVC-tracked, never leaves the machine): one row per (seed, stay) of
  the val and test splits: ``stay_id, split, seed``, ``prob_<output>`` (probabilities: one per
  phenotype, ``prob_mortality``, or ``prob_0 … prob_6`` for LoS) and ``label_<label>``;
- ``--out``: the best validation checkpoint per seed (``seed<S>.ckpt``);
- ``--curves`` (CSV, a DVC plot; optional): ``seed, epoch, train_loss, val_loss, val_selection``.

The model's own settings come from ``--hyperparameters`` (the grid's stages: the cell's file of
``ehrcxr hyperparameters``, i.e. its paper defaults or its search's best) or params
``models.<model>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from ehrcxr import params as params_mod
from ehrcxr.stages._data import add_data_arguments, data_paths

if TYPE_CHECKING:
    from ehrcxr.data.datamodule import DataPaths
    from ehrcxr.training import RunSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="registered model name (params: models.<name>)"
    )
    parser.add_argument("--task", required=True, help="mortality | phenotype | los")
    parser.add_argument("--cohort", required=True, help="matched | base")
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="checkpoint folder")
    parser.add_argument("--predictions", required=True, help="predictions file (parquet)")
    parser.add_argument("--curves", default=None, help="learning curves (CSV; optional)")
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument(
        "--hyperparameters",
        default=None,
        help="the cell's file of `ehrcxr hyperparameters` (its paper defaults or its search's "
        "best); default: params models.<model>",
    )
    parser.add_argument(
        "--missing-ratio",
        type=float,
        default=None,
        help="share of stays whose film is removed (default: params train.missing_ratio)",
    )
    parser.add_argument(
        "--fast-dev-run",
        action="store_true",
        help="one training and one validation batch (smoke test)",
    )


def run_spec(
    params: dict,
    model: str,
    task: str,
    cohort: str,
    paths: DataPaths,
    missing_ratio: float | None = None,
    model_params: dict[str, Any] | None = None,
) -> RunSpec:
    """One run of ``model`` on ``task`` and ``cohort`` as params.yaml (profile applied) says;
    ``missing_ratio`` overrides ``train.missing_ratio``, ``model_params`` the model's section."""
    from ehrcxr.tasks import get_task
    from ehrcxr.training import RunSpec

    cfg = params_mod.train_config(params)
    if missing_ratio is not None:
        cfg = dataclasses.replace(cfg, missing_ratio=missing_ratio)
    return RunSpec(
        model_name=model,
        model_params=(
            params_mod.model_params(params, model) if model_params is None else model_params
        ),
        encoders=params_mod.encoder_config(params),
        task=get_task(task),
        cohort=cohort,
        paths=paths,
        train=cfg,
        augment=params_mod.augment_config(params),
    )


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    import pandas as pd

    from ehrcxr.io import atomic_path
    from ehrcxr.training import train_one

    params = params_mod.load(args.params)
    paths = data_paths(args)
    model_params = None
    if args.hyperparameters:
        from ehrcxr.hyperparameters import read_hyperparameters

        model_params = read_hyperparameters(Path(args.hyperparameters), args.model)
    spec = run_spec(
        params, args.model, args.task, args.cohort, paths, args.missing_ratio, model_params
    )
    cfg = spec.train
    wandb_cfg = params_mod.wandb_config(params)
    start = time.perf_counter()
    # Not atomic: under DDP every process writes here (rank 0 saves the checkpoints). A run that
    # fails before its first checkpoint leaves no empty folder behind.
    out = Path(args.out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        runs = [
            train_one(spec, seed, wandb_cfg, out, fast_dev_run=args.fast_dev_run)
            for seed in cfg.seeds
        ]
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    if any(r is None for r in runs):
        return  # a non-zero DDP rank: rank 0 writes the outputs
    predictions = pd.concat([r[0] for r in runs], ignore_index=True)
    curves = pd.concat([r[1] for r in runs], ignore_index=True)
    with atomic_path(args.predictions) as tmp:
        predictions.to_parquet(tmp, index=False)
    if args.curves:
        with atomic_path(args.curves) as tmp:
            curves[["seed", "epoch", "train_loss", "val_loss", "val_selection"]].to_csv(
                tmp, index=False
            )
    seconds = round(time.perf_counter() - start, 1)
    print(json.dumps({"run": f"{args.model}-{args.task}-{args.cohort}", "seconds": seconds}))
