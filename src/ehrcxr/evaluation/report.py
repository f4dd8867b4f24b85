"""The benchmark report: Markdown tables, PNG figures and plot data from the metrics files only.

Every number in the report is read from a metrics file that a pipeline stage wrote
(``metrics/benchmark``, ``per_label``, ``fairness``, ``robustness``, ``statistics.json``), so
``dvc metrics diff`` compares exactly what the report shows. The runs are the ones params
``grid`` and ``robustness`` name; a registered model joins the tables once it is in the grid.

Tables follow the layout of the seed benchmark (CareBench): one table per task with every model
and cohort (mean ± std over seeds; ``*``: significantly better than the best unimodal model, a
one-sided paired permutation test; ``†``: that reference model), the per-phenotype AUPRC table
with average ranks, the permutation tests, the robustness sweep and the fairness gaps.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ehrcxr.data.phenotypes import phenotype_table
from ehrcxr.evaluation.fairness import FAIRNESS_METRICS

TASK_TITLES = {
    "mortality": "In-hospital mortality",
    "phenotype": "Phenotyping (25 CCS labels, macro means)",
    "los": "Length of stay (7 classes)",
}
METRIC_TITLES = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "f1": "F1",
    "precision": "Precision",
    "recall": "Recall",
    "specificity": "Specificity",
    "accuracy": "Accuracy",
    "macro_f1": "Macro F1",
    "kappa_quadratic": "Kappa (quadratic)",
    "tpr": "TPR",
    "fpr": "FPR",
    "ece": "ECE",
}
ATTRIBUTE_TITLES = {"race_group": "Race", "gender": "Sex", "age_group": "Age"}


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """What the report shows (params ``report``, ``grid``, ``robustness``, ``statistics``)."""

    models: tuple[str, ...]
    tasks: tuple[str, ...]
    cohorts: tuple[str, ...]
    table_metrics: dict[str, tuple[str, ...]]  # task → headline metrics in its table
    robustness_models: tuple[str, ...]
    robustness_tasks: tuple[str, ...]
    robustness_ratios: tuple[float, ...]
    robustness_cohort: str
    robustness_metric: str  # the metric on the robustness figure's y axis
    robustness_phenotypes: tuple[str, ...]  # single phenotypes with their own panel
    alpha: float
    modalities: dict[str, tuple[str, ...]]  # model → the modalities it reads (registry)


@dataclasses.dataclass
class Metrics:
    """Every metrics file the report reads, keyed by run."""

    benchmark: dict[tuple[str, str, str], dict]  # (model, task, cohort) → headline metrics
    per_label: dict[tuple[str, str, str], dict]  # (model, task, cohort) → {label: metrics}
    fairness: dict[tuple[str, str, str], dict]  # (model, task, cohort) → {attribute: gaps}
    robustness: dict[tuple[str, str, float], dict]  # (model, task, ratio) → headline metrics
    robustness_per_label: dict[tuple[str, str, float], dict]
    statistics: dict  # task → cohort → metric → comparison (stages/statistics.py)


def run_id(*parts: object) -> str:
    """The file stem of a run: ``<model>-<task>-<cohort>`` or ``<model>-<task>-<ratio>``."""
    return "-".join(str(p) for p in parts)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro` first")
    return json.loads(path.read_text())


def load_metrics(
    config: ReportConfig,
    benchmark_dir: Path,
    per_label_dir: Path,
    fairness_dir: Path,
    robustness_dir: Path,
    statistics_file: Path,
) -> Metrics:
    """Read the files of every run in ``config`` (``<dir>/<run id>.json``)."""
    cells = [(m, t, c) for m in config.models for t in config.tasks for c in config.cohorts]
    sweep = [
        (m, t, r)
        for m in config.robustness_models
        for t in config.robustness_tasks
        for r in config.robustness_ratios
    ]
    return Metrics(
        benchmark={k: _read(benchmark_dir / f"{run_id(*k)}.json") for k in cells},
        per_label={k: _read(per_label_dir / f"{run_id(*k)}.json") for k in cells},
        fairness={k: _read(fairness_dir / f"{run_id(*k)}.json") for k in cells},
        robustness={k: _read(robustness_dir / f"{run_id(*k)}.json") for k in sweep},
        robustness_per_label={
            k: _read(robustness_dir / "per_label" / f"{run_id(*k)}.json") for k in sweep
        },
        statistics=_read(statistics_file),
    )


# ---- formatting ------------------------------------------------------------------------------


def mean_std(values: dict, key: str) -> str:
    """``0.812 ± 0.010`` (± only with several seeds), ``–`` when undefined."""
    mean = values.get(key)
    if mean is None:
        return "–"
    std = values.get(f"{key}_std")
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def significance_marker(statistics: dict, task: str, cohort: str, metric: str, model: str) -> str:
    """``*`` when ``model`` beats the best unimodal model significantly, ``†`` for that model."""
    test = statistics.get(task, {}).get(cohort, {}).get(metric)
    if not test:
        return ""
    if test["best_unimodal"] == model:
        return "†"
    result = test["models"].get(model)
    return "*" if result and result["significant"] else ""


# ---- tables ----------------------------------------------------------------------------------


def task_table(config: ReportConfig, metrics: Metrics, task: str) -> str:
    """Rows: models; columns: cohort × the task's headline metrics."""
    keys = config.table_metrics[task]
    header = ["Model"] + [
        f"{METRIC_TITLES.get(k, k)} ({cohort})" for cohort in config.cohorts for k in keys
    ]
    rows = []
    for model in config.models:
        row = [f"{model} ({'+'.join(m.upper() for m in config.modalities[model])})"]
        for cohort in config.cohorts:
            values = metrics.benchmark[(model, task, cohort)]
            for k in keys:
                marker = significance_marker(metrics.statistics, task, cohort, k, model)
                row.append(mean_std(values, k) + marker)
        rows.append(row)
    return markdown_table(header, rows)


