"""``ehrcxr statistics``: does fusion beat the best unimodal model? (paired permutation tests)

For every task and cohort of params ``grid``, reads ``--predictions-dir``/<model>-<task>-<cohort>
.parquet of every grid model and tests each multimodal model (registry: ``modalities``) against
the best unimodal one on the metrics of params ``statistics.metrics.<task>``, on the split of
params ``evaluate.split`` (evaluation/statistics.py).

Writes ``--out`` (JSON, a DVC metric): ``{task: {cohort: {metric: {"best_unimodal",
"best_unimodal_value", "models": {model: {"value", "difference", "p_value", "significant"}}}}}}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ehrcxr import params as params_mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--predictions-dir", required=True, help="folder of the grid's predictions files"
    )
    parser.add_argument("--out", required=True, help="statistics file (JSON)")
    parser.add_argument("--params", default="params.yaml", help="params file")


def run(args: argparse.Namespace) -> None:
    import pandas as pd

    from ehrcxr.evaluation.statistics import compare_with_best_unimodal
    from ehrcxr.io import write_text_atomic
    from ehrcxr.models import is_multimodal
    from ehrcxr.tasks import get_task

    params = params_mod.load(args.params)
    grid = params_mod.section(params, "grid")
    stats = params_mod.section(params, "statistics")
    split = params_mod.section(params, "evaluate")["split"]
    models = list(grid["models"])
    multimodal = {m: is_multimodal(m) for m in models}
    result: dict = {}
    if all(multimodal.values()) or not any(multimodal.values()):
        print("statistics: the grid needs unimodal and multimodal models; nothing to test")
    else:
        for task_name in grid["tasks"]:
            task = get_task(task_name)
            for cohort in grid["cohorts"]:
                frames = {
                    m: pd.read_parquet(
                        Path(args.predictions_dir) / f"{m}-{task_name}-{cohort}.parquet"
                    )
                    for m in models
                }
                result.setdefault(task_name, {})[cohort] = compare_with_best_unimodal(
                    frames,
                    multimodal,
                    task,
                    split,
                    metrics=list(stats["metrics"][task_name]),
                    n_permutations=int(stats["n_permutations"]),
                    alpha=float(stats["alpha"]),
                    seed=int(stats["seed"]),
                )
    write_text_atomic(args.out, json.dumps(result, indent=2, sort_keys=True) + "\n")
