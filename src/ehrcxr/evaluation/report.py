"""The benchmark report: Markdown tables, PNG figures and plot data from the metrics files only.

Every number in the report is read from a metrics file that a pipeline stage wrote
(``metrics/benchmark``, ``per_label``, ``fairness``, ``robustness``, ``statistics.json``), so
``dvc metrics diff`` compares exactly what the report shows. The runs are the ones params
``grid`` and ``robustness`` name; a registered model joins the tables once it is in the grid.

Tables follow the layout of the seed benchmark (CareBench): one table per task with every model
and cohort, the per-phenotype AUPRC table with average ranks, the permutation tests, the
robustness sweep and the fairness gaps. What a reader needs to trust them is on the page: the
test-set size and each label's prevalence, 95 % bootstrap intervals, "±" only where several
seeds give a spread, a mark where a model never crosses the 0.5 threshold, and "n/a" with its
reason wherever a value is undefined — never a 0 drawn in its place.
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
from ehrcxr.tasks import get_task

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
PARADIGM_STYLES = {  # robustness figure: line style and marker per paradigm
    "unimodal": (":", "s"),
    "complete-modality": ("-", "o"),
    "missing-modality": ("--", "^"),
}
THRESHOLD_METRICS = ("f1", "precision", "recall")  # degenerate when nothing crosses 0.5
NEVER_CROSSES = "‡"
LOS_NOTE = (
    "Length of stay is the total ICU stay (`icustays.los`) binned from 2 days: [2,3) [3,4) "
    "[4,5) [5,6) [6,7) [7,14) [14,∞) days, as the published toolkit does; the CareBench paper's "
    "wording (remaining hospital stay) does not match bins that start at 2 days in a ≥ 48 h "
    "cohort. A stay without a length of stay stops extraction; it is never put in a class."
)


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """What the report shows (params ``report``, ``grid``, ``robustness``, ``statistics``)."""

    models: tuple[str, ...]
    tasks: tuple[str, ...]
    cohorts: tuple[str, ...]
    table_metrics: dict[str, tuple[str, ...]]  # task → headline metrics in its table
    robustness_models: tuple[str, ...]
    robustness_tasks: tuple[str, ...]
    robustness_ratios: tuple[float, ...]  # the sweep's stages; r = 0 is the grid's own run
    robustness_cohort: str
    robustness_metric: str  # the metric on the robustness figure's y axis
    robustness_phenotypes: tuple[str, ...]  # single phenotypes with their own panel
    missing_splits: tuple[str, ...]  # the splits that lose films in the sweep
    alpha: float
    n_permutations: int
    min_group_size: int  # fairness: smaller groups are left out of the gaps
    modalities: dict[str, tuple[str, ...]]  # model → the modalities it reads (registry)
    paradigms: dict[str, str]  # model → unimodal | complete-modality | missing-modality

    @property
    def curve_ratios(self) -> tuple[float, ...]:
        """Missing ratios of the robustness curves: 0 (the grid's run) and the sweep's."""
        return tuple(sorted({0.0, *self.robustness_ratios}))


@dataclasses.dataclass
class Metrics:
    """Every metrics file the report reads, keyed by run."""

    benchmark: dict[tuple[str, str, str], dict]  # (model, task, cohort) → headline metrics
    per_label: dict[tuple[str, str, str], dict]  # (model, task, cohort) → {label: metrics}
    fairness: dict[tuple[str, str, str], dict]  # (model, task, cohort) → {attribute: gaps}
    robustness: dict[tuple[str, str, float], dict]  # (model, task, ratio) → headline metrics
    robustness_per_label: dict[tuple[str, str, float], dict]
    statistics: dict  # task → cohort → comparisons (stages/statistics.py)


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
    """Read the files of every run in ``config`` (``<dir>/<run id>.json``). The robustness
    curves start at the grid's own run on the sweep's cohort (missing ratio 0), unless the
    sweep has a stage of its own for ratio 0."""
    cells = [(m, t, c) for m in config.models for t in config.tasks for c in config.cohorts]
    sweep = [
        (m, t, r)
        for m in config.robustness_models
        for t in config.robustness_tasks
        for r in config.robustness_ratios
    ]
    robustness = {k: _read(robustness_dir / f"{run_id(*k)}.json") for k in sweep}
    robustness_per_label = {
        k: _read(robustness_dir / "per_label" / f"{run_id(*k)}.json") for k in sweep
    }
    if 0.0 not in config.robustness_ratios:
        for m in config.robustness_models:
            for t in config.robustness_tasks:
                grid_run = run_id(m, t, config.robustness_cohort)
                robustness[(m, t, 0.0)] = _read(benchmark_dir / f"{grid_run}.json")
                robustness_per_label[(m, t, 0.0)] = _read(per_label_dir / f"{grid_run}.json")
    return Metrics(
        benchmark={k: _read(benchmark_dir / f"{run_id(*k)}.json") for k in cells},
        per_label={k: _read(per_label_dir / f"{run_id(*k)}.json") for k in cells},
        fairness={k: _read(fairness_dir / f"{run_id(*k)}.json") for k in cells},
        robustness=robustness,
        robustness_per_label=robustness_per_label,
        statistics=_read(statistics_file),
    )


# ---- formatting ------------------------------------------------------------------------------


def mean_std(values: dict, key: str, reason: str = "undefined") -> str:
    """``0.812 ± 0.010`` (± only with several seeds), ``n/a (<reason>)`` when undefined."""
    mean = values.get(key)
    if mean is None:
        return f"n/a ({reason})"
    std = values.get(f"{key}_std")
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} % ({part:g}/{whole:g})" if whole else "n/a (no stays)"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def model_label(config: ReportConfig, model: str) -> str:
    return f"{model} ({'+'.join(m.upper() for m in config.modalities[model])})"


def comparison(statistics: dict, task: str, cohort: str) -> dict:
    return statistics.get(task, {}).get(cohort, {})


def significance_marker(statistics: dict, task: str, cohort: str, metric: str, model: str) -> str:
    """``*`` when ``model`` beats the best unimodal model significantly, ``†`` for that model."""
    test = comparison(statistics, task, cohort).get("metrics", {}).get(metric)
    if not test:
        return ""
    if test["best_unimodal"] == model:
        return "†"
    result = test["models"].get(model)
    return "*" if result and result["significant"] else ""


def with_interval(statistics: dict, task: str, cohort: str, metric: str, model: str) -> str:
    """`` (low–high)``: the paired bootstrap interval of a test metric, when there is one."""
    entry = comparison(statistics, task, cohort).get("bootstrap", {}).get(metric, {}).get(model)
    return _range(entry["ci"]) if entry else ""


def never_crosses(values: dict, task_kind: str) -> bool:
    """Whether the run never predicts a positive at 0.5 (phenotypes: on some label)."""
    if task_kind == "multilabel":
        return bool(values.get("labels_never_predicted_positive"))
    return values.get("n_predicted_positive") == 0


# ---- tables ----------------------------------------------------------------------------------


def sizes_line(config: ReportConfig, metrics: Metrics, task: str) -> str:
    """Test-set size per cohort and the label's prevalence (positives / n)."""
    parts = []
    for cohort in config.cohorts:
        values = metrics.benchmark[(config.models[0], task, cohort)]
        n = values.get("n_stays", 0)
        text = f"{cohort}: n = {n}"
        if "n_positive" in values:
            text += f", deaths {percent(values['n_positive'], n)}"
        elif "class_counts" in values:
            shares = ", ".join(
                f"{k}: {100 * v / n:.0f} %" for k, v in values["class_counts"].items()
            )
            text += f", classes {shares}"
        parts.append(text)
    line = "Test stays (" + "; ".join(parts) + ")."
    if task == "phenotype":
        line += " Each phenotype's prevalence is in the per-phenotype tables."
    return line


def task_table(config: ReportConfig, metrics: Metrics, task: str) -> tuple[str, list[str]]:
    """Rows: models; columns: cohort × the task's headline metrics (95 % bootstrap interval
    in brackets). Returns the table and its footnotes."""
    keys = config.table_metrics[task]
    header = ["Model", "Paradigm"] + [
        f"{METRIC_TITLES.get(k, k)} ({cohort})" for cohort in config.cohorts for k in keys
    ]
    rows, degenerate = [], []
    for model in config.models:
        row = [model_label(config, model), config.paradigms[model]]
        for cohort in config.cohorts:
            values = metrics.benchmark[(model, task, cohort)]
            flagged = never_crosses(values, _kind(task))
            if flagged:
                degenerate.append((model, cohort, values))
            for k in keys:
                cell = mean_std(values, k, "one class in the test split")
                if values.get(k) is not None:
                    cell += with_interval(metrics.statistics, task, cohort, k, model)
                cell += significance_marker(metrics.statistics, task, cohort, k, model)
                if flagged and k in THRESHOLD_METRICS:
                    cell += NEVER_CROSSES
                row.append(cell)
        rows.append(row)
    notes = []
    if degenerate:
        if _kind(task) == "multilabel":
            listed = ", ".join(
                f"{m} {c} {v['labels_never_predicted_positive']:g}/25" for m, c, v in degenerate
            )
            notes.append(
                f"{NEVER_CROSSES} labels on which the model never predicts ≥ 0.5 on the test "
                f"split (their F1, precision and recall are 0 by construction): {listed}."
            )
        else:
            listed = ", ".join(f"{m} {c}" for m, c, _ in degenerate)
            notes.append(
                f"{NEVER_CROSSES} no test prediction reaches 0.5, so the threshold metrics are 0 "
                f"by construction (AUROC, AUPRC and ECE are threshold-free): {listed}."
            )
    return markdown_table(header, rows), notes


def _kind(task: str) -> str:
    return get_task(task).kind


def per_phenotype_frame(config: ReportConfig, metrics: Metrics, cohort: str) -> pd.DataFrame:
    """AUPRC [25 phenotypes × models] (index: short names, in phenotypes.csv order)."""
    table = phenotype_table()
    data = {
        model: [
            _none_to_nan(metrics.per_label[(model, "phenotype", cohort)][col]["auprc"])
            for col in table["column"]
        ]
        for model in config.models
    }
    return pd.DataFrame(data, index=table["short_name"].to_list(), dtype=float)


def _none_to_nan(value: float | None) -> float:
    return np.nan if value is None else value


def average_ranks(frame: pd.DataFrame) -> pd.Series:
    """Mean rank of each model (column) over the rows; rank 1 = highest AUPRC, ties averaged."""
    return frame.rank(axis=1, ascending=False, method="average").mean(axis=0)


def per_phenotype_table(config: ReportConfig, metrics: Metrics, cohort: str) -> str:
    """Per-phenotype AUPRC with each label's prevalence and its own significance markers."""
    frame = per_phenotype_frame(config, metrics, cohort)
    ranks = average_ranks(frame)
    table = phenotype_table()
    tests = comparison(metrics.statistics, "phenotype", cohort).get("per_label", {}).get("auprc")
    first = metrics.per_label[(config.models[0], "phenotype", cohort)]
    n = metrics.benchmark[(config.models[0], "phenotype", cohort)].get("n_stays", 0)
    rows = []
    for column, name in zip(table["column"], frame.index, strict=True):
        row = [name, percent(first[column].get("n_positive", 0), n)]
        for model in frame.columns:
            v = frame.loc[name, model]
            cell = "n/a (one class)" if np.isnan(v) else f"{v:.3f}"
            if tests and column in tests:
                label = tests[column]
                if label["best_unimodal"] == model:
                    cell += "†"
                elif label["models"].get(model, {}).get("significant"):
                    cell += "*"
            row.append(cell)
        rows.append(row)
    rows.append(["**Average rank**", ""] + [f"**{ranks[m]:.2f}**" for m in frame.columns])
    return markdown_table(["Phenotype", "Prevalence (test)", *frame.columns], rows)


def statistics_table(config: ReportConfig, metrics: Metrics) -> str:
    rows = []
    for task in config.tasks:
        for cohort in config.cohorts:
            entry = comparison(metrics.statistics, task, cohort)
            for metric, test in entry.get("metrics", {}).items():
                boot = entry["bootstrap"][metric]
                for model, result in test["models"].items():
                    ci = boot[model]["ci"]
                    dci = result["difference_ci"]
                    chosen = _fmt(test["best_unimodal_reference_value"])
                    rows.append(
                        [
                            task,
                            cohort,
                            METRIC_TITLES.get(metric, metric),
                            model,
                            _fmt(result["value"]) + _range(ci),
                            f"{test['best_unimodal']} ({_fmt(test['best_unimodal_value'])}; "
                            f"{entry['reference_split']} {chosen})",
                            _fmt(result["difference"], signed=True) + _range(dci, signed=True),
                            f"{result['p_value']:.4f}",
                            "yes" if result["significant"] else "no",
                        ]
                    )
    header = [
        "Task",
        "Cohort",
        "Metric",
        "Model",
        "Value (95 % CI)",
        "Best unimodal (test; chosen on)",
        "Δ (95 % CI)",
        "p",
        "Sig.",
    ]
    return markdown_table(header, rows)


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a (undefined)"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _range(ci: Sequence[float | None] | None, signed: bool = False) -> str:
    """`` (low–high)`` of an interval; empty when there is none."""
    if not ci or ci[0] is None:
        return ""
    return f" ({ci[0]:+.3f} to {ci[1]:+.3f})" if signed else f" ({ci[0]:.3f}–{ci[1]:.3f})"


def robustness_frame(config: ReportConfig, metrics: Metrics, task: str) -> pd.DataFrame:
    """Long frame: ``label`` (``overall`` or a phenotype), model, missing_ratio, mean, std (NaN
    with one seed)."""
    key = config.robustness_metric
    labels = ["overall"] + (list(config.robustness_phenotypes) if task == "phenotype" else [])
    rows = []
    for model in config.robustness_models:
        for ratio in config.curve_ratios:
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
                        "std": np.nan if std is None else std,
                    }
                )
    return pd.DataFrame(rows)


