"""The whole extraction: database + CXR root → cohort, attrition, hourly features, skipped films."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from ehrcxr.data import cohort as cohort_mod
from ehrcxr.data import cxr, hourly
from ehrcxr.data.database import check_tables, open_engine, query_error, read_sql_resource
from ehrcxr.data.phenotypes import phenotype_columns

COHORT_COLUMNS = [
    "subject_id", "hadm_id", "stay_id", "intime", "outtime", "age", "gender", "race",
    "race_group", "age_group", "admission_type", "mortality", "los_days", "los_class",
    *phenotype_columns(), "matched", "dicom_id", "cxr_study_id", "cxr_time", "split",
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    window_hours: int
    rules: cohort_mod.CohortRules
    images: cxr.ImageRules
    splits: cohort_mod.Splits


@dataclasses.dataclass
class Extraction:
    cohort: pd.DataFrame  # COHORT_COLUMNS, one row per base-cohort stay, by stay_id
    attrition: pd.DataFrame  # step, name, description, n_stays
    hourly: pd.DataFrame  # stay_id, hour, one column per feature
    skipped: pd.DataFrame  # dicom_id, subject_id, study_id, reason
    # per ranged feature: charted values in the cohort's windows dropped as implausible
    implausible: dict[str, int] = dataclasses.field(default_factory=dict)


def _query(conn: sa.Connection, name: str) -> pd.DataFrame:
    result = conn.execute(sa.text(read_sql_resource(name)))
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def extract(url: str, cxr_root: str | Path, config: ExtractConfig) -> Extraction:
    """Run every step of the protocol's extraction against ``url`` and ``cxr_root``."""
    engine = open_engine(url)
    try:
        check_tables(engine, hourly.required_tables())
        with engine.connect() as conn:
            stays = _query(conn, "icu_stays.sql")
            base, attrition = cohort_mod.apply_exclusions(stays, config.rules)
            hourly.create_cohort_table(conn, base, config.window_hours)
            diagnoses = _query(conn, "cohort_diagnoses.sql")
            features, implausible = hourly.extract_hourly(conn, base, config.window_hours)
    except sa.exc.DBAPIError as exc:  # permission denied, a missing column, …
        raise query_error(exc, url) from None
    finally:
        engine.dispose()
    cohort = cohort_mod.add_labels(base, diagnoses)
    cohort["split"] = cohort_mod.assign_splits(cohort, config.splits)
    metadata = cxr.read_metadata(cxr_root)
    selection, skipped = cxr.select_images(cohort, metadata.frame, cxr_root, config.images)
    if len(metadata.malformed):
        malformed = metadata.malformed.assign(reason=cxr.MALFORMED)
        skipped = pd.concat([skipped, malformed], ignore_index=True)
    cohort = cxr.mark_matched(cohort, selection)[COHORT_COLUMNS]
    for c in ("subject_id", "hadm_id", "stay_id"):
        cohort[c] = cohort[c].astype("int64")
    return Extraction(
        cohort=cohort,
        attrition=attrition,
        hourly=features,
        skipped=skipped,
        implausible=implausible,
    )
