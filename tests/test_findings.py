"""The committed benchmark shows what the synthetic source planted (README, "Planted signal").

These tests read the metrics files that `dvc repro` wrote and that are committed with the code
(``metrics/``): a change to the default profile, the models, the training core or the evaluation
that loses a finding fails CI, as does committing metrics from another profile. The planted
answers are those of ``ground_truth.json["design"]``:

- the image-only phenotype (pleurisy/pneumothorax: effusion or pneumothorax on the film): the
  image model clearly above chance and above every EHR model;
- the EHR-only phenotype (dysrhythmias: AF in the rhythm charting): the reverse;
- the phenotype planted to need both (CHF: cardiomegaly on the film **and** fluid overload in the
  EHR): at least one fusion model significantly better than that phenotype's best unimodal model
  (paired permutation test, reference chosen on validation);
- a fusion model's robustness curve falls on an image-dependent phenotype as films are removed;
- the planted under-expression in one race group: the race TPR gap is defined and larger than the
  sex gap.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ehrcxr.models import model_modalities

REPO = Path(__file__).resolve().parents[1]
METRICS = REPO / "metrics"
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
IMAGE_ONLY, EHR_ONLY, NEEDS_BOTH = "pleurisy_pneumothorax", "dysrhythmias", "chf"
COHORT = "matched"  # every model sees both modalities on each of these stays


def _json(path: Path) -> dict:
    assert path.is_file(), f"{path} is not committed: run `dvc repro` and commit metrics/"
    return json.loads(path.read_text())


def _per_label(model: str, cohort: str = COHORT) -> dict:
    return _json(METRICS / "per_label" / f"{model}-phenotype-{cohort}.json")


def _models(modalities: tuple[str, ...]) -> list[str]:
    return [m for m in PARAMS["grid"]["models"] if model_modalities(m) == modalities]


def test_the_committed_metrics_are_the_default_profiles() -> None:
    assert PARAMS["profile"] == "default"
    cohort = _json(METRICS / "cohort.json")
    stays = _json(METRICS / "benchmark" / f"lstm-phenotype-{COHORT}.json")["n_stays"]
    assert stays == cohort["matched_splits"]["test"], "metrics from another source or profile"


def test_image_only_phenotype_the_image_model_beats_chance_and_the_ehr_models() -> None:
    image = {m: _per_label(m)[IMAGE_ONLY]["auroc"] for m in _models(("cxr",))}
    ehr = {m: _per_label(m)[IMAGE_ONLY]["auroc"] for m in _models(("ehr",))}
    assert image and ehr
    best = max(image.values())
    assert best >= 0.65, image
    assert best >= max(ehr.values()) + 0.1, (image, ehr)


def test_ehr_only_phenotype_the_ehr_models_beat_the_image_model() -> None:
    image = {m: _per_label(m)[EHR_ONLY]["auroc"] for m in _models(("cxr",))}
    ehr = {m: _per_label(m)[EHR_ONLY]["auroc"] for m in _models(("ehr",))}
    best = max(ehr.values())
    assert best >= 0.75, ehr
    assert best >= max(image.values()) + 0.15, (image, ehr)


def test_the_phenotype_that_needs_both_a_fusion_model_is_significantly_better() -> None:
    stats = _json(METRICS / "statistics.json")["phenotype"][COHORT]
    assert stats["reference_split"] == "val"
    label = stats["per_label"]["auprc"][NEEDS_BOTH]
    assert model_modalities(label["best_unimodal"]) != ("ehr", "cxr")
    winners = [m for m, r in label["models"].items() if r["significant"]]
    assert winners, label
    for m in winners:
        assert model_modalities(m) == ("ehr", "cxr") and label["models"][m]["difference"] > 0


@pytest.mark.parametrize("phenotype", [IMAGE_ONLY, NEEDS_BOTH])
def test_a_fusion_models_robustness_curve_falls_as_films_are_removed(phenotype: str) -> None:
    sweep = PARAMS["robustness"]
    assert sweep["cohort"] == COHORT and "phenotype" in sweep["tasks"]
    highest = max(sweep["ratios"])
    falls = {}
    for model in sweep["models"]:
        if model_modalities(model) != ("ehr", "cxr"):
            continue
        start = _per_label(model)[phenotype]["auroc"]  # r = 0: the grid's run
        end = _json(METRICS / "robustness" / "per_label" / f"{model}-phenotype-{highest}.json")
        falls[model] = (start, end[phenotype]["auroc"])
    assert any(start >= 0.65 and end <= start - 0.1 for start, end in falls.values()), falls


def test_the_planted_race_sensitivity_gap_is_defined_and_larger_than_the_sex_gap() -> None:
    """The under-expressed group's positives look healthy in both modalities, so every model
    that learned the EHR-driven labels misses more of them: on the base cohort (largest test
    split), the race TPR gap of the EHR models exceeds their sex TPR gap."""
    for model in _models(("ehr",)):
        fairness = _json(METRICS / "fairness" / f"{model}-phenotype-base.json")
        race, sex = fairness["race_group"]["tpr_gap"], fairness["gender"]["tpr_gap"]
        assert race is not None and sex is not None, model
        assert fairness["race_group"]["n_groups_included"] >= 2
        assert race > sex, (model, race, sex)
