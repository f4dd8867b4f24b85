"""Does fusion beat the best unimodal model? Paired permutation tests and bootstrap intervals.

Everything here is built on one primitive: a metric evaluated under R **weightings** of the
same M predictions at once (``weights [R, M]``). A bootstrap resample of the N test stays is a
weighting by multinomial counts; a permutation of two models' predictions is a 0/1 weighting of
the 2N predictions of both (each stay contributes one of its two predictions to each permuted
model). So every metric is written once, vectorised over resamples or permutations, and equals
scikit-learn's on the unweighted predictions (tested, ties included).

Permutation test (benchmark_protocol.md, "Metrics"): H0 is that the two models' predictions
are exchangeable per stay; each permutation swaps a stay's two predictions (all outputs of the
stay together) with probability ½; the statistic is metric(A) − metric(B), one-sided:
``p = (1 + #{permuted ≥ observed}) / (1 + n_permutations)``; identical predictions give p = 1.

The reference "best unimodal" model is chosen on the **validation** split (the predictions
files hold it), per metric, and tested on the test split: choosing it on test, as the CareBench
paper does, would favour the reference. With several seeds, each model's probabilities are
averaged over seeds first (the seed-ensemble).

Bootstrap: the test stays resampled with replacement, the same resamples for every model of a
task and cohort (paired), percentile intervals; the difference of each multimodal model from the
reference gets an interval from the same resamples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from ehrcxr.evaluation.metrics import THRESHOLD
from ehrcxr.evaluation.runs import DIGITS
from ehrcxr.tasks import Task

# (labels [M] or [M, L], predictions [M, O], weights [R, M][, pair]) → per target [R, T]
TargetMetric = Callable[..., Any]
_CHUNK = 1e6  # weights per chunk of rows: ≈ 4 MB float32 arrays (measured fastest here)
# Permuted statistics are computed in float32: a permuted difference within this of the observed
# one counts as at least as large (identical predictions give p = 1).
TOLERANCE = 1e-6


def _blocks(sorted_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For scores in sorted order: (block id, block start, block end) of each element, a
    block being a run of tied scores (one threshold)."""
    new = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    block = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(sorted_scores)] - 1
    return block, starts[block], ends[block]


