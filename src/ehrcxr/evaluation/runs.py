"""Predictions file → the metrics of one run (mean and std over seeds)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ehrcxr.errors import EhrcxrError
from ehrcxr.evaluation.metrics import (
    THRESHOLD,
    binary_metrics,
    expected_calibration_error,
    multiclass_metrics,
    multilabel_metrics,
    top_label_ece,
)
from ehrcxr.tasks import Task

DIGITS = 4
# A multi-class row's probabilities sum to 1 up to float32 rounding of a softmax.
SUM_TOLERANCE = 1e-3


def summarize(values: list[float], fn) -> float | None:
    """``fn`` over the finite values, rounded; None (JSON null) when there are none."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return round(float(fn(finite)), DIGITS) if finite.size else None


def _per_seed(
    frame: pd.DataFrame, task: Task, ece_bins: int
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """One seed's headline metrics and (phenotypes) per-label metrics, with the counts behind
    them: positives and predictions at or above the 0.5 threshold."""
    if task.kind == "multiclass":
        p = frame[task.prob_columns].to_numpy()
        y = frame[task.label_columns[0]].to_numpy()
        return multiclass_metrics(y, p) | {"ece": top_label_ece(y, p, ece_bins)}, {}
    y = frame[task.label_columns].to_numpy()
    p = frame[task.prob_columns].to_numpy()
    ece = [expected_calibration_error(y[:, j], p[:, j], ece_bins) for j in range(y.shape[1])]
    above = (p >= THRESHOLD).sum(axis=0)
    if task.kind == "binary":
        counts = {"n_positive": int(y[:, 0].sum()), "n_predicted_positive": int(above[0])}
        return binary_metrics(y[:, 0], p[:, 0]) | {"ece": ece[0]} | counts, {}
    macro, per_label = multilabel_metrics(y, p, list(task.labels))
    for j, name in enumerate(task.labels):
        per_label[name] |= {
            "ece": ece[j],
            "n_positive": int(y[:, j].sum()),
            "n_predicted_positive": int(above[j]),
        }
    # One column per metric across tasks: a phenotype run's AUROC is the macro AUROC.
    headline = {k.removeprefix("macro_"): v for k, v in macro.items()}
    headline["ece"] = float(np.mean(ece))
    # Labels the model never flags at 0.5: their F1, recall and TPR are 0 by construction.
    headline["labels_never_predicted_positive"] = int((above == 0).sum())
    return headline, per_label


def check_predictions(predictions: pd.DataFrame, task: Task, split: str) -> None:
    """Refuse a predictions file no metric should be computed from, with one line saying what
    is wrong (counts and column names only, never a stay): missing columns, no ``split`` rows,
    non-numeric, NaN or infinite values, probabilities outside [0, 1] (logits), multi-class rows
    that do not sum to 1, labels outside the task's values, a stay twice in one seed, or seeds
    that scored different stays. Evaluation would otherwise give null AUROCs beside computed
    accuracies, or count a duplicated stay twice."""
    need = ["stay_id", "split", "seed", *task.prob_columns, *task.label_columns]
    missing = [c for c in need if c not in predictions.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise EhrcxrError(f"predictions lack the {task.name} column(s) {shown}")
    if not (predictions["split"] == split).any():
        raise EhrcxrError(f"predictions hold no {split!r} rows")
    part = predictions  # every row: a bad value anywhere says the file is not what train writes
    for column in ["stay_id", "seed", *task.prob_columns, *task.label_columns]:
        values = pd.to_numeric(part[column], errors="coerce").to_numpy(dtype=float)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise EhrcxrError(f"predictions column {column}: {bad} value(s) not finite numbers")
    probs = part[task.prob_columns].to_numpy(dtype=float)
    outside = int(((probs < 0) | (probs > 1)).sum())
    if outside:
        raise EhrcxrError(
            f"predictions: {outside} probabilities outside [0, 1] (logits, not probabilities?)"
        )
    labels = part[task.label_columns].to_numpy(dtype=float)
    if task.kind == "multiclass":
        off = int((np.abs(probs.sum(axis=1) - 1) > SUM_TOLERANCE).sum())
        if off:
            raise EhrcxrError(
                f"predictions: {off} row(s) whose {task.name} class probabilities do not sum to 1"
            )
        allowed = np.arange(task.n_outputs)
    else:
        allowed = np.array([0.0, 1.0])
    wrong = int((~np.isin(labels, allowed)).sum())
    if wrong:
        raise EhrcxrError(
            f"predictions: {wrong} {task.name} label(s) outside {allowed.astype(int).tolist()}"
        )
    duplicated = int(part.duplicated(["seed", "split", "stay_id"]).sum())
    if duplicated:
        raise EhrcxrError(f"predictions: {duplicated} stay(s) twice in one seed's rows of a split")
    stays = part[part["split"] == split].groupby("seed")["stay_id"].agg(lambda s: tuple(sorted(s)))
    if stays.nunique() > 1:
        raise EhrcxrError(f"predictions: the seeds scored different {split} stays")


COUNTS = ("n_positive", "n_predicted_positive", "labels_never_predicted_positive")
PER_LABEL = ("auprc", "auroc", "f1", "ece")


def evaluate_predictions(
    predictions: pd.DataFrame, task: Task, split: str, ece_bins: int
) -> tuple[dict, dict]:
    """Metrics on ``split``: (headline, per label).

    Headline: each metric's mean over seeds, ``<metric>_std`` with several seeds, ``n_seeds``,
    ``n_stays``; ``ece`` (``ece_bins`` equal-width bins; phenotypes: mean over labels; LoS: of
    the predicted class); counts (mean over seeds where they depend on the model): mortality
    ``n_positive`` and ``n_predicted_positive`` (≥ 0.5), phenotypes
    ``labels_never_predicted_positive``, LoS ``class_counts``. For phenotypes the metrics are macro
    means over the 25 labels. Per label (phenotypes only, else empty): AUPRC, AUROC, F1, ECE,
    ``n_positive`` and ``n_predicted_positive`` of each label, mean (and std) over seeds.
    """
    part = predictions[predictions["split"] == split]
    if part.empty:
        raise ValueError(f"no {split} predictions")
    seeds = sorted(part["seed"].unique())
    headline, per_label = [], []
    for seed in seeds:
        h, pl = _per_seed(part[part["seed"] == seed], task, ece_bins)
        headline.append(h)
        per_label.append(pl)
    first = part[part["seed"] == seeds[0]]
    out: dict = {"n_seeds": len(seeds), "n_stays": len(first)}
    if task.kind == "multiclass":
        classes = first[task.label_columns[0]].value_counts()
        out["class_counts"] = {str(k): int(classes.get(k, 0)) for k in range(task.n_outputs)}
    for key in headline[0]:
        values = [h[key] for h in headline]
        out[key] = summarize(values, np.mean)
        if len(seeds) > 1 and key not in COUNTS:
            out[f"{key}_std"] = summarize(values, np.std)
    labels: dict = {}
    for name in task.labels if per_label[0] else ():
        labels[name] = {}
        for key in (*PER_LABEL, "n_positive", "n_predicted_positive"):
            values = [pl[name][key] for pl in per_label]
            labels[name][key] = summarize(values, np.mean)
            if len(seeds) > 1 and key in PER_LABEL:
                labels[name][f"{key}_std"] = summarize(values, np.std)
    return out, labels