def robustness_table(config: ReportConfig, metrics: Metrics, task: str) -> str:
    frame = robustness_frame(config, metrics, task)
    overall = frame[frame["label"] == "overall"]
    header = ["Model"] + [f"r = {r:g}" for r in config.curve_ratios]
    rows = []
    for model in config.robustness_models:
        part = overall[overall["model"] == model].set_index("missing_ratio")
        row = [model_label(config, model)]
        for r in config.curve_ratios:
            mean, std = part.loc[r, "mean"], part.loc[r, "std"]
            if np.isnan(mean):
                row.append("n/a (one class)")
            else:
                row.append(f"{mean:.3f}" + ("" if np.isnan(std) else f" ± {std:.3f}"))
        rows.append(row)
    return markdown_table(header, rows)


def fairness_frame(config: ReportConfig, metrics: Metrics, task: str, cohort: str) -> pd.DataFrame:
    """Long frame: model, attribute, metric, gap (None → NaN), reason (why it is undefined)."""
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
                        "reason": "" if gap is not None else gap_reason(entry, config),
                    }
                )
    return pd.DataFrame(rows)


def gap_reason(entry: dict, config: ReportConfig) -> str:
    """Why a fairness gap is undefined."""
    size = entry.get("min_group_size", config.min_group_size)
    if entry.get("n_groups_included", 0) < 2:
        return f"< 2 groups of ≥ {size} stays"
    return "defined in < 2 groups"