def weighted_auroc(
    y: np.ndarray, score: np.ndarray, w: np.ndarray, pair: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """AUROC under each weighting: y {0, 1} [M], score [M], w [R, M] → [R] (NaN without both
    classes). Mann–Whitney: Σ over positives of the weight of the negatives scored lower, ties
    counting half, over (weight of positives × weight of negatives).

    ``pair``: also the AUROC under the complementary weights 1 − w (a permutation's other model),
    from the same cumulative sums: (under w, under 1 − w).
    """
    order = np.argsort(score, kind="stable")
    y = np.asarray(y, dtype=bool)[order]
    _, start, end = _blocks(np.asarray(score)[order])
    w = w[:, order]
    before = np.maximum(start - 1, 0)

    def auroc(neg_cum: np.ndarray, pos_w: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
        below = np.where(start > 0, neg_cum[..., before], 0.0)
        tied = neg_cum[..., end] - below
        n_pos = pos_w.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (pos_w * (below + 0.5 * tied)).sum(axis=-1) / (n_pos * n_neg)
        return np.where((n_pos > 0) & (n_neg > 0), out, np.nan)

    neg = np.cumsum(w * ~y, axis=1)
    first = auroc(neg, w * y, neg[:, -1])
    if not pair:
        return first
    all_neg = np.cumsum(~y)
    return first, auroc(all_neg[None] - neg, (1 - w) * y, all_neg[-1] - neg[:, -1])


def weighted_auprc(
    y: np.ndarray, score: np.ndarray, w: np.ndarray, pair: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Average precision under each weighting, as scikit-learn defines it (tied scores form one
    threshold): Σ over positives of the precision at their threshold, over the positives' weight.
    y {0, 1} [M], score [M], w [R, M] → [R] (NaN without a positive); ``pair`` as for AUROC."""
    order = np.argsort(-np.asarray(score), kind="stable")
    y = np.asarray(y, dtype=bool)[order]
    _, _, end = _blocks(np.asarray(score)[order])
    w = w[:, order]

    def auprc(tp: np.ndarray, seen: np.ndarray, pos_w: np.ndarray) -> np.ndarray:
        n_pos = pos_w.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(seen > 0, tp / seen, 0.0)
            out = (pos_w * precision).sum(axis=-1) / n_pos
        return np.where(n_pos > 0, out, np.nan)

    pos_w = w * y
    tp = np.cumsum(pos_w, axis=1)[:, end]
    seen = np.cumsum(w, axis=1)[:, end]
    first = auprc(tp, seen, pos_w)
    if not pair:
        return first
    all_tp, all_seen = np.cumsum(y)[end], np.arange(1, len(y) + 1)[end]
    return first, auprc(all_tp[None] - tp, all_seen[None] - seen, y - pos_w)


def weighted_f1(
    y: np.ndarray, score: np.ndarray, w: np.ndarray, pair: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """F1 at threshold 0.5 under each weighting (0 when nothing is predicted or positive)."""
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(score) >= THRESHOLD
    cells = np.stack([y & pred, ~y & pred, y & ~pred], axis=1).astype(w.dtype)  # tp, fp, fn

    def f1(counts: np.ndarray) -> np.ndarray:
        tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
        denom = 2 * tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, 2 * tp / denom, 0.0)

    counts = w @ cells
    return (f1(counts), f1(cells.sum(axis=0)[None] - counts)) if pair else f1(counts)


def weighted_confusion(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Confusion matrices [R, K, K] (true × predicted = argmax) of class ids y [M] and class
    probabilities p [M, K]."""
    k = p.shape[1]
    cell = np.asarray(y, dtype=int) * k + np.asarray(p).argmax(axis=1)
    onehot = np.zeros((len(cell), k * k), dtype=w.dtype)
    onehot[np.arange(len(cell)), cell] = 1.0
    return (w @ onehot).reshape(-1, k, k)


def _accuracy(cm: np.ndarray) -> np.ndarray:
    return np.trace(cm, axis1=1, axis2=2) / cm.sum(axis=(1, 2))


def _macro_f1(cm: np.ndarray) -> np.ndarray:
    """Macro F1 over the classes present (true labels) in each weighting."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    true, predicted = cm.sum(axis=2), cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(true + predicted > 0, 2 * tp / (true + predicted), 0.0)
    present = true > 0
    return (f1 * present).sum(axis=1) / present.sum(axis=1)


def _kappa_quadratic(cm: np.ndarray) -> np.ndarray:
    k = cm.shape[1]
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    weight = (i - j) ** 2 / (k - 1) ** 2
    n = cm.sum(axis=(1, 2))
    expected = cm.sum(axis=2)[:, :, None] * cm.sum(axis=1)[:, None, :] / n[:, None, None]
    observed_cost = (weight * cm).sum(axis=(1, 2))
    expected_cost = (weight * expected).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected_cost > 0, 1 - observed_cost / expected_cost, np.nan)


_BINARY = {"auroc": weighted_auroc, "auprc": weighted_auprc, "f1": weighted_f1}
_MULTICLASS = {"accuracy": _accuracy, "macro_f1": _macro_f1, "kappa_quadratic": _kappa_quadratic}


def target_metric(task: Task, name: str) -> TargetMetric:
    """``name`` per target of ``task`` under weightings: one column per label (mortality: one,
    phenotypes: 25), or one for length of stay. Binary and multi-label tasks: auroc | auprc | f1;
    length of stay: accuracy | macro_f1 | kappa_quadratic. Called as ``metric(y, p, w)`` → [R, T],
    or ``metric(y, p, w, pair=True)`` → (under w, under 1 − w)."""
    if task.kind == "multiclass":
        fn = _MULTICLASS.get(name)
        if fn is None:
            raise ValueError(f"{task.name} supports {sorted(_MULTICLASS)}, not {name}")

        def multiclass(y: np.ndarray, p: np.ndarray, w: np.ndarray, pair: bool = False):
            y = y.reshape(len(y), -1)[:, 0]
            cm = weighted_confusion(y, p, w)
            if not pair:
                return fn(cm)[:, None]
            total = weighted_confusion(y, p, np.ones((1, len(y)), dtype=w.dtype))
            return fn(cm)[:, None], fn(total - cm)[:, None]

        return multiclass
    row = _BINARY.get(name)
    if row is None:
        raise ValueError(f"{task.name} supports {sorted(_BINARY)}, not {name}")

    def per_label(y: np.ndarray, p: np.ndarray, w: np.ndarray, pair: bool = False):
        y = y.reshape(len(y), -1)
        values = [row(y[:, j], p[:, j], w, pair) for j in range(y.shape[1])]
        if not pair:
            return np.stack(values, axis=1)
        return np.stack([v[0] for v in values], axis=1), np.stack([v[1] for v in values], axis=1)

    return per_label


def headline(values: np.ndarray) -> np.ndarray:
    """Per-target values [R, T] → the headline [R]: the macro mean over the targets defined in
    each weighting (a label with one class in a resample is left out, as in evaluation)."""
    defined = np.isfinite(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, values, 0.0).sum(axis=1) / defined.sum(axis=1)


def _rows_per_chunk(m: int) -> int:
    return max(1, int(_CHUNK // max(1, m)))


def paired_permutation_test(
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric: TargetMetric,
    n_permutations: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per target: (observed metric(A) − metric(B) [T], one-sided p that A is better [T]).

    y: [N] or [N, L] labels; pred_a, pred_b: [N, O] outputs of the two models on the same stays.
    """
    observed, permuted = _permuted_differences(y, pred_a, pred_b, metric, n_permutations, seed)
    return observed, _p_values(observed, permuted)


def _p_values(observed: np.ndarray, permuted: np.ndarray) -> np.ndarray:
    """One-sided p per column: (1 + #{permuted ≥ observed}) / (1 + n_permutations)."""
    at_least = (permuted >= observed[None] - TOLERANCE).sum(axis=0)
    return (1 + at_least) / (1 + len(permuted))


def _permuted_differences(
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric: TargetMetric,
    n_permutations: int,
    seed: int,
    macro: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(observed differences [T'], permuted differences [n_permutations, T']); T' = T, plus a
    last column with the macro difference when ``macro``."""
    if pred_a.shape != pred_b.shape:
        raise ValueError(f"prediction shapes differ: {pred_a.shape} vs {pred_b.shape}")
    n = len(pred_a)
    both_y = np.concatenate([y, y])
    both_p = np.concatenate([pred_a, pred_b])

    def differences(swap: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        # A' takes b_i where swapped, B' the rest: complementary 0/1 weights of the 2N outputs.
        wa = np.concatenate([~swap, swap], axis=1).astype(dtype)
        a, b = metric(both_y, both_p, wa, pair=True)
        d = a - b
        return np.concatenate([d, (headline(a) - headline(b))[:, None]], axis=1) if macro else d

    observed = differences(np.zeros((1, n), dtype=bool), np.float64)[0]  # exact: A and B
    rng = np.random.default_rng(seed)
    chunk = _rows_per_chunk(2 * n * max(1, pred_a.shape[1]))
    parts = []
    done = 0
    while done < n_permutations:
        r = min(chunk, n_permutations - done)
        parts.append(differences(rng.random((r, n)) < 0.5))
        done += r
    return observed, np.concatenate(parts)


def bootstrap_values(
    y: np.ndarray,
    predictions: dict[str, np.ndarray],
    metric: TargetMetric,
    n_resamples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Headline metric of every model under the same ``n_resamples`` resamples of the stays
    (paired): model → [n_resamples]."""
    n = len(y)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_resamples)
    counts = counts.astype(np.float32)
    chunk = _rows_per_chunk(n * 4)
    return {
        name: np.concatenate(
            [headline(metric(y, pred, counts[i : i + chunk])) for i in range(0, n_resamples, chunk)]
        )
        for name, pred in predictions.items()
    }


def interval(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """Percentile interval of the finite bootstrap values (None when there are none)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return None, None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return round(float(low), DIGITS), round(float(high), DIGITS)


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


def _ensembles(predictions: dict[str, pd.DataFrame], task: Task, split: str) -> tuple:
    ensembles = {name: seed_ensemble(frame, task, split) for name, frame in predictions.items()}
    reference_ids, labels, _ = next(iter(ensembles.values()))
    for name, (ids, _, _) in ensembles.items():
        if not np.array_equal(ids, reference_ids):
            raise ValueError(f"{name} was evaluated on other {split} stays than the others")
    return labels, {name: e[2] for name, e in ensembles.items()}


def _value(metric: TargetMetric, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-target values [T] of unweighted predictions."""
    return metric(y, p, np.ones((1, len(y))))[0]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What one task and cohort's tests need (see :func:`compare_metric`)."""

    task: Task
    multimodal: dict[str, bool]  # model name → reads both modalities
    n_permutations: int
    n_resamples: int
    confidence: float
    alpha: float
    seed: int


def load_comparison_data(
    predictions: dict[str, pd.DataFrame], task: Task, reference_split: str, test_split: str
) -> tuple[tuple[np.ndarray, dict[str, np.ndarray]], tuple[np.ndarray, dict[str, np.ndarray]]]:
    """((labels, seed-ensembles) on the reference split, the same on the test split)."""
    return _ensembles(predictions, task, reference_split), _ensembles(predictions, task, test_split)


def compare_metric(
    spec: Comparison,
    reference: tuple[np.ndarray, dict[str, np.ndarray]],
    test: tuple[np.ndarray, dict[str, np.ndarray]],
    name: str,
    per_label: bool,
) -> dict:
    """One metric of one task and cohort: the best unimodal model on the reference split, each
    multimodal model tested against it on the test split, every model's paired bootstrap
    interval, and with ``per_label`` (phenotypes) the same per label, the reference chosen per
    label. Returns ``{"test": {"best_unimodal", "best_unimodal_value" (test),
    "best_unimodal_reference_value", "models": {name: {"value", "difference", "difference_ci",
    "p_value", "significant"}}}, "bootstrap": {name: {"value", "ci"}}[, "per_label": {label:
    {"best_unimodal", "models": {name: {"value", "difference", "p_value", "significant"}}}}]}``.
    """
    ref_y, ref_p = reference
    y, p = test
    unimodal = [n for n in p if not spec.multimodal[n]]
    fused = [n for n in p if spec.multimodal[n]]
    if not unimodal:
        raise ValueError("no unimodal model to compare with")
    metric = target_metric(spec.task, name)
    boot = bootstrap_values(y, p, metric, spec.n_resamples, spec.seed)
    per_target = {m: _value(metric, y, p[m]) for m in p}
    test_value = {m: float(headline(v[None])[0]) for m, v in per_target.items()}
    ref_targets = {m: _value(metric, ref_y, ref_p[m]) for m in unimodal}
    best = max(unimodal, key=lambda m: np.nan_to_num(headline(ref_targets[m][None])[0], nan=-1))
    label_best = (
        [unimodal[i] for i in np.nan_to_num(np.stack(list(ref_targets.values())), nan=-1).argmax(0)]
        if per_label
        else []
    )
    models, labels = {}, {}
    for m in fused:
        observed, permuted = _permuted_differences(
            y, p[m], p[best], metric, spec.n_permutations, spec.seed, macro=True
        )
        pvals = _p_values(observed, permuted)
        models[m] = {
            "value": _round(test_value[m]),
            "difference": _round(observed[-1]),
            "difference_ci": list(interval(boot[m] - boot[best], spec.confidence)),
            "p_value": round(float(pvals[-1]), 6),
            "significant": bool(pvals[-1] < spec.alpha),
        }
        if per_label:
            labels[m] = _per_label_results(
                spec, metric, y, p, m, best, label_best, observed[:-1], pvals[:-1]
            )
    out: dict = {
        "test": {
            "best_unimodal": best,
            "best_unimodal_value": _round(test_value[best]),
            "best_unimodal_reference_value": _round(headline(ref_targets[best][None])[0]),
            "models": models,
        },
        "bootstrap": {
            m: {"value": _round(test_value[m]), "ci": list(interval(boot[m], spec.confidence))}
            for m in p
        },
    }
    if per_label:
        out["per_label"] = {
            label: {
                "best_unimodal": label_best[j],
                "models": {m: labels[m][j] for m in fused},
            }
            for j, label in enumerate(spec.task.labels)
        }
    return out


def _per_label_results(
    spec: Comparison,
    metric: TargetMetric,
    y: np.ndarray,
    p: dict[str, np.ndarray],
    model: str,
    best: str,
    label_best: list[str],
    observed: np.ndarray,
    pvals: np.ndarray,
) -> list[dict]:
    """Per label, ``model`` against that label's best unimodal model. Labels whose reference is
    the headline reference reuse the headline test's per-label columns (the same permutations);
    the others are tested in one more run against their own references."""
    own = [j for j, ref in enumerate(label_best) if ref != best]
    observed, pvals = observed.copy(), pvals.copy()
    if own:
        pairing = p[best].copy()  # each label's reference predictions in one [N, L] array
        for j in own:
            pairing[:, j] = p[label_best[j]][:, j]
        cols = np.array(own)
        o, pv = paired_permutation_test(
            y[:, cols], p[model][:, cols], pairing[:, cols], metric, spec.n_permutations, spec.seed
        )
        observed[cols], pvals[cols] = o, pv
    values = _value(metric, y, p[model])
    out = []
    for j in range(len(label_best)):
        defined = bool(np.isfinite(observed[j]))
        out.append(
            {
                "value": _round(values[j]),
                "difference": _round(observed[j]),
                "p_value": round(float(pvals[j]), 6) if defined else None,
                "significant": bool(defined and pvals[j] < spec.alpha),
            }
        )
    return out


def compare_with_best_unimodal(
    predictions: dict[str, pd.DataFrame],
    spec: Comparison,
    metrics: list[str],
    per_label_metrics: list[str],
    reference_split: str = "val",
    test_split: str = "test",
) -> dict:
    """Every metric of one task and cohort (:func:`compare_metric`), assembled: ``{"n_stays",
    "reference_split", "confidence", "metrics": {metric: test}, "bootstrap": {metric: …},
    "per_label": {metric: …}}``."""
    reference, test = load_comparison_data(predictions, spec.task, reference_split, test_split)
    parts = {
        name: compare_metric(
            spec,
            reference,
            test,
            name,
            spec.task.kind == "multilabel" and name in per_label_metrics,
        )
        for name in metrics
    }
    return assemble(parts, len(test[0]), reference_split, spec.confidence)


def assemble(parts: dict[str, dict], n_stays: int, reference_split: str, confidence: float) -> dict:
    """Per-metric results (:func:`compare_metric`) → one task and cohort's entry."""
    return {
        "n_stays": n_stays,
        "reference_split": reference_split,
        "confidence": confidence,
        "metrics": {name: part["test"] for name, part in parts.items()},
        "bootstrap": {name: part["bootstrap"] for name, part in parts.items()},
        "per_label": {
            name: part["per_label"] for name, part in parts.items() if "per_label" in part
        },
    }


def _round(value: float) -> float | None:
    return round(float(value), DIGITS) if np.isfinite(value) else None
