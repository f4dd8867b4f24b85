"""Paired permutation test of two models on the same test stays (benchmark_protocol.md, "Metrics").

H0: the two models' predictions are exchangeable per stay. Each permutation swaps the two models'
predictions of every stay with probability 1/2 (all outputs of a stay together), and the statistic
is metric(A) − metric(B). One-sided p-value for "A is better than B":
``p = (1 + #{permuted statistic ≥ observed}) / (1 + n_permutations)`` — identical predictions give
p = 1. The metric is evaluated for a whole chunk of permutations at once (rank-based AUROC, sorted
cumulative AUPRC), so 10,000 permutations of a 25-label AUPRC take seconds.

With several seeds the per-stay probabilities are averaged over seeds first: the test compares the
two seed-ensembles on the same stays.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ehrcxr.evaluation.runs import DIGITS
from ehrcxr.tasks import Task

# metric(y [N] or [N, L], predictions [P, N, O]) → [P]; O = outputs (1, labels or classes).
RowMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]


def auroc_rows(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row: y {0, 1} [N]; scores [P, N] → [P] (Mann–Whitney, ties averaged)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[0], np.nan)
    ranks = rankdata(scores, axis=1)
    return (ranks[:, y].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auprc_rows(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each row, as scikit-learn defines it (ties form one threshold).

    y {0, 1} [N]; scores [P, N] → [P]. AP = (1/n_pos) Σ over positives of the precision at the
    threshold equal to that positive's score.
    """
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return np.full(scores.shape[0], np.nan)
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    hits = y[order]
    tp = np.cumsum(hits, axis=1)
    n = scores.shape[1]
    # Each element's precision is taken at the end of its block of tied scores.
    block_end = np.ones_like(hits)
    block_end[:, :-1] = s[:, 1:] != s[:, :-1]
    end_index = np.where(block_end, np.arange(n), n)
    end_index = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(tp, end_index, axis=1) / (end_index + 1)
    return (precision_at_end * hits).sum(axis=1) / n_pos


def _binary(rows: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> RowMetric:
    def metric(y: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        return rows(y[:, 0], predictions[:, :, 0])

    return metric


def _macro(rows: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> RowMetric:
    def metric(y: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        per_label = [rows(y[:, j], predictions[:, :, j]) for j in range(y.shape[1])]
        defined = [v for v in per_label if np.isfinite(v).all()]
        return np.mean(defined, axis=0) if defined else np.full(predictions.shape[0], np.nan)

    return metric


def _accuracy(y: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    return (predictions.argmax(axis=2) == y[:, 0]).mean(axis=1)


def row_metric(task: Task, name: str) -> RowMetric:
    """The vectorised metric ``name`` for ``task``: auroc | auprc (macro for phenotypes) for
    binary and multi-label tasks, accuracy for length of stay."""
    if task.kind == "multiclass":
        if name != "accuracy":
            raise ValueError(f"permutation test for {task.name} supports accuracy, not {name}")
        return _accuracy
    rows = {"auroc": auroc_rows, "auprc": auprc_rows}.get(name)
    if rows is None:
        raise ValueError(f"permutation test for {task.name} supports auroc | auprc, not {name}")
    return _binary(rows) if task.kind == "binary" else _macro(rows)


def paired_permutation_test(
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric: RowMetric,
    n_permutations: int,
    seed: int,
) -> tuple[float, float]:
    """(observed metric(A) − metric(B), one-sided p-value that A is better).

    y: [N, L] labels (L = 1 for binary and multi-class tasks); pred_a, pred_b: [N, O] outputs of
    the two models on the same stays in the same order.
    """
    if pred_a.shape != pred_b.shape:
        raise ValueError(f"prediction shapes differ: {pred_a.shape} vs {pred_b.shape}")
    both = np.stack([pred_a, pred_b])  # [2, N, O]
    observed = metric(y, both)
    diff = float(observed[0] - observed[1])
    rng = np.random.default_rng(seed)
    n = pred_a.shape[0]
    # Permutations per chunk: bound each [chunk, N, O] array to ≈ 2e7 numbers (160 MB).
    chunk = max(1, int(2e7 // max(1, pred_a.size)))
    at_least = 0
    done = 0
    while done < n_permutations:
        p = min(chunk, n_permutations - done)
        swap = rng.random((p, n)) < 0.5
        a = np.where(swap[:, :, None], pred_b[None], pred_a[None])
        b = np.where(swap[:, :, None], pred_a[None], pred_b[None])
        permuted = metric(y, a) - metric(y, b)
        at_least += int((permuted >= diff - 1e-12).sum())
        done += p
    return diff, (1 + at_least) / (1 + n_permutations)


def seed_ensemble(
    predictions: pd.DataFrame, task: Task, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stay ids, labels [N, L], probabilities [N, O] averaged over seeds) on ``split``."""
    part = predictions[predictions["split"] == split]
    if part.empty:
        raise ValueError(f"no {split} predictions")
    grouped = part.groupby("stay_id", sort=True)
    probs = grouped[task.prob_columns].mean()
    labels = grouped[task.label_columns].first()
    return probs.index.to_numpy(), labels.to_numpy(), probs.to_numpy(dtype=float)


def compare_with_best_unimodal(
    predictions: dict[str, pd.DataFrame],
    multimodal: dict[str, bool],
    task: Task,
    split: str,
    metrics: list[str],
    n_permutations: int,
    alpha: float,
    seed: int,
) -> dict:
    """Each multimodal model against the best unimodal model, per metric.

    predictions: model name → its predictions file (same task and cohort); multimodal: model
    name → whether it reads both modalities. For each metric the best unimodal model is the one
    with the highest seed-ensemble value on ``split``; every multimodal model is tested against it
    on the same stays. Returns ``{metric: {"best_unimodal": name, "best_unimodal_value": v,
    "models": {name: {"value", "difference", "p_value", "significant"}}}}``.
    """
    ensembles = {name: seed_ensemble(frame, task, split) for name, frame in predictions.items()}
    reference_ids, labels, _ = next(iter(ensembles.values()))
    for name, (ids, _, _) in ensembles.items():
        if not np.array_equal(ids, reference_ids):
            raise ValueError(f"{name} was evaluated on other {split} stays than the others")
    unimodal = [n for n in ensembles if not multimodal[n]]
    fused = [n for n in ensembles if multimodal[n]]
    if not unimodal:
        raise ValueError("no unimodal model to compare with")
    out: dict = {}
    for metric_name in metrics:
        metric = row_metric(task, metric_name)
        value = {n: float(metric(labels, e[2][None])[0]) for n, e in ensembles.items()}
        best = max(unimodal, key=lambda n: value[n])
        models = {}
        for name in fused:
            diff, p = paired_permutation_test(
                labels, ensembles[name][2], ensembles[best][2], metric, n_permutations, seed
            )
            models[name] = {
                "value": round(value[name], DIGITS),
                "difference": round(diff, DIGITS),
                "p_value": round(p, 6),
                "significant": bool(p < alpha),
            }
        out[metric_name] = {
            "best_unimodal": best,
            "best_unimodal_value": round(value[best], DIGITS),
            "models": models,
        }
    return out