def group_sizes(config: ReportConfig, metrics: Metrics, task: str, cohort: str) -> dict:
    """attribute → {group: (n, included)} of the test split (the same stays for every model)."""
    report = metrics.fairness[(config.models[0], task, cohort)]
    return {
        attribute: {
            g: (v["n"], v.get("included", v["n"] >= config.min_group_size))
            for g, v in entry.get("groups", {}).items()
        }
        for attribute, entry in report.items()
    }


def group_sizes_text(sizes: dict[str, tuple[int, bool]], min_size: int) -> str:
    return ", ".join(
        f"{g} {n}" + ("" if included else f" (left out: < {min_size})")
        for g, (n, included) in sizes.items()
    )


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
        part = frame[frame["model"] == model].set_index(["attribute", "metric"])
        cells = []
        for a in attributes:
            for m in FAIRNESS_METRICS:
                gap, reason = part.loc[(a, m), "gap"], part.loc[(a, m), "reason"]
                cells.append(f"n/a ({reason})" if np.isnan(gap) else f"{gap:.3f}")
        rows.append([model, *cells])
    return markdown_table(header, rows)


# ---- figures ---------------------------------------------------------------------------------


def robustness_figure(config: ReportConfig, frame: pd.DataFrame, task: str, path: Path) -> None:
    """Metric vs missing ratio per model, with a ± std band over seeds where there are several
    (seed paper, Figure 2)."""
    plt = _pyplot()

    phenotypes = phenotype_table()
    short = dict(zip(phenotypes["column"], phenotypes["short_name"], strict=True))
    labels = list(dict.fromkeys(frame["label"]))
    cols = min(3, len(labels))
    rows = int(np.ceil(len(labels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    # Up to 17 lines: one tab20 colour each, the paradigm as the line style and marker, so no two
    # models look alike (matplotlib's default cycle repeats after 10).
    palette = plt.get_cmap("tab20")
    colours = {m: palette(i % 20) for i, m in enumerate(config.robustness_models)}
    for ax, label in zip(axes.flat, labels, strict=False):
        part = frame[frame["label"] == label]
        for model in config.robustness_models:
            line = part[part["model"] == model].sort_values("missing_ratio")
            x, y, s = line["missing_ratio"], line["mean"], line["std"]
            style, marker = PARADIGM_STYLES[config.paradigms[model]]
            ax.plot(
                x,
                y,
                linestyle=style,
                marker=marker,
                markersize=4,
                color=colours[model],
                label=f"{model} ({config.paradigms[model]})",
            )
            if s.notna().any():
                ax.fill_between(x, y - s, y + s, alpha=0.15, color=colours[model])
        title = "Overall" if label == "overall" else short.get(label, label)
        ax.set_title(f"{TASK_TITLES[task].split(' (')[0]}: {title}", fontsize=10)
        ax.set_xlabel("missing CXR ratio")
        ax.set_ylabel(METRIC_TITLES.get(config.robustness_metric, config.robustness_metric))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(labels) :]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=7)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * int(np.ceil(len(names) / 4)), 1, 1))
    _save(fig, path)


