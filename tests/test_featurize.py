"""The EHR tensor and the image cache: imputation, masks, train-only statistics, transforms."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ehrcxr.data import features
from ehrcxr.data.image_cache import build_cache, transform

NAN = np.nan


def _hourly(rows: dict[int, dict[int, dict[str, float]]], names: list[str]) -> pd.DataFrame:
    out = []
    for stay, hours in rows.items():
        for hour, values in hours.items():
            out.append({"stay_id": stay, "hour": hour, **{n: values.get(n, NAN) for n in names}})
    return pd.DataFrame(out, columns=["stay_id", "hour", *names])


def test_forward_fill_never_looks_ahead() -> None:
    x = np.array([[[NAN], [NAN], [3.0], [NAN], [5.0], [NAN]]])
    got = features.forward_fill(x)[0, :, 0]
    assert np.isnan(got[:2]).all()
    assert got[2:].tolist() == [3.0, 3.0, 5.0, 5.0]


def test_imputation_masks_and_training_statistics() -> None:
    names = ["hr", "rare", "af"]
    # Stays 1, 2 train; stay 3 test with extreme values that must not move the statistics.
    rows = {
        1: {0: {"hr": 60.0}, 2: {"hr": 80.0, "af": 1.0}},
        2: {1: {"hr": 100.0}, 3: {"hr": 120.0, "rare": 7.0}},
        3: {0: {"hr": 1000.0}, 1: {"rare": 9.0}},
    }
    fs = features.build(
        _hourly(rows, names),
        np.array([1, 2, 3]),
        np.array([True, True, False]),
        names,
        ["af"],
        hours=4,
        max_missing_fraction=0.9,
    )
    # rare: missing in 7 of 8 training stay-hours (0.875 ≤ 0.9): kept; its mask exists.
    assert fs.value_names == ["hr", "rare", "af"] and fs.mask_names == ["hr_mask", "rare_mask"]
    assert fs.tensor.shape == (3, 4, 5)
    assert fs.median["hr"] == 90.0  # median of 60, 80, 100, 120: the test stay's 1000 is ignored
    assert fs.iqr["hr"] == 30.0  # linear quartiles: 105 - 75
    hr = fs.tensor[:, :, 0] * 30 + 90
    assert np.allclose(hr[0], [60, 60, 80, 80])  # stay 1: forward fill
    assert np.allclose(hr[1], [90, 100, 100, 120])  # stay 2: hour 0 before any value → median
    assert np.allclose(hr[2], [1000, 1000, 1000, 1000])
    assert fs.tensor[:, :, 3].tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 0]]  # hr mask
    assert fs.tensor[0, :, 2].tolist() == [0, 0, 1, 0]  # indicator: 0 when absent, unscaled
    assert fs.iqr["rare"] == 0.0 and fs.scale["rare"] == 1.0  # one training value: scale 1
    assert fs.scale["hr"] == 30.0  # the IQR, larger than the winsorised σ (22.4)


def test_a_nearly_constant_feature_is_not_blown_up() -> None:
    """MIMIC's uo_tm_12hr is 12 in most hours (IQR 0.01): IQR scaling alone gives −1,200."""
    names = ["tm"]
    values = [12.0] * 80 + [11.99] * 10 + [0.0] * 5 + [15.0] * 5
    rows = {1: {h: {"tm": v} for h, v in enumerate(values)}}
    fs = features.build(_hourly(rows, names), np.array([1]), np.array([True]), names, [], 100, 0.9)
    assert fs.iqr["tm"] == pytest.approx(0.0) or fs.iqr["tm"] < 0.02
    assert fs.scale["tm"] > 1.0  # the winsorised σ
    assert np.abs(fs.tensor[0, :, 0]).max() < 10


