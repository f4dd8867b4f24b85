"""``ehrcxr statistics``: does fusion beat the best unimodal model? Tests and intervals.

For every task and cohort of params ``grid``, reads ``--predictions-dir``/<model>-<task>-<cohort>
.parquet of every grid model and, per metric of params ``statistics.metrics.<task>``: picks the
best unimodal model (registry: ``modalities``) on the validation split, tests each multimodal
model against it on the split of params ``evaluate.split`` (paired permutation test), and gives
every model a paired bootstrap interval; phenotypes also per label for
``statistics.per_label_metrics`` (evaluation/statistics.py).

Writes ``--out`` (JSON, a DVC metric): ``{task: {cohort: {"n_stays", "reference_split",
"confidence", "metrics": {metric: {"best_unimodal", "best_unimodal_value",
"best_unimodal_reference_value", "models": {model: {"value", "difference", "difference_ci",
"p_value", "significant"}}}}, "bootstrap": {metric: {model: {"value", "ci"}}}, "per_label":
{metric: {label: {"best_unimodal", "models": {…}}}}}}}``.
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


def _compare(job: tuple) -> tuple[str, str, str, dict, int]:
    """One (task, cohort, metric) comparison, in a worker process."""
    import pandas as pd

    from ehrcxr.evaluation.statistics import compare_metric, load_comparison_data

    files, spec, cohort, metric, per_label, reference_split, test_split = job
    frames = {m: pd.read_parquet(f) for m, f in files.items()}
    reference, test = load_comparison_data(frames, spec.task, reference_split, test_split)
    part = compare_metric(spec, reference, test, metric, per_label)
    return spec.task.name, cohort, metric, part, len(test[0])


def run(args: argparse.Namespace) -> None:
    import time
    from concurrent.futures import ProcessPoolExecutor

    from ehrcxr.evaluation.statistics import Comparison, assemble
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
    start = time.perf_counter()
    if all(multimodal.values()) or not any(multimodal.values()):
        print("statistics: the grid needs unimodal and multimodal models; nothing to test")
    else:
        jobs = []
        for task_name in grid["tasks"]:
            spec = Comparison(
                task=get_task(task_name),
                multimodal=multimodal,
                n_permutations=int(stats["n_permutations"]),
                n_resamples=int(stats["n_resamples"]),
                confidence=float(stats["confidence"]),
                alpha=float(stats["alpha"]),
                seed=int(stats["seed"]),
            )
            for cohort in grid["cohorts"]:
                files = {
                    m: Path(args.predictions_dir) / f"{m}-{task_name}-{cohort}.parquet"
                    for m in models
                }
                for metric in stats["metrics"][task_name]:
                    per_label = spec.task.kind == "multilabel" and (
                        metric in stats["per_label_metrics"]
                    )
                    jobs.append(
                        (files, spec, cohort, metric, per_label, stats["reference_split"], split)
                    )
        # Each job is independent and single-threaded NumPy: one worker per core of the stage.
        with ProcessPoolExecutor(max_workers=int(stats["workers"])) as pool:
            done = list(pool.map(_compare, jobs))
        parts: dict = {}
        for task_name, cohort, metric, part, n in done:
            parts.setdefault((task_name, cohort), ({}, n))[0][metric] = part
        for (task_name, cohort), (by_metric, n) in parts.items():
            result.setdefault(task_name, {})[cohort] = assemble(
                by_metric, n, stats["reference_split"], float(stats["confidence"])
            )
    write_text_atomic(args.out, json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"statistics": args.out, "seconds": round(time.perf_counter() - start, 1)}))
