"""MIMIC-CXR-JPG: metadata parsing and the protocol's choice of one image per ICU stay."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from PIL import Image

from ehrcxr.errors import EhrcxrError

METADATA_NAMES = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
# The 12 columns of mimic-cxr-2.0.0-metadata.csv, in file order.
METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ImageRules:
    """Which films are candidates (params.yaml ``extract.cxr``)."""

    view_position: str = "AP"
    hours_before: float = 24
    hours_after: float = 48


def image_path(root: Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    """``files/pXX/p<subject_id>/s<study_id>/<dicom_id>.jpg`` under the CXR root."""
    p = f"p{int(subject_id)}"
    return Path(root) / "files" / p[:3] / p / f"s{int(study_id)}" / f"{dicom_id}.jpg"


def parse_study_datetime(study_date: pd.Series, study_time: pd.Series) -> pd.Series:
    """StudyDate ``YYYYMMDD`` + StudyTime ``HHMMSS.fff`` stored as a number (leading zeros lost).

    ``80556.875`` is 08:05:56.875; the text is parsed, never the float, so milliseconds are exact.
    """
    text = study_time.astype(str).str.strip()
    whole = text.str.split(".").str[0].str.zfill(6)
    frac = text.str.split(".").str[1].fillna("").str.ljust(3, "0").str[:3]
    stamp = pd.to_datetime(study_date.astype(str).str.strip() + whole, format="%Y%m%d%H%M%S")
    return stamp + pd.to_timedelta(frac.astype(int), unit="ms")


def read_metadata(root: str | Path) -> pd.DataFrame:
    """The metadata CSV with ``study_datetime`` added (columns as in MIMIC-CXR-JPG v2.0.0)."""
    root = Path(root)
    for name in METADATA_NAMES:
        if (root / name).is_file():
            meta = pd.read_csv(
                root / name, dtype={"StudyDate": str, "StudyTime": str, "dicom_id": str}
            )
            break
    else:
        raise EhrcxrError(f"no MIMIC-CXR-JPG metadata in {root} (expected {METADATA_NAMES[0]})")
    meta["study_datetime"] = parse_study_datetime(meta["StudyDate"], meta["StudyTime"])
    return meta


def _readable(path: Path) -> str | None:
    """None when the JPEG decodes, else 'missing' or 'unreadable'."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            im.draft("L", (64, 64))  # decode at reduced scale: reads the whole scan, fast
            im.load()
    except (OSError, SyntaxError, ValueError):
        return "unreadable"
    return None


def select_images(
    stays: pd.DataFrame, metadata: pd.DataFrame, root: str | Path, rules: ImageRules
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The image of each stay: the latest candidate whose file decodes (ties: smallest dicom_id).

    ``stays``: ``stay_id, subject_id, intime``. Returns (``stay_id, dicom_id, study_id,
    cxr_time`` for matched stays; ``dicom_id, subject_id, study_id, reason`` for every candidate
    skipped because its file is missing or unreadable).
    """
    view = metadata[metadata["ViewPosition"] == rules.view_position]
    pairs = stays[["stay_id", "subject_id", "intime"]].merge(
        view[["subject_id", "study_id", "dicom_id", "study_datetime"]], on="subject_id"
    )
    intime = pd.to_datetime(pairs["intime"])
    inside = (pairs["study_datetime"] >= intime - pd.Timedelta(hours=rules.hours_before)) & (
        pairs["study_datetime"] <= intime + pd.Timedelta(hours=rules.hours_after)
    )
    pairs = pairs[inside].sort_values(
        ["stay_id", "study_datetime", "dicom_id"], ascending=[True, False, True]
    )
    status: dict[str, str | None] = {}
    chosen: dict[int, int] = {}
    for i, (stay_id, subject_id, study_id, dicom_id) in enumerate(
        pairs[["stay_id", "subject_id", "study_id", "dicom_id"]].itertuples(index=False)
    ):
        if stay_id in chosen:
            continue
        if dicom_id not in status:
            status[dicom_id] = _readable(image_path(Path(root), subject_id, study_id, dicom_id))
        if status[dicom_id] is None:
            chosen[stay_id] = i
    picked = pairs.iloc[sorted(chosen.values())]
    selection = picked.rename(columns={"study_datetime": "cxr_time"})[
        ["stay_id", "dicom_id", "study_id", "cxr_time"]
    ].reset_index(drop=True)
    bad = {d: r for d, r in status.items() if r is not None}
    skipped = (
        pairs[pairs["dicom_id"].isin(bad)]
        .drop_duplicates("dicom_id")[["dicom_id", "subject_id", "study_id"]]
        .assign(reason=lambda f: f["dicom_id"].map(bad))
        .sort_values("dicom_id")
        .reset_index(drop=True)
    )
    return selection, skipped


def mark_matched(cohort: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """Add ``matched`` (bool) and ``dicom_id``, ``cxr_study_id``, ``cxr_time`` (null: unmatched)."""
    chosen = selection.rename(columns={"study_id": "cxr_study_id"})
    out = cohort.merge(
        chosen[["stay_id", "dicom_id", "cxr_study_id", "cxr_time"]], on="stay_id", how="left"
    )
    out["matched"] = out["dicom_id"].notna()
    out["dicom_id"] = out["dicom_id"].astype(object).where(out["matched"], None)
    out["cxr_study_id"] = out["cxr_study_id"].astype("Int64")
    return out