def test_features_missing_too_often_are_dropped() -> None:
    names = ["hr", "rare"]
    rows = {1: {h: {"hr": 70.0 + h} for h in range(10)} | {0: {"hr": 70.0, "rare": 1.0}}}
    fs = features.build(_hourly(rows, names), np.array([1]), np.array([True]), names, [], 10, 0.8)
    assert fs.dropped == ["rare"] and fs.value_names == ["hr"] and fs.tensor.shape == (1, 10, 2)


def test_featurize_stage_on_the_small_source(tmp_path: Path, small_source: Path) -> None:
    env_params = Path(__file__).resolve().parents[1] / "params.yaml"
    run = [sys.executable, "-m", "ehrcxr.cli"]
    subprocess.run(
        [
            *run,
            "extract",
            "--synthetic",
            str(small_source),
            "--out",
            str(tmp_path / "x"),
            "--params",
            str(env_params),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run,
            "featurize",
            "--extract",
            str(tmp_path / "x"),
            "--out",
            str(tmp_path / "f"),
            "--params",
            str(env_params),
        ],
        check=True,
        capture_output=True,
    )
    tensor = np.load(tmp_path / "f" / "ehr.npy")
    meta = json.loads((tmp_path / "f" / "features.json").read_text())
    stays = pd.read_csv(tmp_path / "f" / "stays.csv")
    cohort = pd.read_parquet(tmp_path / "x" / "cohort.parquet")
    assert tensor.dtype == np.float32 and tensor.shape[:2] == (len(cohort), 48)
    assert tensor.shape[2] == len(meta["value_names"]) + len(meta["mask_names"])
    assert len(meta["value_names"]) + len(meta["dropped"]) == 27
    assert stays["stay_id"].tolist() == cohort["stay_id"].tolist()
    assert np.isfinite(tensor).all()
    masks = tensor[:, :, len(meta["value_names"]) :]
    assert set(np.unique(masks)) <= {0.0, 1.0}
    # Scaled with training statistics: training values are centred near 0.
    train = (stays["split"] == "train").to_numpy()
    hr = meta["value_names"].index("vitalsign_heart_rate")
    assert abs(np.median(tensor[train, :, hr])) < 0.2


def test_image_transform_resizes_the_short_side_and_crops_the_centre(tmp_path: Path) -> None:
    pixels = np.zeros((200, 100), dtype=np.uint8)
    pixels[:, :] = np.arange(200, dtype=np.uint8)[:, None]  # brightness = row
    Image.fromarray(pixels, mode="L").save(tmp_path / "a.jpg", quality=100)
    out = transform(tmp_path / "a.jpg", resize=50, crop=40)
    assert out.shape == (40, 40) and out.dtype == np.uint8
    # 100 → 50 wide, 200 → 100 tall; the centre crop spans rows 30…69, i.e. source rows 60…139.
    assert abs(int(out[0].mean()) - 61) <= 3 and abs(int(out[-1].mean()) - 139) <= 3


def test_image_cache_decodes_each_film_once(small_source: Path) -> None:
    from ehrcxr.data.cohort import CohortRules, Splits
    from ehrcxr.data.cxr import ImageRules
    from ehrcxr.data.database import sqlite_url
    from ehrcxr.data.extraction import ExtractConfig, extract

    url = sqlite_url(small_source / "mimiciv" / "mimiciv.sqlite")
    cohort = extract(
        url, small_source / "cxr", ExtractConfig(48, CohortRules(), ImageRules(), Splits())
    ).cohort
    matched = cohort[cohort["matched"]][["stay_id", "subject_id", "cxr_study_id", "dicom_id"]]
    doubled = pd.concat([matched, matched.iloc[:1].assign(stay_id=-1)])  # two stays, one film
    images, index = build_cache(doubled, small_source / "cxr", resize=36, crop=32)
    assert images.shape == (len(matched), 32, 32) and images.dtype == np.uint8
    assert index["row"].iloc[0] == index["row"].iloc[-1]
    assert index["stay_id"].tolist() == doubled["stay_id"].tolist()
    assert images.std() > 10  # real pixels, not zeros
