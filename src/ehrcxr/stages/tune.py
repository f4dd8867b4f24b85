"""``ehrcxr tune``: the Bayesian hyperparameter search of one grid cell, on validation only.

Searches ``models.<model>.search`` with params ``tune`` (ehrcxr/tuning.py: gp_minimize,
gp_hedge, the calls, initial points, random state and seeds); each call trains the model with
every seed on the training stays and scores its validation predictions. Writes:

- ``--out`` (folder, DVC-tracked): ``best.json`` — ``{"model", "task", "cohort", "metric",
  "call", "value", "hyperparameters"}`` (the best call's searched values; read by
  ``ehrcxr hyperparameters``) and ``result.pkl`` — scikit-optimize's result
  (``skopt.load``; ``specs["args"]`` holds what ``gp_minimize`` received);
- ``--trials`` (CSV, a DVC plot): ``call``, one column per dimension, ``value_seed<S>``,
  ``value`` (mean over seeds), ``best`` (best so far), ``seconds``;
- ``--summary`` (JSON, a DVC metric): ``metric``, ``best_value``, ``best_call``, ``n_calls``,
  ``seconds`` (all calls), ``hyperparameters`` (the best);
- ``--plot`` (PNG): the convergence plot.

Offline W&B: one run per call (group ``tune@<cell>``, job type ``trial``: its configuration and
validation metric) and one summary run (job type ``search``: the trials table, the best
configuration). ``--checkpoints``: where an interrupted search's state waits for the rerun
(git-ignored; removed when the search completes). Its trials load the training and validation
stays only: the cohort table and the film array are read whole, and filtered to those stays
before any tensor is built; no test stay is trained on or scored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from ehrcxr import params as params_mod
from ehrcxr.stages._data import add_data_arguments, data_paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="registered model with a search space")
    parser.add_argument("--task", required=True, help="mortality | phenotype | los")
    parser.add_argument("--cohort", required=True, help="matched | base")
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="folder: best.json and result.pkl")
    parser.add_argument("--trials", required=True, help="trials table (CSV)")
    parser.add_argument("--summary", required=True, help="best configuration and value (JSON)")
    parser.add_argument("--plot", required=True, help="convergence plot (PNG)")
    parser.add_argument(
        "--config",
        required=True,
        help="the search's file of `ehrcxr configure` (tune-<model>.json): its code and params "
        "fingerprint, part of the checkpoint's",
    )
    parser.add_argument(
        "--checkpoints",
        default="data/.tune-checkpoints",
        help="resumable state of interrupted searches (git-ignored)",
    )
    parser.add_argument("--params", default="params.yaml", help="params file")


def run(args: argparse.Namespace) -> None:
    import tempfile

    from skopt import dump

    from ehrcxr import tuning
    from ehrcxr.errors import EhrcxrError
    from ehrcxr.evaluation.metrics import selection_value
    from ehrcxr.hyperparameters import cell_name
    from ehrcxr.io import atomic_path, write_text_atomic
    from ehrcxr.stages.train import run_spec
    from ehrcxr.training import train_one

    params = params_mod.load(args.params)
    cfg = params_mod.tune_config(params)
    cell = cell_name(args.model, args.task, args.cohort)
    if not cfg.searched(args.model, args.task, args.cohort):
        raise EhrcxrError(f"{cell} is not among params tune.models × tune.tasks × tune.cohorts")
    if params_mod.train_config(params).devices != 1:
        raise EhrcxrError("a search trains on one device: set train.devices to 1 to tune")
    paths = data_paths(args)
    spec = run_spec(params, args.model, args.task, args.cohort, paths)
    defaults = spec.model_params
    space = params_mod.search_space(params, args.model)
    dims = tuning.dimensions(space, defaults, args.model)
    names = [d.name for d in dims]
    wandb_cfg = params_mod.wandb_config(params)
    group = f"tune@{cell}"
    meta = {"model": args.model, "task": args.task, "cohort": args.cohort, "seeds": cfg.seeds}

    # What the values depend on: the code and params (--config; and as resolved here, should
    # that file be stale), the seeds and the data.
    key = tuning.fingerprint(
        {
            "cell": cell,
            "seeds": cfg.seeds,
            "spec": [defaults, spec.encoders, spec.train, spec.augment, space],
        },
        [
            Path(args.config),
            paths.extract / "cohort.parquet",
            *(paths.features / f for f in ("ehr.npy", "stays.csv", "features.json")),
            *(paths.images / f for f in ("images.npy", "index.csv")),
        ],
    )
    checkpoint = Path(args.checkpoints) / f"{cell}-{key[:16]}"
    for stale in Path(args.checkpoints).glob(f"{cell}-*"):  # another fingerprint's: not resumable
        if stale != checkpoint:
            shutil.rmtree(stale, ignore_errors=True)

    def objective(call: int, values: dict[str, Any]) -> tuning.Trial:
        start = time.perf_counter()
        trial_spec = dataclasses.replace(spec, model_params={**defaults, **values})
        scores: dict[int, float] = {}
        for seed in cfg.seeds:
            # inside the search's folder: a killed search leaves nothing elsewhere
            with tempfile.TemporaryDirectory(dir=checkpoint) as ckpt:
                out = train_one(trial_spec, seed, None, Path(ckpt), predict_splits=("val",))
            assert out is not None  # one device (checked above): this process predicts
            val = out[0]
            y = val[spec.task.label_columns].to_numpy()
            p = val[spec.task.prob_columns].to_numpy()
            value = selection_value(spec.task.kind, y, p)
            scores[seed] = 0.0 if math.isnan(value) else value  # NaN (no positives): the worst
        return tuning.Trial(call, values, scores, round(time.perf_counter() - start, 1))

    def log(trial: tuning.Trial) -> None:
        tuning.log_trial(wandb_cfg, group, trial, meta)

    start = time.perf_counter()
    found = tuning.search(dims, objective, log, cfg, checkpoint)
    table = tuning.trials_table(found.trials, names)
    best = tuning.best_trial(found.trials)
    metric = spec.task.selection_metric
    best_payload = {
        "model": args.model,
        "task": args.task,
        "cohort": args.cohort,
        "metric": metric,
        "call": best.call,
        "value": best.value,
        "hyperparameters": best.hyperparameters,
    }
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        (tmp / "best.json").write_text(json.dumps(best_payload, indent=2) + "\n")
        dump(found.result, str(tmp / "result.pkl"), store_objective=False)
    with atomic_path(args.trials) as tmp:
        table.to_csv(tmp, index=False)
    summary = {
        "metric": metric,
        "best_value": round(best.value, 4),
        "best_call": best.call,
        "n_calls": len(found.trials),
        "seconds": round(float(table["seconds"].sum()), 1),
        "hyperparameters": best.hyperparameters,
    }
    write_text_atomic(args.summary, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tuning.convergence_plot(table, metric, f"{group} ({cfg.acq_func})", Path(args.plot))
    tuning.log_search(wandb_cfg, group, table, best, {**meta, "search": space})
    shutil.rmtree(checkpoint, ignore_errors=True)
    print(
        json.dumps(
            {
                "tune": cell,
                "best_value": summary["best_value"],
                "replayed": found.replayed,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )
