"""Evaluation protocol: fairness gaps, ECE, permutation tests and the report, on known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

from ehrcxr.cli import main
from ehrcxr.data.phenotypes import phenotype_columns
from ehrcxr.evaluation.fairness import expected_calibration_error, fairness_report
from ehrcxr.evaluation.report import average_ranks, run_id
from ehrcxr.evaluation.statistics import (
    auprc_rows,
    auroc_rows,
    compare_with_best_unimodal,
    paired_permutation_test,
    row_metric,
)
from ehrcxr.tasks import get_task

REPO = Path(__file__).resolve().parents[1]


# ---- vectorised metrics vs scikit-learn ---------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_row_metrics_agree_with_sklearn(ties: bool) -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    scores = rng.random((20, 300))
    if ties:  # coarse scores: many tied thresholds
        scores = np.round(scores * 5) / 5
    for row in range(scores.shape[0]):
        assert auroc_rows(y, scores)[row] == pytest.approx(roc_auc_score(y, scores[row]))
        assert auprc_rows(y, scores)[row] == pytest.approx(average_precision_score(y, scores[row]))


def test_row_metrics_undefined_without_both_classes() -> None:
    scores = np.random.default_rng(1).random((3, 10))
    assert np.isnan(auroc_rows(np.zeros(10), scores)).all()
    assert np.isnan(auprc_rows(np.zeros(10), scores)).all()


# ---- ECE and gaps on hand-computed examples -----------------------------------------------------


def test_ece_hand_computed() -> None:
    # Bins of width 0.1: {0.05, 0.05} → |0.05 − 0| ; {0.95, 0.95} → |0.95 − 0.5|; {1.0} → last bin.
    y = np.array([0, 0, 1, 0, 1])
    p = np.array([0.05, 0.05, 0.95, 0.95, 1.0])
    # bin 0: 2 stays, mean p 0.05, mean y 0 → 0.05 · 2/5; bin 9: 3 stays, mean p 0.9667, y 2/3.
    expected = 2 / 5 * 0.05 + 3 / 5 * abs((0.95 + 0.95 + 1.0) / 3 - 2 / 3)
    assert expected_calibration_error(y, p, 10) == pytest.approx(expected)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0]), 10) == 0.0


def _binary_run(
    groups: list[str], y: list[int], p: list[float]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    stays = pd.DataFrame({"stay_id": np.arange(len(y)), "sex": groups})
    pred = pd.DataFrame(
        {
            "stay_id": np.arange(len(y)),
            "split": "test",
            "seed": 1,
            "prob_mortality": p,
            "label_mortality": y,
        }
    )
    return pred, stays


def test_gaps_hand_computed() -> None:
    # Group F (10 stays): 4 positives, 3 caught (TPR 0.75); 6 negatives, 0 flagged (FPR 0).
    # Group M (10 stays): 4 positives, 1 caught (TPR 0.25); 6 negatives, 3 flagged (FPR 0.5).
    # Group X (5 stays, < 10): left out.
    f_y, f_p = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [0.9, 0.8, 0.7, 0.2, 0.1, 0.1, 0.2, 0.3, 0.1, 0.1]
    m_y, m_p = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [0.6, 0.4, 0.3, 0.2, 0.9, 0.8, 0.7, 0.1, 0.1, 0.1]
    x_y, x_p = [1, 0, 1, 0, 1], [0.0, 1.0, 0.0, 1.0, 0.0]
    pred, stays = _binary_run(["F"] * 10 + ["M"] * 10 + ["X"] * 5, f_y + m_y + x_y, f_p + m_p + x_p)
    report = fairness_report(pred, stays, get_task("mortality"), "test", ["sex"], 10, 10)["sex"]
    assert set(report["groups"]) == {"F", "M"}
    assert report["groups"]["F"]["tpr"] == pytest.approx(0.75)
    assert report["groups"]["M"]["fpr"] == pytest.approx(0.5)
    assert report["tpr_gap"] == pytest.approx(0.5)
    assert report["fpr_gap"] == pytest.approx(0.5)
    ap_f = average_precision_score(f_y, f_p)
    ap_m = average_precision_score(m_y, m_p)
    assert report["auprc_gap"] == pytest.approx(abs(ap_f - ap_m), abs=1e-4)
    ece_f = expected_calibration_error(np.array(f_y), np.array(f_p), 10)
    ece_m = expected_calibration_error(np.array(m_y), np.array(m_p), 10)
    assert report["ece_gap"] == pytest.approx(abs(ece_f - ece_m), abs=1e-4)


def test_gap_undefined_with_one_group() -> None:
    pred, stays = _binary_run(["F"] * 12, [1, 0] * 6, [0.7, 0.2] * 6)
    report = fairness_report(pred, stays, get_task("mortality"), "test", ["sex"], 10, 10)["sex"]
    assert report["tpr_gap"] is None and list(report["groups"]) == ["F"]


def test_phenotype_gaps_average_labels() -> None:
    # Two labels: label A has a TPR gap of 1 between the groups, label B none → mean gap 0.5.
    labels = phenotype_columns()
    n = 20
    group = ["a"] * 10 + ["b"] * 10
    frame = {"stay_id": np.arange(n), "split": "test", "seed": 0}
    for name in labels:
        frame[f"label_{name}"] = 0
        frame[f"prob_{name}"] = 0.1
    frame = pd.DataFrame(frame)
    frame.loc[[0, 1, 10, 11], f"label_{labels[0]}"] = 1
    frame.loc[[0, 1], f"prob_{labels[0]}"] = 0.9  # group a caught, group b missed
    frame.loc[[0, 1, 10, 11], f"label_{labels[1]}"] = 1
    frame.loc[[0, 1, 10, 11], f"prob_{labels[1]}"] = 0.9  # both caught
    stays = pd.DataFrame({"stay_id": np.arange(n), "g": group})
    report = fairness_report(frame, stays, get_task("phenotype"), "test", ["g"], 10, 10)["g"]
    # Labels without positives have no TPR: only the two labels above count.
    assert report["tpr_gap"] == pytest.approx(0.5)


# ---- permutation test ----------------------------------------------------------------------------


def test_permutation_identical_predictions_give_p_one() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((200, 1)) < 0.3).astype(int)
    p = rng.random((200, 1))
    diff, pval = paired_permutation_test(
        y, p, p.copy(), row_metric(get_task("mortality"), "auroc"), 2000, 0
    )
    assert diff == 0.0 and pval == 1.0


def test_permutation_clearly_better_model_is_significant() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((300, 1)) < 0.3).astype(int)
    good = np.clip(y * 0.5 + rng.random((300, 1)) * 0.6, 0, 1)
    noise = rng.random((300, 1))
    metric = row_metric(get_task("mortality"), "auprc")
    diff, pval = paired_permutation_test(y, good, noise, metric, 10000, 0)
    assert diff > 0.3 and pval < 0.01
    # One-sided: the reverse direction is not significant.
    _, reverse = paired_permutation_test(y, noise, good, metric, 2000, 0)
    assert reverse > 0.99


def test_compare_with_best_unimodal_picks_reference_and_flags() -> None:
    rng = np.random.default_rng(3)
    n = 300
    y = (rng.random(n) < 0.3).astype(int)

    def run(score: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "stay_id": np.arange(n),
                "split": "test",
                "seed": 0,
                "prob_mortality": score,
                "label_mortality": y,
            }
        )

    weak, medium = rng.random(n), np.clip(0.25 * y + rng.random(n) * 0.8, 0, 1)
    strong = np.clip(0.6 * y + rng.random(n) * 0.5, 0, 1)
    out = compare_with_best_unimodal(
        {"ehr": run(weak), "cxr": run(medium), "fusion": run(strong), "copy": run(medium)},
        {"ehr": False, "cxr": False, "fusion": True, "copy": True},
        get_task("mortality"),
        "test",
        ["auroc"],
        2000,
        0.05,
        0,
    )["auroc"]
    assert out["best_unimodal"] == "cxr"
    assert out["models"]["fusion"]["significant"]
    assert out["models"]["copy"]["p_value"] == 1.0


# ---- report from a fixture of metrics files ----------------------------------------------------


def test_average_rank() -> None:
    frame = pd.DataFrame({"a": [0.9, 0.5, 0.2], "b": [0.8, 0.6, 0.2]})
    ranks = average_ranks(frame)
    assert ranks["a"] == pytest.approx((1 + 2 + 1.5) / 3)
    assert ranks["b"] == pytest.approx((2 + 1 + 1.5) / 3)


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_report_renders_from_metrics_fixture(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["grid"] = {
        "models": ["lstm", "late_fusion"],
        "tasks": ["mortality", "phenotype", "los"],
        "cohorts": ["matched"],
    }
    params["robustness"].update({"models": ["lstm", "late_fusion"], "ratios": [0.0, 0.5]})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    labels = phenotype_columns()
    m = tmp_path / "metrics"
    gaps = {
        a: {"auprc_gap": 0.1, "tpr_gap": 0.2, "fpr_gap": None, "ece_gap": 0.05, "groups": {}}
        for a in ("race_group", "gender", "age_group")
    }
    for i, model in enumerate(params["grid"]["models"]):
        for task in params["grid"]["tasks"]:
            rid = run_id(model, task, "matched")
            head = {
                "auroc": 0.7 + 0.1 * i,
                "auprc": 0.3 + i * 0.01,
                "f1": 0.2,
                "accuracy": 0.4,
                "macro_f1": 0.3,
                "kappa_quadratic": 0.1,
                "n_seeds": 2,
                "auroc_std": 0.01,
            }
            _write(m / "benchmark" / f"{rid}.json", head)
            per_label = (
                {
                    n: {"auprc": 0.2 + 0.01 * j + 0.001 * i, "auroc": 0.6}
                    for j, n in enumerate(labels)
                }
                if task == "phenotype"
                else {}
            )
            _write(m / "per_label" / f"{rid}.json", per_label)
            _write(m / "fairness" / f"{rid}.json", gaps)
        for ratio in (0.0, 0.5):
            rid = run_id(model, "phenotype", ratio)
            _write(m / "robustness" / f"{rid}.json", {"auroc": 0.8 - ratio * i * 0.2})
            _write(
                m / "robustness" / "per_label" / f"{rid}.json",
                {n: {"auroc": 0.7, "auroc_std": 0.02} for n in labels},
            )
    stats = {
        "mortality": {
            "matched": {
                "auroc": {
                    "best_unimodal": "lstm",
                    "best_unimodal_value": 0.7,
                    "models": {
                        "late_fusion": {
                            "value": 0.8,
                            "difference": 0.1,
                            "p_value": 0.001,
                            "significant": True,
                        }
                    },
                }
            }
        }
    }
    _write(m / "statistics.json", stats)
    args = [
        "report",
        "--benchmark",
        str(m / "benchmark"),
        "--per-label",
        str(m / "per_label"),
        "--fairness",
        str(m / "fairness"),
        "--robustness",
        str(m / "robustness"),
        "--statistics",
        str(m / "statistics.json"),
        "--out",
        str(tmp_path / "report"),
        "--params",
        str(tmp_path / "params.yaml"),
    ]
    assert main(args) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    # Table 1 carries the significance markers of the statistics file.
    assert "0.800 ± 0.010*" in text and "0.700 ± 0.010†" in text
    # Per-phenotype table: short names, late_fusion ranks first on every label.
    assert "| Sepsis |" in text and "**1.00**" in text and "**2.00**" in text
    assert "| late_fusion | 0.800 | 0.700 |" in text.replace(" ± 0.000", "")
    assert "| late_fusion (EHR+CXR) |" in text and "| lstm (EHR) |" in text
    for png in ("robustness-phenotype.png", "fairness-mortality-matched.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"
    plot = pd.read_csv(tmp_path / "report" / "robustness-phenotype.csv")
    assert plot["late_fusion"].tolist() == pytest.approx([0.8, 0.7])
    fair = pd.read_csv(tmp_path / "report" / "fairness-los-matched.csv").set_index("model")
    assert fair.loc["lstm", "race_group/tpr"] == pytest.approx(0.2)
    # A missing metrics file is an error, not an empty table.
    (m / "fairness" / f"{run_id('lstm', 'los', 'matched')}.json").unlink()
    with pytest.raises(FileNotFoundError):
        main(args)
