"""MIMIC-CXR-JPG stand-in: which studies exist (metadata) and what the images show (rendering).

Portable AP films are taken around ICU stays whose *real* date falls in MIMIC-CXR's 2011–2016;
each stay gets one planted image case (see ``IMAGE_CASES``) so that every image rule of the
protocol has stays that exercise it. Images are drawn from a simple chest phantom: body, lungs
with texture, mediastinum, heart, diaphragm; findings change what a radiologist would see
(cardiothoracic ratio, focal opacity, basal effusion, apical pneumothorax with a pleural line).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ehrcxr.data.synthetic.population import CXR_REAL_YEARS, HOUR, _year_of

# Planted per-stay image cases and their share among stays in the CXR era.
IMAGE_CASES: dict[str, float] = {
    "ap_in_window": 0.55,
    "lateral_only": 0.03,  # only LATERAL/LL views in the window: not a candidate
    "pa_only": 0.015,  # a PA film in the window: not a candidate (AP only)
    "after_48h_only": 0.04,  # AP films only after intime + 48 h: never used
    "before_24h_only": 0.03,  # AP films only before intime − 24 h
    "missing_file_only": 0.012,  # the only candidate's JPEG is absent
    "corrupt_only": 0.012,  # the only candidate's JPEG cannot be decoded
    "none": 0.0,  # the rest
}
# Variants of "ap_in_window" that test the selection's edges.
AP_VARIANTS: dict[str, float] = {
    "plain": 0.80,
    "edge_minus_24h": 0.025,  # one candidate exactly at intime − 24 h (inside, closed window)
    "edge_plus_48h": 0.025,  # latest candidate exactly at intime + 48 h (inside)
    "just_after_48h": 0.03,  # an AP at intime + 48 h + 0.5 s: outside (StudyTime keeps ms)
    "tie": 0.04,  # two AP images in the latest study: smallest dicom_id wins
    "latest_missing": 0.04,  # latest candidate's file is missing: the one before is used
    "latest_corrupt": 0.04,  # latest candidate's file is corrupt: the one before is used
}
SHAPES: tuple[tuple[int, int], ...] = ((256, 224), (224, 256), (240, 240), (256, 256))
MS = 1000  # image times are int64 milliseconds (StudyTime keeps them)


def _dicom_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 2**32, size=(n, 5), dtype=np.uint64)
    return np.array(["-".join(f"{v:08x}" for v in row) for row in raw], dtype=object)


def plan_studies(
    rng: np.random.Generator, stays: pd.DataFrame, patients: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per image (metadata + file status + findings source), and the per-stay case.

    Returns ``images`` with columns ``dicom_id, subject_id, study_id, view, time_ms, file_status
    (ok | missing | corrupt), stay_id (the stay whose state it shows, -1 for outpatient films)``
    and ``cases`` with ``stay_id, image_case, ap_variant``.
    """
    real_year = _year_of(stays["intime"].to_numpy() - stays["shift"].to_numpy())
    era = (real_year >= CXR_REAL_YEARS[0]) & (real_year <= CXR_REAL_YEARS[1])
    era &= (stays["outtime"] > stays["intime"]).to_numpy()
    k = len(stays)
    names = list(IMAGE_CASES)
    p = np.array([IMAGE_CASES[c] for c in names])
    p[names.index("none")] = 1 - p.sum()
    case = np.where(era, np.array(names, dtype=object)[rng.choice(len(names), k, p=p)], "none")
    vnames = list(AP_VARIANTS)
    vp = np.array(list(AP_VARIANTS.values()))
    variant = np.where(
        case == "ap_in_window",
        np.array(vnames, dtype=object)[rng.choice(len(vnames), k, p=vp / vp.sum())],
        None,
    )
    # Guarantee every case and variant at least twice in any source large enough to hold them.
    era_idx = np.flatnonzero(era & (case == "none"))
    forced = [(c, None) for c in names if c not in ("none", "ap_in_window")] + [
        ("ap_in_window", v) for v in vnames
    ]
    for j, (c, v) in enumerate(forced * 2):
        if j < len(era_idx) and not ((case == c) & (variant == v)).sum() >= 2:
            case[era_idx[j]], variant[era_idx[j]] = c, v

    rows: list[
        tuple[int, int, str, int, str, int]
    ] = []  # subject, study_key, view, time_ms, status, stay
    intime = stays["intime"].to_numpy() * MS
    subject = stays["subject_id"].to_numpy()
    stay_id = stays["stay_id"].to_numpy()
    study_key = 0

    def add(i: int, t_ms: int, views: list[str], status: list[str] | None = None) -> None:
        nonlocal study_key
        study_key += 1
        for j, view in enumerate(views):
            rows.append(
                (
                    int(subject[i]),
                    study_key,
                    view,
                    int(t_ms),
                    (status or ["ok"] * len(views))[j],
                    int(stay_id[i]),
                )
            )

    def rand_ms(i: int, lo_h: float, hi_h: float) -> int:
        return int(intime[i] + rng.uniform(lo_h, hi_h) * HOUR * MS)

    for i in np.flatnonzero(case != "none"):
        c, v = case[i], variant[i]
        if c == "ap_in_window":
            n_ap = int(rng.integers(1, 4))
            times = sorted(rand_ms(i, -20, 46) for _ in range(n_ap))
            if v == "edge_minus_24h":
                times = [int(intime[i] - 24 * HOUR * MS)]
            elif v == "edge_plus_48h":
                times = [*times[:-1], int(intime[i] + 48 * HOUR * MS)]
            elif v in ("latest_missing", "latest_corrupt") and len(times) < 2:
                times = [rand_ms(i, -20, 10), rand_ms(i, 12, 46)]
            for j, t in enumerate(times):
                last = j == len(times) - 1
                status = "ok"
                if last and v == "latest_missing":
                    status = "missing"
                elif last and v == "latest_corrupt":
                    status = "corrupt"
                views = ["AP", "AP"] if last and v == "tie" else ["AP"]
                if rng.random() < 0.1:
                    views.append("LATERAL")
                add(i, t, views, [status] + ["ok"] * (len(views) - 1))
            if v == "just_after_48h":
                add(i, int(intime[i] + 48 * HOUR * MS + 500), ["AP"])
            if rng.random() < 0.3:  # later films of the same ICU stay, never to be used
                add(i, rand_ms(i, 49, 120), ["AP"])
        elif c == "lateral_only":
            add(i, rand_ms(i, -20, 46), ["LATERAL" if rng.random() < 0.7 else "LL"])
        elif c == "pa_only":
            add(i, rand_ms(i, -20, 46), ["PA", "LATERAL"])
        elif c == "after_48h_only":
            add(i, rand_ms(i, 48.01, 100), ["AP"])
        elif c == "before_24h_only":
            add(i, rand_ms(i, -96, -24.01), ["AP"])
        elif c == "missing_file_only":
            add(i, rand_ms(i, -20, 46), ["AP"], ["missing"])
        elif c == "corrupt_only":
            add(i, rand_ms(i, -20, 46), ["AP"], ["corrupt"])
    # Outpatient PA + lateral studies, far from the ICU, for patients seen in the CXR era.
    era_subjects = np.unique(subject[era])
    out_sub = era_subjects[rng.random(len(era_subjects)) < 0.3]
    first_in = stays.groupby("subject_id")["intime"].min()
    for sid in out_sub:
        t = int((first_in[sid] - rng.uniform(30, 400) * 24 * HOUR) * MS)
        study_key += 1
        for view in ("PA", "LATERAL"):
            rows.append((int(sid), study_key, view, t, "ok", -1))

    images = pd.DataFrame(
        rows, columns=["subject_id", "study_key", "view", "time_ms", "file_status", "stay_id"]
    )
    study_ids = np.sort(rng.choice(9_000_000, size=study_key, replace=False)) + 50_000_000
    images["study_id"] = rng.permutation(study_ids)[images["study_key"].to_numpy() - 1]
    images["dicom_id"] = _dicom_ids(rng, len(images))
    images = images.drop(columns="study_key")
    cases = pd.DataFrame({"stay_id": stay_id, "image_case": case, "ap_variant": variant})
    return images, cases


