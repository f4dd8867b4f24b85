"""Predictions file → the metrics of one run (mean and std over seeds)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ehrcxr.evaluation.metrics import binary_metrics, multiclass_metrics, multilabel_metrics
from ehrcxr.tasks import Task

DIGITS = 4


def summarize(values: list[float], fn) -> float | None:
    """``fn`` over the finite values, rounded; None (JSON null) when there are none."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return round(float(fn(finite)), DIGITS) if finite.size else None


def _per_seed(
    frame: pd.DataFrame, task: Task
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    if task.kind == "multiclass":
        p = frame[task.prob_columns].to_numpy()
        return multiclass_metrics(frame[task.label_columns[0]].to_numpy(), p), {}
    y = frame[task.label_columns].to_numpy()
    p = frame[task.prob_columns].to_numpy()
    if task.kind == "binary":
        return binary_metrics(y[:, 0], p[:, 0]), {}
    macro, per_label = multilabel_metrics(y, p, list(task.labels))
    # One column per metric across tasks: a phenotype run's AUROC is the macro AUROC.
    return {k.removeprefix("macro_"): v for k, v in macro.items()}, per_label


def evaluate_predictions(predictions: pd.DataFrame, task: Task, split: str) -> tuple[dict, dict]:
    """Metrics on ``split``: (headline, per label).

    Headline: each metric's mean over seeds, ``<metric>_std`` with several seeds, ``n_seeds``,
    ``n_stays``; for phenotypes the metrics are macro means over the 25 labels. Per label
    (phenotypes only, else empty): AUPRC and AUROC of each label, mean (and std) over seeds.
    """
    part = predictions[predictions["split"] == split]
    if part.empty:
        raise ValueError(f"no {split} predictions")
    seeds = sorted(part["seed"].unique())
    headline, per_label = [], []
    for seed in seeds:
        h, pl = _per_seed(part[part["seed"] == seed], task)
        headline.append(h)
        per_label.append(pl)
    out: dict = {"n_seeds": len(seeds), "n_stays": int((part["seed"] == seeds[0]).sum())}
    for key in headline[0]:
        values = [h[key] for h in headline]
        out[key] = summarize(values, np.mean)
        if len(seeds) > 1:
            out[f"{key}_std"] = summarize(values, np.std)
    labels: dict = {}
    for name in task.labels if per_label[0] else ():
        labels[name] = {}
        for key in ("auprc", "auroc"):
            values = [pl[name][key] for pl in per_label]
            labels[name][key] = summarize(values, np.mean)
            if len(seeds) > 1:
                labels[name][f"{key}_std"] = summarize(values, np.std)
    return out, labels