def per_phenotype_frame(config: ReportConfig, metrics: Metrics, cohort: str) -> pd.DataFrame:
    """AUPRC [25 phenotypes × models] (index: short names, in phenotypes.csv order)."""
    table = phenotype_table()
    data = {
        model: [
            metrics.per_label[(model, "phenotype", cohort)][col]["auprc"] for col in table["column"]
        ]
        for model in config.models
    }
    return pd.DataFrame(data, index=table["short_name"].to_list(), dtype=float)


def average_ranks(frame: pd.DataFrame) -> pd.Series:
    """Mean rank of each model (column) over the rows; rank 1 = highest AUPRC, ties averaged."""
    return frame.rank(axis=1, ascending=False, method="average").mean(axis=0)


def per_phenotype_table(config: ReportConfig, metrics: Metrics, cohort: str) -> str:
    frame = per_phenotype_frame(config, metrics, cohort)
    ranks = average_ranks(frame)
    rows = [
        [name] + ["–" if np.isnan(v) else f"{v:.3f}" for v in frame.loc[name]]
        for name in frame.index
    ]
    rows.append(["**Average rank**"] + [f"**{ranks[m]:.2f}**" for m in frame.columns])
    return markdown_table(["Phenotype", *frame.columns], rows)


def statistics_table(config: ReportConfig, metrics: Metrics) -> str:
    rows = []
    for task in config.tasks:
        for cohort in config.cohorts:
            for metric, test in metrics.statistics.get(task, {}).get(cohort, {}).items():
                for model, result in test["models"].items():
                    rows.append(
                        [
                            task,
                            cohort,
                            METRIC_TITLES.get(metric, metric),
                            model,
                            f"{result['value']:.3f}",
                            f"{test['best_unimodal']} ({test['best_unimodal_value']:.3f})",
                            f"{result['difference']:+.3f}",
                            f"{result['p_value']:.4f}",
                            "yes" if result["significant"] else "no",
                        ]
                    )
    header = ["Task", "Cohort", "Metric", "Model", "Value", "Best unimodal", "Δ", "p", "Sig."]
    return markdown_table(header, rows)


def robustness_frame(config: ReportConfig, metrics: Metrics, task: str) -> pd.DataFrame:
    """Long frame: ``label`` (``overall`` or a phenotype), model, missing_ratio, mean, std."""
    key = config.robustness_metric
    labels = ["overall"] + (list(config.robustness_phenotypes) if task == "phenotype" else [])
    rows = []
    for model in config.robustness_models:
        for ratio in config.robustness_ratios:
            for label in labels:
                values = (
                    metrics.robustness[(model, task, ratio)]
                    if label == "overall"
                    else metrics.robustness_per_label[(model, task, ratio)][label]
                )
                mean, std = values.get(key), values.get(f"{key}_std")
                rows.append(
                    {
                        "label": label,
                        "model": model,
                        "missing_ratio": ratio,
                        "mean": np.nan if mean is None else mean,
                        "std": 0.0 if std is None else std,
                    }
                )
    return pd.DataFrame(rows)


