"""Subgroup fairness gaps of one run (benchmark_protocol.md, "Fairness").

For each sensitive attribute (race group, sex, age group) and each metric (AUPRC, TPR and FPR at
threshold 0.5, ECE with 10 equal-width bins), the gap is best group − worst group, i.e. max − min
over the groups with at least ``min_group_size`` evaluated stays. A group's metric is left out of
a gap when it is undefined there (AUPRC and TPR need a positive, FPR a negative, every metric a
non-empty group); a gap needs two groups with a defined value.

Targets: mortality has one (the death probability); phenotyping has one per label, and the gaps
are computed per label, then averaged over the labels where they are defined; length of stay is
scored one-vs-rest per class (score: that class's probability; decision: the class is the argmax)
and averaged over classes, our choice where the protocol is silent. With several seeds every
number is computed per seed, then averaged (``<metric>_gap_std`` gives the spread).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from ehrcxr.evaluation.metrics import THRESHOLD, expected_calibration_error
from ehrcxr.evaluation.runs import summarize
from ehrcxr.tasks import Task

FAIRNESS_METRICS = ("auprc", "tpr", "fpr", "ece")


def group_metrics(y: np.ndarray, score: np.ndarray, decision: np.ndarray, n_bins: int) -> dict:
    """AUPRC, TPR, FPR, ECE of one group on one target. y, decision: {0, 1} [N]; score: [N]."""
    y = np.asarray(y).astype(int)
    decision = np.asarray(decision).astype(bool)
    pos, neg = y == 1, y == 0
    return {
        "auprc": float(average_precision_score(y, score)) if pos.any() else float("nan"),
        "tpr": float(decision[pos].mean()) if pos.any() else float("nan"),
        "fpr": float(decision[neg].mean()) if neg.any() else float("nan"),
        "ece": expected_calibration_error(y, score, n_bins),
    }


def targets(frame: pd.DataFrame, task: Task) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(label, score, decision) arrays [N] for every target of ``task`` in a predictions frame."""
    if task.kind == "multiclass":
        probs = frame[task.prob_columns].to_numpy()
        y = frame[task.label_columns[0]].to_numpy().astype(int)
        predicted = probs.argmax(axis=1)
        return [(y == k, probs[:, k], predicted == k) for k in range(task.n_outputs)]
    out = []
    for prob, label in zip(task.prob_columns, task.label_columns, strict=True):
        p = frame[prob].to_numpy(dtype=float)
        out.append((frame[label].to_numpy(), p, p >= THRESHOLD))
    return out


def _gap(values: Sequence[float]) -> float:
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.max() - finite.min()) if finite.size >= 2 else float("nan")


def _nanmean(values: Sequence[float]) -> float:
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else float("nan")


def attribute_gaps(
    frame: pd.DataFrame, groups: pd.Series, task: Task, min_group_size: int, n_bins: int
) -> dict:
    """Gaps of one seed's predictions for one attribute.

    frame: the predictions of one seed and split; groups: the attribute's value per row of
    ``frame`` (same index). Returns ``{"<metric>_gap": float, "n_groups_included": int,
    "groups": {group: {"n": int, "included": bool, <metric>: value averaged over targets}}}``;
    every group is listed with its size, and a group smaller than ``min_group_size`` is not
    included (its metrics NaN).
    """
    labels = groups.astype(str).to_numpy()
    names, counts = np.unique(labels, return_counts=True)
    every = {str(g): int(n) for g, n in zip(names, counts, strict=True)}
    sizes = {g: n for g, n in every.items() if n >= min_group_size}
    masks = {g: labels == g for g in sizes}
    per_target = [  # per target: {group: metrics}
        {g: group_metrics(y[m], score[m], decision[m], n_bins) for g, m in masks.items()}
        for y, score, decision in targets(frame, task)
    ]
    out: dict = {
        f"{metric}_gap": _nanmean([_gap([t[g][metric] for g in sizes]) for t in per_target])
        for metric in FAIRNESS_METRICS
    }
    out["n_groups_included"] = len(sizes)
    out["groups"] = {
        g: {"n": n, "included": g in sizes}
        | {
            m: _nanmean([t[g][m] for t in per_target]) if g in sizes else float("nan")
            for m in FAIRNESS_METRICS
        }
        for g, n in every.items()
    }
    return out


def fairness_report(
    predictions: pd.DataFrame,
    stays: pd.DataFrame,
    task: Task,
    split: str,
    attributes: Sequence[str],
    min_group_size: int,
    n_bins: int,
) -> dict:
    """Fairness gaps of a run on ``split``, mean (and std) over seeds.

    predictions: a predictions file (stay_id, split, seed, prob_*, label_*); stays: one row per
    stay with ``stay_id`` and the ``attributes`` columns (the extraction's cohort table).
    Returns ``{attribute: {"<metric>_gap": mean, ["<metric>_gap_std": std,] "min_group_size",
    "n_groups_included", "groups": {group: {"n", "included", <metric>: mean over seeds}}}}``;
    undefined values (a gap needs two included groups where the metric is defined; a group
    below ``min_group_size`` has no metrics) are None.
    """
    part = predictions[predictions["split"] == split]
    if part.empty:
        raise ValueError(f"no {split} predictions")
    missing = [a for a in attributes if a not in stays.columns]
    if missing:
        raise ValueError(f"stays table lacks the sensitive attributes {missing}")
    lookup = stays.set_index("stay_id")
    # Each seed's predictions with the attributes of their stays, looked up once.
    per_seed = []
    for seed in sorted(part["seed"].unique()):
        frame = part[part["seed"] == seed].reset_index(drop=True)
        attrs = lookup.loc[frame["stay_id"].to_numpy(), list(attributes)].reset_index(drop=True)
        per_seed.append((frame, attrs))
    result: dict = {}
    for attribute in attributes:
        runs = [
            attribute_gaps(frame, attrs[attribute], task, min_group_size, n_bins)
            for frame, attrs in per_seed
        ]
        entry: dict = {}
        for metric in FAIRNESS_METRICS:
            values = [r[f"{metric}_gap"] for r in runs]
            entry[f"{metric}_gap"] = summarize(values, np.mean)
            if len(runs) > 1:
                entry[f"{metric}_gap_std"] = summarize(values, np.std)
        entry["min_group_size"] = min_group_size
        entry["n_groups_included"] = max(r["n_groups_included"] for r in runs)
        names = sorted({g for r in runs for g in r["groups"]})
        entry["groups"] = {
            g: {
                "n": max(r["groups"][g]["n"] for r in runs if g in r["groups"]),
                "included": any(r["groups"][g]["included"] for r in runs if g in r["groups"]),
            }
            | {
                metric: summarize(
                    [r["groups"][g][metric] for r in runs if g in r["groups"]], np.mean
                )
                for metric in FAIRNESS_METRICS
            }
            for g in names
        }
        result[attribute] = entry
    return result
