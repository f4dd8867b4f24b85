"""The protocol's metrics from labels and probabilities (benchmark_protocol.md, "Metrics").

Binary and multi-label tasks: AUROC, AUPRC (average precision), and at threshold 0.5: F1,
precision, recall, specificity, accuracy; multi-label values are macro means over labels (labels
with a single class in the evaluated set are left out of AUROC/AUPRC). Multi-class (LoS): accuracy,
macro F1, Cohen's kappa with quadratic weights, macro precision, recall and specificity.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

THRESHOLD = 0.5


def _safe(fn, *args, **kwargs) -> float:
    try:
        return float(fn(*args, **kwargs))
    except ValueError:
        return float("nan")


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """y: int [N] in {0, 1}; p: float [N] probability of 1."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    pred = (p >= THRESHOLD).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    two_classes = len(np.unique(y)) == 2
    return {
        "auroc": _safe(skm.roc_auc_score, y, p) if two_classes else float("nan"),
        "auprc": _safe(skm.average_precision_score, y, p) if two_classes else float("nan"),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "accuracy": float((tp + tn) / len(y)),
    }


def multilabel_metrics(
    y: np.ndarray, p: np.ndarray, names: list[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """y, p: [N, L]. Returns (macro means with ``macro_`` prefix, per-label metrics)."""
    per_label = {n: binary_metrics(y[:, j], p[:, j]) for j, n in enumerate(names)}
    macro = {}
    for key in ("auroc", "auprc", "f1", "precision", "recall", "specificity", "accuracy"):
        values = np.array([m[key] for m in per_label.values()], dtype=float)
        macro[f"macro_{key}"] = (
            float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        )
    return macro, per_label


def multiclass_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """y: int [N] class ids; p: float [N, K] class probabilities (rows sum to 1)."""
    y = np.asarray(y).astype(int)
    k = p.shape[1]
    pred = np.asarray(p).argmax(axis=1)
    cm = skm.confusion_matrix(y, pred, labels=np.arange(k))
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    present = cm.sum(axis=1) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(
            skm.f1_score(y, pred, labels=np.arange(k)[present], average="macro", zero_division=0)
        ),
        "kappa_quadratic": _safe(skm.cohen_kappa_score, y, pred, weights="quadratic"),
        "macro_precision": float(
            skm.precision_score(
                y, pred, labels=np.arange(k)[present], average="macro", zero_division=0
            )
        ),
        "macro_recall": float(np.nanmean(recall[present])),
        "macro_specificity": float(np.nanmean(specificity[present])),
    }


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int) -> float:
    """ECE = Σ_b (n_b / n) · |mean p in b − mean y in b| over ``n_bins`` equal-width bins of [0, 1].

    y: {0, 1} [N]; p: probabilities [N]. Bin b holds b/n_bins ≤ p < (b+1)/n_bins; p = 1 falls in
    the last bin. NaN for an empty input.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if y.size == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    return float(np.abs(sum_p - sum_y).sum() / y.size)


def top_label_ece(y: np.ndarray, p: np.ndarray, n_bins: int) -> float:
    """Multi-class ECE of the predicted class (Guo et al., 2017): the calibration error of the
    top probability [N] against whether the argmax is the true class. y: int [N]; p: [N, K]."""
    p = np.asarray(p, dtype=float)
    correct = (p.argmax(axis=1) == np.asarray(y).astype(int)).astype(float)
    return expected_calibration_error(correct, p.max(axis=1), n_bins)


def selection_value(kind: str, y: np.ndarray, p: np.ndarray) -> float:
    """Validation selection metric: AUPRC (binary), macro AUPRC (multi-label), accuracy (LoS)."""
    if kind == "binary":
        return binary_metrics(y.ravel(), p.ravel())["auprc"]
    if kind == "multilabel":
        aps = [
            skm.average_precision_score(y[:, j], p[:, j])
            for j in range(y.shape[1])
            if len(np.unique(y[:, j])) == 2
        ]
        return float(np.mean(aps)) if aps else float("nan")
    if kind == "multiclass":
        return float((np.asarray(p).argmax(axis=1) == np.asarray(y).ravel()).mean())
    raise ValueError(f"unknown task kind {kind!r}")
