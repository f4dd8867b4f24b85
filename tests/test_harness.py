"""Learning, not only running: every registered model learns what its modalities can see.

On the planted source (``planted_data``: 8,000 synthetic patients), each registered model is
trained once on phenotyping (matched cohort) through ``ehrcxr train`` and scored on the test
split with three planted phenotypes as the oracle:

- image-only: pleurisy/pneumothorax (effusion or pneumothorax on the film);
- EHR-only: cardiac dysrhythmias (atrial fibrillation in the rhythm charting);
- needs both: CHF (cardiomegaly on the film **and** fluid overload in the EHR).

A model that reads a modality beats chance clearly on the phenotype planted in it; a unimodal
model stays near chance on the phenotype its modality cannot see; a multimodal model is not worse
than its best unimodal baseline on CHF. Parametrised over the registry, so a new model is covered
by being registered. Marked ``slow``; part of ``make test``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from ehrcxr.cli import main
from ehrcxr.models import list_models, model_modalities

REPO = Path(__file__).resolve().parents[1]
SEED = 11
IMAGE_ONLY, EHR_ONLY, NEEDS_BOTH = "pleurisy_pneumothorax", "dysrhythmias", "chf"
CLEARLY_ABOVE_CHANCE = 0.65
NEAR_CHANCE = 0.62
NOT_WORSE = 0.05  # AUROC tolerance of "not worse than the best unimodal baseline" (≈ 1 s.e.)
UNIMODAL = ("lstm", "transformer", "resnet")
# What a run cost, per model (seconds), for the closing note: printed with -s.
COST: dict[str, float] = {}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness(planted_data: dict[str, Path]) -> dict:
    """Harness params: the committed default profile, trained longer (CI-sized)."""
    root = planted_data["root"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(
        {"max_epochs": 12, "min_epochs": 4, "patience": 6, "batch_size": 32, "lr": 0.003}
    )
    params["train"]["seeds"] = [SEED]
    params["wandb"].update({"mode": "disabled", "dir": str(root)})
    path = root / "harness-params.yaml"
    path.write_text(yaml.safe_dump(params))
    return {"data": planted_data, "params": path, "runs": {}}


def _scores(harness: dict, model: str) -> dict[str, float]:
    """Test-split AUROC of the three planted phenotypes for ``model`` (trained once)."""
    runs = harness["runs"]
    if model not in runs:
        data, root = harness["data"], harness["data"]["root"]
        out = root / "harness" / model
        start = time.perf_counter()
        args = [
            "train", "--model", model, "--task", "phenotype", "--cohort", "matched",
            "--extract", str(data["extract"]), "--features", str(data["features"]),
            "--images", str(data["images"]), "--out", str(out),
            "--predictions", str(out.with_suffix(".parquet")), "--params", str(harness["params"]),
        ]  # fmt: skip
        assert main(args) == 0
        COST[model] = round(time.perf_counter() - start, 1)
        pred = pd.read_parquet(out.with_suffix(".parquet"))
        test = pred[pred["split"] == "test"]
        runs[model] = {
            label: float(roc_auc_score(test[f"label_{label}"], test[f"prob_{label}"]))
            for label in (IMAGE_ONLY, EHR_ONLY, NEEDS_BOTH)
        }
        print(f"harness {model}: {runs[model]} ({COST[model]} s)")
    return runs[model]


@pytest.mark.parametrize("model", list_models())
def test_model_learns_what_its_modalities_see(harness: dict, model: str) -> None:
    scores = _scores(harness, model)
    modalities = model_modalities(model)
    if "cxr" in modalities:
        assert scores[IMAGE_ONLY] > CLEARLY_ABOVE_CHANCE, (model, scores)
    else:
        assert scores[IMAGE_ONLY] < NEAR_CHANCE, (model, scores)
    if "ehr" in modalities:
        assert scores[EHR_ONLY] > CLEARLY_ABOVE_CHANCE, (model, scores)
    else:
        assert scores[EHR_ONLY] < NEAR_CHANCE, (model, scores)


@pytest.mark.parametrize("model", [m for m in list_models() if len(model_modalities(m)) > 1])
def test_fusion_is_not_worse_than_its_best_unimodal_baseline(harness: dict, model: str) -> None:
    best = max(_scores(harness, m)[NEEDS_BOTH] for m in UNIMODAL)
    assert _scores(harness, model)[NEEDS_BOTH] >= best - NOT_WORSE, (model, best)
