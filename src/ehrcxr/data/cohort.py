"""The base cohort, its labels and its splits (benchmark_protocol.md, "Base cohort" … "Splits").

Pure functions over a frame of ICU stays (``icu_stays.sql``); the database is read elsewhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ehrcxr.data.demographics import age_group, race_group
from ehrcxr.data.phenotypes import phenotype_columns, phenotype_icd_map
from ehrcxr.errors import EhrcxrError

LOS_BIN_EDGES_DAYS = (3, 4, 5, 6, 7, 14)  # [2,3) [3,4) [4,5) [5,6) [6,7) [7,14) [14,∞) → 0…6


@dataclasses.dataclass(frozen=True)
class CohortRules:
    """The protocol's exclusion parameters (params.yaml ``extract``)."""

    min_age: float = 18
    min_icu_hours: float = 6
    planned_admission_types: tuple[str, ...] = ("ELECTIVE", "SURGICAL SAME DAY ADMISSION")
    drop_multi_stay_admissions: bool = True
    min_window_hours: float = 48


@dataclasses.dataclass(frozen=True)
class Splits:
    """Patient-level split fractions and seed (params.yaml ``extract.split``)."""

    train: float = 0.7
    val: float = 0.1
    test: float = 0.2
    seed: int = 42


def to_seconds(values: pd.Series) -> np.ndarray:
    """Timestamps (text from SQLite, datetimes from PostgreSQL) → int64 seconds; NaT → min int."""
    ts = (
        pd.to_datetime(values, format="mixed") if values.dtype == object else pd.to_datetime(values)
    )
    out = ts.astype("datetime64[s]").astype("int64").to_numpy()
    return out


def apply_exclusions(stays: pd.DataFrame, rules: CohortRules) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the protocol's steps in order; return (base cohort, attrition table).

    ``stays`` has the columns of ``icu_stays.sql``. The attrition table has ``step, description,
    n_stays`` with the number of stays left after each step.
    """
    s = stays.copy()
    for col in ("intime", "outtime", "admittime", "dischtime"):
        s[col] = (
            pd.to_datetime(s[col], format="mixed")
            if s[col].dtype == object
            else pd.to_datetime(s[col])
        )
    s["age"] = (s["anchor_age"] + s["admittime"].dt.year - s["anchor_year"]).astype(float)
    hours = (s["outtime"] - s["intime"]).dt.total_seconds() / 3600
    steps: list[tuple[str, str, pd.Series]] = [
        (
            "icu_stays",
            "ICU stays joined to admissions and patients",
            pd.Series(True, index=s.index),
        ),
        ("adult", f"age at admission >= {rules.min_age:g}", s["age"] >= rules.min_age),
        (
            "discharge_and_diagnoses",
            "admission has a dischtime and at least one diagnoses_icd row",
            s["dischtime"].notna() & (s["has_diagnoses"] == 1),
        ),
        (
            "plausible_times",
            "admittime <= intime < outtime and admittime <= dischtime",
            (s["admittime"] <= s["intime"])
            & (s["intime"] < s["outtime"])
            & (s["admittime"] <= s["dischtime"]),
        ),
        ("min_icu_hours", f"ICU stay >= {rules.min_icu_hours:g} h", hours >= rules.min_icu_hours),
        (
            "not_planned",
            "admission_type not in " + ", ".join(rules.planned_admission_types),
            ~s["admission_type"].isin(rules.planned_admission_types),
        ),
        (
            "single_icu_stay",
            "admissions with more than one ICU stay dropped (counted on all icustays)",
            (s["n_icu_stays"] == 1)
            if rules.drop_multi_stay_admissions
            else pd.Series(True, index=s.index),
        ),
        (
            "min_window_hours",
            f"ICU stay >= {rules.min_window_hours:g} h",
            hours >= rules.min_window_hours,
        ),
    ]
    keep = pd.Series(True, index=s.index)
    rows = []
    for number, (name, description, ok) in enumerate(steps, start=1):
        keep &= ok.fillna(False).astype(bool)
        rows.append(
            {"step": number, "name": name, "description": description, "n_stays": int(keep.sum())}
        )
    attrition = pd.DataFrame(rows)
    base = s[keep].copy()
    if base.empty:
        first_empty = attrition[attrition["n_stays"] == 0].iloc[0]
        raise EhrcxrError(
            f"the base cohort is empty: no ICU stay is left after step {first_empty['step']} "
            f"({first_empty['description']}); see the attrition counts: "
            + ", ".join(f"{r.name}={r.n_stays}" for r in attrition.itertuples())
        )
    return base.sort_values("stay_id").reset_index(drop=True), attrition


def add_labels(base: pd.DataFrame, diagnoses: pd.DataFrame) -> pd.DataFrame:
    """mortality, los_days, los_class and the 25 phenotype columns; race and age groups.

    ``diagnoses``: ``hadm_id, icd_code, icd_version`` of the cohort's admissions.
    """
    out = base.copy()
    out["mortality"] = out["hospital_expire_flag"].fillna(0).astype(np.int8)
    out["los_days"] = out["los"].astype(float)
    missing = out["los_days"].isna()
    if missing.any():
        # np.digitize puts NaN in the last bin: a null length of stay would become "14 days or
        # more". The cohort keeps only stays with an outtime, so a null `icustays.los` is an error.
        raise EhrcxrError(
            f"{int(missing.sum())} base-cohort stays have no icustays.los: the length-of-stay "
            "label (total ICU stay, binned from 2 days) cannot be derived"
        )
    out["los_class"] = np.digitize(out["los_days"], LOS_BIN_EDGES_DAYS).astype(np.int8)
    dx = diagnoses.assign(
        icd_code=diagnoses["icd_code"].astype(str).str.strip(),
        icd_version=diagnoses["icd_version"].astype(int),
    )
    coded = dx.merge(phenotype_icd_map(), on=["icd_code", "icd_version"])
    positive = coded.drop_duplicates(["hadm_id", "column"]).assign(flag=1)
    wide = positive.pivot(index="hadm_id", columns="column", values="flag")
    for column in phenotype_columns():
        values = (
            out["hadm_id"].map(wide[column]) if column in wide else pd.Series(0, index=out.index)
        )
        out[column] = values.fillna(0).astype(np.int8)
    out["race_group"] = race_group(out["race"])
    out["age_group"] = age_group(out["age"])
    return out


def assign_splits(base: pd.DataFrame, splits: Splits) -> pd.Series:
    """'train'/'val'/'test' per stay, drawn once per patient (subject_id), seeded."""
    total = splits.train + splits.val + splits.test
    if not np.isclose(total, 1.0):
        raise EhrcxrError(f"split fractions must sum to 1 (got {total:g})")
    subjects = np.sort(base["subject_id"].unique())
    order = np.random.default_rng(splits.seed).permutation(len(subjects))
    n_train = round(splits.train * len(subjects))
    n_val = round(splits.val * len(subjects))
    label = np.empty(len(subjects), dtype=object)
    label[order[:n_train]] = "train"
    label[order[n_train : n_train + n_val]] = "val"
    label[order[n_train + n_val :]] = "test"
    return base["subject_id"].map(dict(zip(subjects, label, strict=True)))
