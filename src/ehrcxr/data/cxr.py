"""MIMIC-CXR-JPG: metadata parsing and the protocol's choice of one image per ICU stay."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from PIL import Image

from ehrcxr.errors import EhrcxrError
from ehrcxr.io import first_line

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
    A value that is not a date / time of this form raises ``ValueError``.
    """
    text = study_time.astype(str).str.strip()
    if not text.str.fullmatch(r"\d{1,6}(\.\d*)?").all():
        raise ValueError("StudyTime is not HHMMSS[.fff] (a number) in every row")
    whole = text.str.split(".").str[0].str.zfill(6)
    frac = text.str.split(".").str[1].fillna("").str.ljust(3, "0").str[:3]
    date = study_date.astype(str).str.strip()
    if not date.str.fullmatch(r"\d{8}").all():
        raise ValueError("StudyDate is not YYYYMMDD in every row")
    stamp = pd.to_datetime(date + whole, format="%Y%m%d%H%M%S")
    return stamp + pd.to_timedelta(frac.astype(int), unit="ms")


# Metadata columns every film needs (the others may be blank in MIMIC-CXR-JPG).
REQUIRED_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")
MALFORMED = "malformed"  # cxr_skipped.csv reason: a metadata row with the wrong number of fields


@dataclasses.dataclass(frozen=True)
class Metadata:
    """The metadata CSV: ``frame`` (its columns plus ``study_datetime``) and ``malformed``
    (``dicom_id, subject_id, study_id`` of rows with the wrong number of fields, as far as they
    could be read: skipped, counted in ``cxr_skipped.csv``)."""

    frame: pd.DataFrame
    malformed: pd.DataFrame


def read_metadata(root: str | Path) -> Metadata:
    """The metadata CSV of MIMIC-CXR-JPG v2.0.0 (gzipped or not) under ``root``.

    A row with too few or too many fields is set aside as malformed; a file that is not a
    (gzipped) CSV, lacks a required column, or holds a StudyDate / StudyTime / id that is not a
    number stops the extraction with one line (a different metadata format, not a glitch).
    """
    import csv
    import gzip
    import io

    root = Path(root)
    path = next((root / n for n in METADATA_NAMES if (root / n).is_file()), None)
    if path is None:
        raise EhrcxrError(f"no MIMIC-CXR-JPG metadata in {root} (expected {METADATA_NAMES[0]})")
    what = f"CXR metadata {path}"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            rows = [r for r in csv.reader(f) if r]  # blank lines: none, as pandas
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        kind = "gzipped CSV" if path.suffix == ".gz" else "CSV"
        raise EhrcxrError(f"{what} is not a readable {kind}: {first_line(exc)}") from None
    if not rows:
        raise EhrcxrError(f"{what} is empty")
    header = rows[0]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise EhrcxrError(f"{what} lacks the column(s) {', '.join(missing)}")
    good = [r for r in rows[1:] if len(r) == len(header)]
    bad = [r for r in rows[1:] if len(r) != len(header) and any(field.strip() for field in r)]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *good])
    buffer.seek(0)
    dtype = {"StudyDate": str, "StudyTime": str, "dicom_id": str}
    meta = pd.read_csv(buffer, dtype=dtype)
    for column in REQUIRED_COLUMNS:
        blank = int(meta[column].isna().sum())
        if blank and column != "ViewPosition":  # blank in MIMIC for some films: not AP
            raise EhrcxrError(f"{what}: {blank} row(s) with a blank {column}")
    for column in ("subject_id", "study_id"):
        if len(meta) and not pd.api.types.is_integer_dtype(meta[column]):
            raise EhrcxrError(f"{what}: {column} is not an integer in every row")
    try:
        meta["study_datetime"] = parse_study_datetime(meta["StudyDate"], meta["StudyTime"])
    except ValueError as exc:
        raise EhrcxrError(f"{what}: {exc}") from None
    position = {name: header.index(name) for name in ("dicom_id", "subject_id", "study_id")}

    def field(row: list[str], name: str) -> str | None:
        k = position[name]
        return row[k].strip() if k < len(row) and row[k].strip() else None

    malformed = pd.DataFrame(
        {name: [field(r, name) for r in bad] for name in position}, columns=list(position)
    )
    for name in ("subject_id", "study_id"):
        malformed[name] = pd.to_numeric(malformed[name], errors="coerce").astype("Int64")
    return Metadata(frame=meta, malformed=malformed)


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
