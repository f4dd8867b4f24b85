"""Evaluation protocol: fairness gaps, ECE, permutation tests and the report, on known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import average_precision_score, cohen_kappa_score, f1_score, roc_auc_score

from ehrcxr.cli import main
from ehrcxr.data.phenotypes import phenotype_columns
from ehrcxr.evaluation.fairness import expected_calibration_error, fairness_report
from ehrcxr.evaluation.report import average_ranks, run_id
from ehrcxr.evaluation.statistics import (
    Comparison,
    compare_with_best_unimodal,
    paired_permutation_test,
    target_metric,
    weighted_auprc,
    weighted_auroc,
    weighted_f1,
)
from ehrcxr.tasks import get_task

REPO = Path(__file__).resolve().parents[1]


# ---- weighted metrics (bootstrap counts, permutation memberships) vs scikit-learn --------------

SKLEARN = {
    weighted_auroc: roc_auc_score,
    weighted_auprc: average_precision_score,
    weighted_f1: lambda y, s: f1_score(y, s >= 0.5),
}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fn", list(SKLEARN), ids=lambda f: f.__name__)
def test_weighted_metrics_agree_with_sklearn_on_repeated_stays(fn, ties: bool) -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    scores = rng.random(300)
    if ties:  # coarse scores: many tied thresholds
        scores = np.round(scores * 5) / 5
    counts = rng.integers(0, 4, (6, 300)).astype(float)  # a bootstrap resample is such a count
    values = fn(y, scores, counts)
    for r in range(len(counts)):
        rows = np.repeat(np.arange(300), counts[r].astype(int))
        assert values[r] == pytest.approx(SKLEARN[fn](y[rows], scores[rows]), abs=1e-9)
    # The complementary weights (a permutation's other model) from the same pass.
    member = (rng.random((4, 300)) < 0.5).astype(np.float32)
    first, second = fn(y, scores, member, pair=True)
    for r in range(len(member)):
        inside, outside = member[r] > 0, member[r] == 0
        assert first[r] == pytest.approx(SKLEARN[fn](y[inside], scores[inside]), abs=1e-6)
        assert second[r] == pytest.approx(SKLEARN[fn](y[outside], scores[outside]), abs=1e-6)


def test_multiclass_metrics_agree_with_sklearn() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 7, 400)
    p = rng.random((400, 7)) + 0.8 * np.eye(7)[y]
    p /= p.sum(axis=1, keepdims=True)
    task, w = get_task("los"), np.ones((1, 400))
    pred = p.argmax(axis=1)
    expected = {
        "accuracy": (pred == y).mean(),
        "macro_f1": f1_score(y, pred, average="macro", labels=np.unique(y)),
        "kappa_quadratic": cohen_kappa_score(y, pred, weights="quadratic"),
    }
    for name, value in expected.items():
        assert target_metric(task, name)(y[:, None], p, w)[0, 0] == pytest.approx(value)


def test_weighted_metrics_undefined_without_both_classes() -> None:
    scores = np.random.default_rng(1).random(10)
    assert np.isnan(weighted_auroc(np.zeros(10), scores, np.ones((3, 10)))).all()
    assert np.isnan(weighted_auprc(np.zeros(10), scores, np.ones((3, 10)))).all()


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
    assert {g for g, v in report["groups"].items() if v["included"]} == {"F", "M"}
    assert report["groups"]["X"] == {"n": 5, "included": False} | dict.fromkeys(
        ("auprc", "tpr", "fpr", "ece")
    )
    assert report["n_groups_included"] == 2 and report["min_group_size"] == 10
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


# ---- permutation test, bootstrap, reference on validation ----------------------------------------


def test_permutation_identical_predictions_give_p_one() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((200, 1)) < 0.3).astype(int)
    p = rng.random((200, 1))
    for name in ("auroc", "auprc", "f1"):
        metric = target_metric(get_task("mortality"), name)
        diff, pval = paired_permutation_test(y, p, p.copy(), metric, 2000, 0)
        assert diff[0] == 0.0 and pval[0] == 1.0


def test_permutation_clearly_better_model_is_significant() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((300, 1)) < 0.3).astype(int)
    good = np.clip(y * 0.5 + rng.random((300, 1)) * 0.6, 0, 1)
    noise = rng.random((300, 1))
    metric = target_metric(get_task("mortality"), "auprc")
    diff, pval = paired_permutation_test(y, good, noise, metric, 10000, 0)
    assert diff[0] == pytest.approx(
        average_precision_score(y[:, 0], good[:, 0]) - average_precision_score(y[:, 0], noise[:, 0])
    )
    assert diff[0] > 0.3 and pval[0] < 0.01
    # One-sided: the reverse direction is not significant.
    _, reverse = paired_permutation_test(y, noise, good, metric, 2000, 0)
    assert reverse[0] > 0.99


def _frame(task_name: str, y: np.ndarray, scores: np.ndarray, split: np.ndarray) -> pd.DataFrame:
    task = get_task(task_name)
    y, scores = y.reshape(len(y), -1), scores.reshape(len(scores), -1)
    return pd.DataFrame(
        {"stay_id": np.arange(len(y)), "split": split, "seed": 0}
        | dict(zip(task.prob_columns, scores.T, strict=True))
        | dict(zip(task.label_columns, y.T, strict=True))
    )


def _spec(task_name: str, multimodal: dict[str, bool], n_permutations: int = 2000) -> Comparison:
    return Comparison(get_task(task_name), multimodal, n_permutations, 500, 0.95, 0.05, 0)


def test_the_reference_is_chosen_on_validation_and_tested_on_test() -> None:
    rng = np.random.default_rng(3)
    n = 600
    y = (rng.random(n) < 0.3).astype(int)
    split = np.where(np.arange(n) < 300, "val", "test")
    val = split == "val"
    signal = lambda strength: np.clip(strength * y + rng.random(n) * 0.8, 0, 1)  # noqa: E731
    # "cxr" is the better unimodal model on validation, "ehr" on test: the reference is "cxr".
    ehr = np.where(val, signal(0.1), signal(0.5))
    cxr = np.where(val, signal(0.5), signal(0.1))
    strong = signal(0.8)
    runs = {m: _frame("mortality", y, s, split) for m, s in [("ehr", ehr), ("cxr", cxr)]}
    runs |= {"fusion": _frame("mortality", y, strong, split), "copy": runs["cxr"]}
    spec = _spec("mortality", {"ehr": False, "cxr": False, "fusion": True, "copy": True})
    out = compare_with_best_unimodal(runs, spec, ["auroc", "f1"], [])
    test = out["metrics"]["auroc"]
    assert out["n_stays"] == 300 and out["reference_split"] == "val"
    assert test["best_unimodal"] == "cxr"
    assert test["best_unimodal_value"] == pytest.approx(roc_auc_score(y[~val], cxr[~val]), abs=1e-4)
    assert test["models"]["fusion"]["significant"]
    assert test["models"]["copy"]["p_value"] == 1.0
    low, high = test["models"]["fusion"]["difference_ci"]
    assert 0 < low <= test["models"]["fusion"]["difference"] <= high
    boot = out["bootstrap"]["auroc"]["fusion"]
    assert boot["ci"][0] <= boot["value"] <= boot["ci"][1]
    assert boot["value"] == pytest.approx(roc_auc_score(y[~val], strong[~val]), abs=1e-4)
    assert out["bootstrap"]["auroc"]["copy"] == out["bootstrap"]["auroc"]["cxr"]  # paired
    # On test, where "ehr" is better, the same data with the reference chosen on test flips it.
    on_test = compare_with_best_unimodal(runs, spec, ["auroc"], [], reference_split="test")
    assert on_test["metrics"]["auroc"]["best_unimodal"] == "ehr"


def test_per_label_tests_choose_each_labels_reference() -> None:
    task = get_task("phenotype")
    rng = np.random.default_rng(4)
    n, labels = 400, len(task.labels)
    y = (rng.random((n, labels)) < 0.3).astype(int)
    split = np.where(np.arange(n) % 2 == 0, "val", "test")
    noise = rng.random((n, labels))
    ehr, cxr = noise.copy(), noise.copy()
    ehr[:, 0] = np.clip(0.6 * y[:, 0] + noise[:, 0] * 0.5, 0, 1)  # label 0: the EHR sees it
    cxr[:, 1] = np.clip(0.6 * y[:, 1] + noise[:, 1] * 0.5, 0, 1)  # label 1: the film does
    both = np.clip(0.6 * y + rng.random((n, labels)) * 0.5, 0, 1)  # fusion sees every label
    runs = {
        "ehr": _frame("phenotype", y, ehr, split),
        "cxr": _frame("phenotype", y, cxr, split),
        "fusion": _frame("phenotype", y, both, split),
    }
    spec = _spec("phenotype", {"ehr": False, "cxr": False, "fusion": True}, 500)
    out = compare_with_best_unimodal(runs, spec, ["auprc"], ["auprc"])["per_label"]["auprc"]
    first, second = task.labels[0], task.labels[1]
    assert out[first]["best_unimodal"] == "ehr" and out[second]["best_unimodal"] == "cxr"
    test = split == "test"
    expected = average_precision_score(y[test, 1], both[test, 1]) - average_precision_score(
        y[test, 1], cxr[test, 1]
    )
    assert out[second]["models"]["fusion"]["difference"] == pytest.approx(expected, abs=1e-4)
    assert sum(v["models"]["fusion"]["significant"] for v in out.values()) >= labels - 3


# ---- report from a fixture of metrics files ----------------------------------------------------


def test_average_rank() -> None:
    frame = pd.DataFrame({"a": [0.9, 0.5, 0.2], "b": [0.8, 0.6, 0.2]})
    ranks = average_ranks(frame)
    assert ranks["a"] == pytest.approx((1 + 2 + 1.5) / 3)
    assert ranks["b"] == pytest.approx((2 + 1 + 1.5) / 3)


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_report_renders_from_metrics_fixture(tmp_path: Path, n_seeds: int) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["grid"] = {
        "models": ["lstm", "late_fusion"],
        "tasks": ["mortality", "phenotype", "los"],
        "cohorts": ["matched"],
    }
    params["robustness"].update(
        {"models": ["lstm", "late_fusion"], "ratios": [0.5], "cohort": "matched"}
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    labels = phenotype_columns()
    m = tmp_path / "metrics"
    groups = {
        "A": {"n": 30, "included": True, "tpr": 0.5},
        "B": {"n": 4, "included": False, "tpr": None},
    }
    gaps = {
        a: {
            "auprc_gap": 0.1,
            "tpr_gap": 0.2,
            "fpr_gap": None,
            "ece_gap": 0.05,
            "min_group_size": 10,
            "n_groups_included": 2,
            "groups": groups,
        }
        for a in ("race_group", "gender")
    }
    gaps["age_group"] = dict(gaps["gender"], tpr_gap=None, n_groups_included=1)
    for i, model in enumerate(params["grid"]["models"]):
        for task in params["grid"]["tasks"]:
            rid = run_id(model, task, "matched")
            head = {
                "auroc": 0.7 + 0.1 * i,
                "auprc": 0.3 + i * 0.01,
                "f1": 0.2 * i,
                "ece": 0.05,
                "accuracy": 0.4,
                "macro_f1": 0.3,
                "kappa_quadratic": None,  # undefined: shown as n/a, never 0
                "n_seeds": n_seeds,
                "n_stays": 200,
                "n_positive": 25,
                "n_predicted_positive": 7 * i,  # lstm never crosses 0.5
                "labels_never_predicted_positive": 3,
                "class_counts": {str(k): 200 // 7 for k in range(7)},
            }
            if n_seeds > 1:  # evaluate writes <metric>_std with several seeds
                head |= {"auroc_std": 0.02, "auprc_std": 0.01, "f1_std": 0.03, "ece_std": 0.004}
            _write(m / "benchmark" / f"{rid}.json", head)
            per_label = (
                {
                    n: {
                        "auprc": 0.2 + 0.01 * j + 0.001 * i,
                        "auroc": 0.6 + 0.1 * i,
                        "n_positive": 20 + j,
                    }
                    for j, n in enumerate(labels)
                }
                if task == "phenotype"
                else {}
            )
            _write(m / "per_label" / f"{rid}.json", per_label)
            _write(m / "fairness" / f"{rid}.json", gaps)
        rid = run_id(model, "phenotype", 0.5)
        spread = {"auroc_std": 0.03} if n_seeds > 1 else {}
        _write(m / "robustness" / f"{rid}.json", {"auroc": 0.8 - 0.5 * i * 0.2} | spread)
        _write(
            m / "robustness" / "per_label" / f"{rid}.json",
            {n: {"auroc": 0.7} for n in labels},
        )
    test = {
        "best_unimodal": "lstm",
        "best_unimodal_value": 0.7,
        "best_unimodal_reference_value": 0.72,
        "models": {
            "late_fusion": {
                "value": 0.8,
                "difference": 0.1,
                "difference_ci": [0.03, 0.17],
                "p_value": 0.001,
                "significant": True,
            }
        },
    }
    boot = {
        "lstm": {"value": 0.7, "ci": [0.65, 0.75]},
        "late_fusion": {"value": 0.8, "ci": [0.75, 0.85]},
    }
    per_label_tests = {
        labels[0]: {
            "best_unimodal": "lstm",
            "models": {"late_fusion": {"significant": True, "p_value": 0.01}},
        }
    }
    stats = {
        "mortality": {
            "matched": {
                "n_stays": 200,
                "reference_split": "val",
                "confidence": 0.95,
                "metrics": {"auroc": test},
                "bootstrap": {"auroc": boot},
                "per_label": {},
            }
        },
        "phenotype": {
            "matched": {
                "n_stays": 200,
                "reference_split": "val",
                "confidence": 0.95,
                "metrics": {},
                "bootstrap": {},
                "per_label": {"auprc": per_label_tests},
            }
        },
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
    curves = pd.read_csv(tmp_path / "report" / "robustness-phenotype.csv")
    if n_seeds == 1:
        # Table 1: intervals and significance markers of the statistics file; no "±".
        assert "0.800 (0.750–0.850)*" in text and "0.700 (0.650–0.750)†" in text
        assert "1 seed per run" in text and " ± " not in text.split("1 seed per run")[1]
        assert "| late_fusion (EHR+CXR) | 0.800 | 0.700 |" in text  # robustness, r = 0 and 0.5
        assert list(curves.columns) == ["missing_ratio", "lstm", "late_fusion"]
    else:
        # Several seeds (the paper profile's three): mean ± std over seeds everywhere, and the
        # robustness figure's band (its plot data) is that std.
        assert "3 seeds per run: values are means, ± the standard deviation over seeds" in text
        assert "0.800 ± 0.020 (0.750–0.850)*" in text and "| 0.310 ± 0.010 |" in text
        assert "| late_fusion (EHR+CXR) | 0.800 ± 0.020 | 0.700 ± 0.030 |" in text
        assert list(curves["late_fusion_std"]) == [0.02, 0.03]
    assert "chosen on the **val** split" in text
    # Test-set size and prevalence; the threshold mark where a model never crosses 0.5.
    assert "matched: n = 200, deaths 12.5 % (25/200)" in text
    never = "0.000‡" if n_seeds == 1 else "0.000 ± 0.030‡"
    assert never in text and "no test prediction reaches 0.5" in text and "lstm matched" in text
    assert "n/a (one class in the test split)" in text  # kappa undefined, not 0
    assert "total ICU stay" in text  # the LoS label's definition
    # Per-phenotype table: short names, prevalence, per-label markers, late_fusion ranks first.
    assert "| Sepsis | 10.0 % (20/200) | 0.200† | 0.201* |" in text
    assert "**1.00**" in text and "**2.00**" in text
    assert "| late_fusion (EHR+CXR) | complete-modality |" in text
    assert "| lstm (EHR) | unimodal |" in text
    # Robustness: r = 0 is the grid's matched run (auroc 0.7 / 0.8), then the sweep's stage.
    assert "nested" in text and "train, val, test" in text
    # Fairness: undefined gaps with their reasons; group sizes, small groups marked.
    assert "n/a (defined in < 2 groups)" in text and "n/a (< 2 groups of ≥ 10 stays)" in text
    assert "A 30, B 4 (left out: < 10)" in text
    for png in ("robustness-phenotype.png", "fairness-mortality-matched.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"
    plot = pd.read_csv(tmp_path / "report" / "robustness-phenotype.csv")
    assert plot["missing_ratio"].tolist() == [0.0, 0.5]
    assert plot["late_fusion"].tolist() == pytest.approx([0.8, 0.7])
    fair = pd.read_csv(tmp_path / "report" / "fairness-los-matched.csv").set_index("model")
    assert fair.loc["lstm", "race_group/tpr"] == pytest.approx(0.2)
    assert np.isnan(fair.loc["lstm", "race_group/fpr"])  # undefined stays undefined in the data
    # A missing metrics file is an error, not an empty table.
    (m / "fairness" / f"{run_id('lstm', 'los', 'matched')}.json").unlink()
    assert main(args) == 2  # one line naming the file (src/ehrcxr/cli.py), no table written