def expected_image(stays: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """The protocol's image choice per stay, from generator values: ``stay_id, dicom_id, time_ms``.

    Candidates: the subject's AP images with intime − 24 h ≤ time ≤ intime + 48 h (ms precision),
    whose file decodes; the latest wins, ties to the smallest dicom_id.
    """
    ap = images[(images["view"] == "AP") & (images["file_status"] == "ok")]
    pairs = stays[["stay_id", "subject_id", "intime"]].merge(
        ap[["subject_id", "dicom_id", "time_ms"]], on="subject_id"
    )
    t0 = pairs["intime"] * MS
    inside = (pairs["time_ms"] >= t0 - 24 * HOUR * MS) & (pairs["time_ms"] <= t0 + 48 * HOUR * MS)
    pairs = pairs[inside].sort_values(
        ["stay_id", "time_ms", "dicom_id"], ascending=[True, False, True]
    )
    return pairs.drop_duplicates("stay_id")[["stay_id", "dicom_id", "time_ms"]]


@functools.cache
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return (x / (w - 1) * 2 - 1), (y / (h - 1) * 2 - 1)


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2


def render(
    rng: np.random.Generator,
    view: str,
    shape: tuple[int, int],
    cardiomegaly: bool,
    opacity: bool,
    effusion: bool,
    pneumothorax: bool,
) -> np.ndarray:
    """One grayscale chest film, uint8 [H, W]; the findings are what the labels are planted on."""
    h, w = shape
    gx, gy = _grid(h, w)
    scale = rng.uniform(0.93, 1.07)
    x = (gx - rng.uniform(-0.05, 0.05)) / scale
    y = (gy - rng.uniform(-0.05, 0.05)) / scale
    img = np.full((h, w), 15.0, dtype=np.float32)
    texture = np.asarray(
        Image.fromarray(rng.normal(0, 1, (10, 10)).astype(np.float32), mode="F").resize(
            (w, h), Image.BILINEAR
        )
    )
    if view in ("LATERAL", "LL"):
        body = _ellipse(x, y, 0.0, 0.1, 0.75, 1.0) < 1
        img[body] = 105
        lung = (_ellipse(x, y, 0.05, -0.05, 0.55, 0.6) < 1) & body
        img[lung] = 50 + 10 * texture[lung]
        heart = _ellipse(x, y, -0.3, 0.3, 0.3 + 0.12 * cardiomegaly, 0.3) < 1
        img[heart & body] = 150
        if effusion:
            img[lung & (y > 0.35)] = 130
    else:
        body = _ellipse(x, y, 0.0, 0.1, 0.85, 1.05) < 1
        img[body] = 110
        lungs = []
        for side in (-1, 1):
            lung = _ellipse(x, y, side * 0.38, -0.1, 0.3, 0.55) < 1
            lungs.append(lung)
            img[lung] = 45 + 12 * texture[lung]
        img[(np.abs(x) < 0.12) & (y > -0.8) & (y < 0.25)] = 150  # mediastinum
        img[(np.abs(x) < 0.05) & body] += 20  # spine
        ctr = rng.normal(0.62, 0.04) if cardiomegaly else rng.normal(0.45, 0.035)
        ctr += 0.03 if view == "AP" else 0.0  # AP films magnify the heart
        heart = _ellipse(x, y, 0.08, 0.3, ctr * 0.68, 0.27) < 1
        img[heart] = 160
        img[(y > 0.48 + 0.12 * x**2) & body] = 140  # diaphragm and abdomen
        if opacity:
            side = rng.integers(0, 2)
            cx, cy = (-0.38, 0.38)[side] + rng.uniform(-0.1, 0.1), rng.uniform(-0.4, 0.2)
            blob = np.exp(-_ellipse(x, y, cx, cy, rng.uniform(0.1, 0.18), rng.uniform(0.1, 0.2)))
            img += 55 * blob * lungs[side]
        if effusion:
            for side in (0, 1) if rng.random() < 0.4 else (rng.integers(0, 2),):
                level = rng.uniform(0.15, 0.3) - 0.25 * (np.abs(x) - 0.38)
                img[lungs[side] & (y > level)] = 130
        if pneumothorax:
            side = rng.integers(0, 2)
            sx = (-1, 1)[side]
            edge = _ellipse(x, y, sx * 0.38, -0.1, 0.3, 0.55)
            rim = lungs[side] & (edge > 0.55) & (y < 0.1) & (sx * x > 0.3)
            img[rim] = 25
            line = lungs[side] & (np.abs(edge - 0.55) < 0.05) & (y < 0.1) & (sx * x > 0.3)
            img[line] = 120
    img = img * rng.uniform(0.9, 1.1) + rng.uniform(-10, 10)
    img += rng.normal(0, 5, (h, w)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def image_path(root: Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    """``files/pXX/p<subject_id>/s<study_id>/<dicom_id>.jpg`` under the CXR root."""
    p = f"p{subject_id}"
    return root / "files" / p[:3] / p / f"s{study_id}" / f"{dicom_id}.jpg"