def fairness_figure(
    frame: pd.DataFrame, sizes: dict[str, dict[str, tuple[int, bool]]], title: str, path: Path
) -> None:
    """Gap per model, one panel per attribute × metric (seed paper, Figure 3). An undefined gap
    has no bar and is written "n/a"; each row names its groups and their sizes."""
    plt = _pyplot()

    attributes = list(dict.fromkeys(frame["attribute"]))
    models = list(dict.fromkeys(frame["model"]))
    fig, axes = plt.subplots(
        len(attributes),
        len(FAIRNESS_METRICS),
        figsize=(3.2 * len(FAIRNESS_METRICS), 2.9 * len(attributes)),
        squeeze=False,
    )
    for i, attribute in enumerate(attributes):
        for j, metric in enumerate(FAIRNESS_METRICS):
            ax = axes[i, j]
            part = frame[(frame["attribute"] == attribute) & (frame["metric"] == metric)]
            gaps = part.set_index("model")["gap"].reindex(models)
            defined = gaps.notna().to_numpy()
            x = np.arange(len(models))
            ax.bar(x[defined], gaps.to_numpy()[defined], color=f"C{j}")
            for k in np.flatnonzero(~defined):
                ax.text(k, 0, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
            ax.set_xticks(x, models, rotation=45, ha="right", fontsize=7)
            ax.set_title(
                f"{ATTRIBUTE_TITLES.get(attribute, attribute)}: {METRIC_TITLES[metric]} gap",
                fontsize=9,
            )
            ax.grid(axis="y", alpha=0.3)
        groups = sizes.get(attribute, {})
        text = ", ".join(f"{g} {n}" + ("" if inc else "*") for g, (n, inc) in groups.items())
        axes[i, 0].set_ylabel(f"n: {text}", fontsize=6)
    fig.suptitle(f"{title} (group sizes at left; * left out: too small)")
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


def introduction(config: ReportConfig, metrics: Metrics) -> list[str]:
    n_seeds = max(v.get("n_seeds", 1) for v in metrics.benchmark.values())
    seeds = (
        f"{n_seeds} seeds per run: values are means, ± the standard deviation over seeds."
        if n_seeds > 1
        else "1 seed per run: no spread over seeds is shown (that needs several seeds; the paper "
        "profile trains 3)."
    )
    stats = next(
        (c for t in metrics.statistics.values() for c in t.values() if "confidence" in c), {}
    )
    confidence = round(100 * stats.get("confidence", 0.95))
    reference = stats.get("reference_split", "val")
    return [
        "# ehrcxr benchmark report",
        "",
        "Generated by `dvc repro` (stage `report`) from the metrics files under `metrics/`; "
        f"every number is on the test split. {seeds}",
        "",
        f"- In brackets: {confidence} % bootstrap intervals (the test stays resampled, the same "
        "resamples for every model of a task and cohort).",
        f"- `*`: significantly better than the best unimodal model on that metric (one-sided "
        f"paired permutation test, {config.n_permutations:,} permutations, α = {config.alpha}); "
        f"`†`: that reference model, chosen on the **{reference}** split (the CareBench paper "
        "chooses it on test, which favours the reference).",
        f"- Threshold metrics (F1, precision, recall) use 0.5; `{NEVER_CROSSES}` marks a model "
        "that never crosses it. ECE is the threshold-free calibration error (10 bins; LoS: of "
        "the predicted class).",
        "- `n/a (reason)`: the value is undefined (e.g. one class in the test split, or a "
        f"fairness group below {config.min_group_size} stays); it is never shown or drawn as 0.",
    ]


def write_report(config: ReportConfig, metrics: Metrics, out: Path) -> list[Path]:
    """Write ``out``/report.md, its PNG figures and plot data (CSV); returns the files written."""
    from ehrcxr.io import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    parts = introduction(config, metrics)
    for i, task in enumerate(config.tasks, start=1):
        table, notes = task_table(config, metrics, task)
        parts += ["", f"## Table {i}. {TASK_TITLES[task]}", "", sizes_line(config, metrics, task)]
        if task == "los":
            parts += ["", LOS_NOTE]
        parts += ["", table]
        parts += [f"\n{note}" for note in notes]
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
                "`*` / `†` per phenotype: against that phenotype's best unimodal model (chosen "
                "on validation).",
                "",
                per_phenotype_table(config, metrics, cohort),
            ]
    parts += [
        "",
        "## Fusion vs the best unimodal model (paired permutation tests)",
        "",
        statistics_table(config, metrics),
    ]
    splits = ", ".join(config.missing_splits)
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
            f"Films are removed from a seeded share r of the stays with a film in the {splits} "
            "split(s); the removal is nested (for a seed, the films removed at a larger r include "
            "those removed at a smaller one), so a curve measures missingness, not which films "
            "were drawn. r = 0 is the grid's own run on this cohort.",
            "",
            robustness_table(config, metrics, task),
            "",
            f"![robustness]({png.name})",
        ]
    for task in config.tasks:
        for cohort in config.cohorts:
            frame = fairness_frame(config, metrics, task, cohort)
            sizes = group_sizes(config, metrics, task, cohort)
            png, csv = out / f"fairness-{task}-{cohort}.png", out / f"fairness-{task}-{cohort}.csv"
            fairness_figure(frame, sizes, f"{TASK_TITLES[task]}, {cohort} cohort", png)
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
            lines = [
                f"- {ATTRIBUTE_TITLES.get(a, a)} groups (test stays): "
                + group_sizes_text(groups, config.min_group_size)
                for a, groups in sizes.items()
            ]
            parts += [
                "",
                f"## Fairness gaps (best − worst group): {TASK_TITLES[task]}, {cohort} cohort",
                "",
                *lines,
                "",
                fairness_table(config, metrics, task, cohort),
                "",
                f"![fairness]({png.name})",
            ]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(parts) + "\n")
    return [report, *written]


def _robustness_plot_data(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Plot data for ``dvc plots``, per label: ``missing_ratio``, one column per model (the mean
    over seeds) and, with several seeds, ``<model>_std`` (the figure's band)."""
    out = {}
    for label, part in frame.groupby("label", sort=False):
        wide = part.pivot_table(
            index="missing_ratio", columns="model", values="mean", sort=False, dropna=False
        )
        if part["std"].notna().any():
            spread = part.pivot_table(
                index="missing_ratio", columns="model", values="std", sort=False, dropna=False
            )
            wide = wide.join(spread.add_suffix("_std"))
        out[str(label)] = wide.rename_axis(columns=None).reset_index()
    return out


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    from ehrcxr.io import atomic_path

    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")