def robustness_table(config: ReportConfig, metrics: Metrics, task: str) -> str:
    frame = robustness_frame(config, metrics, task)
    overall = frame[frame["label"] == "overall"]
    header = ["Model"] + [f"r = {r:g}" for r in config.robustness_ratios]
    rows = []
    for model in config.robustness_models:
        part = overall[overall["model"] == model].set_index("missing_ratio")
        row = [model]
        for r in config.robustness_ratios:
            mean, std = part.loc[r, "mean"], part.loc[r, "std"]
            row.append("–" if np.isnan(mean) else f"{mean:.3f} ± {std:.3f}")
        rows.append(row)
    return markdown_table(header, rows)


def fairness_frame(config: ReportConfig, metrics: Metrics, task: str, cohort: str) -> pd.DataFrame:
    """Long frame: model, attribute, metric, gap (None → NaN)."""
    rows = []
    for model in config.models:
        report = metrics.fairness[(model, task, cohort)]
        for attribute, entry in report.items():
            for metric in FAIRNESS_METRICS:
                gap = entry.get(f"{metric}_gap")
                rows.append(
                    {
                        "model": model,
                        "attribute": attribute,
                        "metric": metric,
                        "gap": np.nan if gap is None else gap,
                    }
                )
    return pd.DataFrame(rows)


def fairness_table(config: ReportConfig, metrics: Metrics, task: str, cohort: str) -> str:
    frame = fairness_frame(config, metrics, task, cohort)
    attributes = list(dict.fromkeys(frame["attribute"]))
    header = ["Model"] + [
        f"{ATTRIBUTE_TITLES.get(a, a)} {METRIC_TITLES[m]}"
        for a in attributes
        for m in FAIRNESS_METRICS
    ]
    rows = []
    for model in config.models:
        part = frame[frame["model"] == model].set_index(["attribute", "metric"])["gap"]
        rows.append(
            [model]
            + [
                "–" if np.isnan(part[(a, m)]) else f"{part[(a, m)]:.3f}"
                for a in attributes
                for m in FAIRNESS_METRICS
            ]
        )
    return markdown_table(header, rows)


# ---- figures ---------------------------------------------------------------------------------


