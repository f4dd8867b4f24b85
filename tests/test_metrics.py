"""Metric functions against scikit-learn on random data and on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from ehrcxr.evaluation.metrics import (
    binary_metrics,
    multiclass_metrics,
    multilabel_metrics,
    selection_value,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_agree_with_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1)
    m = binary_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))


def test_binary_metrics_by_hand() -> None:
    m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    assert m["accuracy"] == 0.5 and m["recall"] == 0.5 and m["specificity"] == 0.5
    assert m["auroc"] == 0.75


def test_multilabel_macro_means_and_single_class_labels() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (200, 4))
    y[:, 3] = 0  # one label without positives: no AUROC/AUPRC for it
    p = rng.random((200, 4))
    macro, per = multilabel_metrics(y, p, ["a", "b", "c", "d"])
    expected = np.mean([skm.average_precision_score(y[:, j], p[:, j]) for j in range(3)])
    assert macro["macro_auprc"] == pytest.approx(expected)
    assert np.isnan(per["d"]["auroc"])
    assert selection_value("multilabel", y, p) == pytest.approx(expected)


def test_multiclass_metrics_agree_with_sklearn() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 7, 500)
    p = rng.dirichlet(np.ones(7), 500)
    p[np.arange(500), y] += 0.3
    p /= p.sum(axis=1, keepdims=True)
    m = multiclass_metrics(y, p)
    pred = p.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["kappa_quadratic"] == pytest.approx(
        skm.cohen_kappa_score(y, pred, weights="quadratic")
    )
    assert m["macro_precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert selection_value("multiclass", y, p) == pytest.approx(m["accuracy"])
