"""``ehrcxr report``: the benchmark report from the metrics files (evaluation/report.py).

Reads the runs that params ``grid`` and ``robustness`` name: ``--benchmark``, ``--per-label``,
``--fairness`` and ``--robustness`` hold ``<run id>.json`` files (``--robustness`` also
``per_label/<run id>.json``), ``--statistics`` the permutation tests. Writes to ``--out``:

- ``report.md``: Tables 1–3 (one per task, every model × cohort, significance markers), the
  per-phenotype AUPRC table with average ranks, the permutation tests, the robustness and fairness
  tables, each with its figure;
- ``robustness-<task>.png``: metric vs missing ratio per model, overall and per phenotype of
  params ``report.robustness_phenotypes``; ``robustness-<task>.csv`` (overall) and
  ``robustness-<task>-<phenotype>.csv``: ``missing_ratio``, then one column per model (DVC plots);
- ``fairness-<task>-<cohort>.png`` / ``.csv``: gaps per model, attribute and metric (CSV:
  ``model``, then one ``<attribute>/<metric>`` column per gap);
- ``per_phenotype_auprc-<cohort>.csv``: ``phenotype`` (short name), then one column per model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ehrcxr import params as params_mod

if TYPE_CHECKING:
    from ehrcxr.evaluation.report import ReportConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, help="folder of the grid's metrics files")
    parser.add_argument("--per-label", required=True, help="folder of per-phenotype metrics")
    parser.add_argument("--fairness", required=True, help="folder of fairness metrics")
    parser.add_argument("--robustness", required=True, help="folder of the sweep's metrics")
    parser.add_argument("--statistics", required=True, help="statistics file (JSON)")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--params", default="params.yaml", help="params file")


def report_config(params: dict) -> ReportConfig:
    from ehrcxr.evaluation.report import ReportConfig
    from ehrcxr.models import model_modalities, model_paradigm

    grid, sweep, report = (
        params_mod.section(params, name) for name in ("grid", "robustness", "report")
    )
    return ReportConfig(
        models=tuple(grid["models"]),
        tasks=tuple(grid["tasks"]),
        cohorts=tuple(grid["cohorts"]),
        table_metrics={t: tuple(v) for t, v in report["table_metrics"].items()},
        robustness_models=tuple(sweep["models"]),
        robustness_tasks=tuple(sweep["tasks"]),
        robustness_ratios=tuple(float(r) for r in sweep["ratios"]),
        robustness_cohort=sweep["cohort"],
        robustness_metric=report["robustness_metric"],
        robustness_phenotypes=tuple(report["robustness_phenotypes"]),
        missing_splits=tuple(params_mod.section(params, "train")["missing_splits"]),
        alpha=float(params_mod.section(params, "statistics")["alpha"]),
        n_permutations=int(params_mod.section(params, "statistics")["n_permutations"]),
        min_group_size=int(params_mod.section(params, "fairness")["min_group_size"]),
        modalities={m: model_modalities(m) for m in {*grid["models"], *sweep["models"]}},
        paradigms={m: model_paradigm(m) for m in {*grid["models"], *sweep["models"]}},
    )


def run(args: argparse.Namespace) -> None:
    from ehrcxr.evaluation.report import load_metrics, write_report

    config = report_config(params_mod.load(args.params))
    metrics = load_metrics(
        config,
        Path(args.benchmark),
        Path(args.per_label),
        Path(args.fairness),
        Path(args.robustness),
        Path(args.statistics),
    )
    written = write_report(config, metrics, Path(args.out))
    print(f"report: {len(written)} files in {args.out}")