def robustness_figure(config: ReportConfig, frame: pd.DataFrame, task: str, path: Path) -> None:
    """Metric vs missing ratio per model, mean ± std band (seed paper, Figure 2)."""
    plt = _pyplot()

    phenotypes = phenotype_table()
    short = dict(zip(phenotypes["column"], phenotypes["short_name"], strict=True))
    labels = list(dict.fromkeys(frame["label"]))
    cols = min(3, len(labels))
    rows = int(np.ceil(len(labels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, label in zip(axes.flat, labels, strict=False):
        part = frame[frame["label"] == label]
        for model in config.robustness_models:
            line = part[part["model"] == model].sort_values("missing_ratio")
            x, y, s = line["missing_ratio"], line["mean"], line["std"]
            ax.plot(x, y, marker="o", label=model)
            ax.fill_between(x, y - s, y + s, alpha=0.2)
        title = "Overall" if label == "overall" else short.get(label, label)
        ax.set_title(f"{TASK_TITLES[task].split(' (')[0]}: {title}", fontsize=10)
        ax.set_xlabel("missing CXR ratio")
        ax.set_ylabel(METRIC_TITLES.get(config.robustness_metric, config.robustness_metric))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(labels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def fairness_figure(frame: pd.DataFrame, title: str, path: Path) -> None:
    """Gap per model, one panel per attribute × metric (seed paper, Figure 3)."""
    plt = _pyplot()

    attributes = list(dict.fromkeys(frame["attribute"]))
    models = list(dict.fromkeys(frame["model"]))
    fig, axes = plt.subplots(
        len(attributes),
        len(FAIRNESS_METRICS),
        figsize=(3.2 * len(FAIRNESS_METRICS), 2.6 * len(attributes)),
        squeeze=False,
    )
    for i, attribute in enumerate(attributes):
        for j, metric in enumerate(FAIRNESS_METRICS):
            ax = axes[i, j]
            part = frame[(frame["attribute"] == attribute) & (frame["metric"] == metric)]
            gaps = part.set_index("model")["gap"].reindex(models)
            ax.bar(range(len(models)), gaps.fillna(0).to_numpy(), color=f"C{j}")
            ax.set_xticks(range(len(models)), models, rotation=45, ha="right", fontsize=7)
            ax.set_title(
                f"{ATTRIBUTE_TITLES.get(attribute, attribute)}: {METRIC_TITLES[metric]} gap",
                fontsize=9,
            )
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported late: only the report draws)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()

    from ehrcxr.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ---- the report ------------------------------------------------------------------------------


def write_report(config: ReportConfig, metrics: Metrics, out: Path) -> list[Path]:
    """Write ``out``/report.md, its PNG figures and plot data (CSV); returns the files written."""
    from ehrcxr.io import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    n_seeds = max(v.get("n_seeds", 1) for v in metrics.benchmark.values())
    parts = [
        "# ehrcxr benchmark report",
        "",
        "Generated by `dvc repro` (stage `report`) from the metrics files under `metrics/`; "
        f"test split, {n_seeds} seed(s) per run (mean ± std over seeds where there are several). "
        "`*`: significantly better than the best unimodal model on that metric (one-sided paired "
        f"permutation test, α = {config.alpha}); `†`: that best unimodal model.",
    ]
    for i, task in enumerate(config.tasks, start=1):
        parts += ["", f"## Table {i}. {TASK_TITLES[task]}", "", task_table(config, metrics, task)]
    if "phenotype" in config.tasks:
        for cohort in config.cohorts:
            frame = per_phenotype_frame(config, metrics, cohort)
            path = out / f"per_phenotype_auprc-{cohort}.csv"
            _write_csv(frame.rename_axis("phenotype").reset_index(), path)
            written.append(path)
            parts += [
                "",
                f"## Per-phenotype AUPRC ({cohort} cohort), with each model's average rank",
                "",
                per_phenotype_table(config, metrics, cohort),
            ]
    parts += [
        "",
        "## Fusion vs the best unimodal model (paired permutation tests)",
        "",
        statistics_table(config, metrics),
    ]
    for task in config.robustness_tasks:
        frame = robustness_frame(config, metrics, task)
        png = out / f"robustness-{task}.png"
        robustness_figure(config, frame, task, png)
        written.append(png)
        for label, curves in _robustness_plot_data(frame).items():
            csv = out / (
                f"robustness-{task}.csv" if label == "overall" else f"robustness-{task}-{label}.csv"
            )
            _write_csv(curves, csv)
            written.append(csv)
        metric = METRIC_TITLES.get(config.robustness_metric, config.robustness_metric)
        parts += [
            "",
            f"## Robustness: {TASK_TITLES[task]}, {metric} vs missing CXR ratio "
            f"({config.robustness_cohort} cohort)",
            "",
            robustness_table(config, metrics, task),
            "",
            f"![robustness]({png.name})",
        ]
    for task in config.tasks:
        for cohort in config.cohorts:
            frame = fairness_frame(config, metrics, task, cohort)
            png, csv = out / f"fairness-{task}-{cohort}.png", out / f"fairness-{task}-{cohort}.csv"
            fairness_figure(frame, f"{TASK_TITLES[task]}, {cohort} cohort", png)
            wide = frame.pivot_table(
                index="model",
                columns=["attribute", "metric"],
                values="gap",
                sort=False,
                dropna=False,
            )
            wide.columns = [f"{a}/{m}" for a, m in wide.columns]
            _write_csv(wide.reindex(config.models).reset_index(), csv)
            written += [png, csv]
            parts += [
                "",
                f"## Fairness gaps (best − worst group): {TASK_TITLES[task]}, {cohort} cohort",
                "",
                fairness_table(config, metrics, task, cohort),
                "",
                f"![fairness]({png.name})",
            ]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(parts) + "\n")
    return [report, *written]


def _robustness_plot_data(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Plot data for ``dvc plots``, per label: ``missing_ratio``, then one column per model."""
    out = {}
    for label, part in frame.groupby("label", sort=False):
        wide = part.pivot_table(index="missing_ratio", columns="model", values="mean", sort=False)
        out[str(label)] = wide.rename_axis(columns=None).reset_index()
    return out


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    from ehrcxr.io import atomic_path

    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")
