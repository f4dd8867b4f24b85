"""``ehrcxr extract``: cohort, labels, splits, matched images and hourly EHR features.

Writes to ``--out``:

- ``cohort.parquet``: one row per base-cohort ICU stay, ordered by stay_id: ``subject_id, hadm_id,
  stay_id`` (int64), ``intime, outtime`` (timestamps), ``age`` (float), ``gender`` ('F'/'M'),
  ``race`` (raw), ``race_group``, ``age_group``, ``admission_type``, ``mortality`` (0/1),
  ``los_days`` (float), ``los_class`` (0–6), the 25 phenotype columns (0/1), ``matched`` (bool),
  ``dicom_id`` (null if unmatched), ``cxr_study_id`` (Int64, null), ``cxr_time`` (timestamp, null),
  ``split`` ('train'/'val'/'test').
- ``attrition.csv``: ``step, name, description, n_stays`` after each exclusion step, in order.
- ``hourly.parquet``: ``stay_id, hour`` (0…window−1) and one float column per feature of
  ``resources/features.csv`` (NaN: nothing plausible charted in that hour; every value finite:
  charted values outside the feature's ``valid_low``–``valid_high`` are dropped before the hour's
  aggregate), stays × hours, ordered.
- ``cxr_skipped.csv``: ``dicom_id, subject_id, study_id, reason`` (missing | unreadable) for
  every candidate film that was skipped, and (malformed) every metadata row with the wrong number
  of fields (its ids as far as they could be read; blank otherwise).

and the verification manifest to ``--metrics`` (JSON, a DVC metric): counts after each step,
matched fraction, skipped films, label prevalences, split sizes, per-feature missingness, and
per feature the charted values in the cohort's windows dropped as outside its plausible range
(``implausible``; ranges in ``resources/features.csv``, sources in ``resources/features.md``).
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd

from ehrcxr import params as params_mod
from ehrcxr.io import atomic_path, write_text_atomic
from ehrcxr.stages._source import add_source_arguments, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--metrics", default=None, help="verification manifest (JSON)")


def run(args: argparse.Namespace) -> None:
    from ehrcxr.data.database import describe
    from ehrcxr.data.extraction import extract

    params = params_mod.load(args.params)
    p = params_mod.extract_params(params)
    url, cxr_root = resolve(args, params)
    start = time.perf_counter()
    result = extract(url, cxr_root, p)
    with atomic_path(args.out) as out:
        out.mkdir(parents=True)
        result.cohort.to_parquet(out / "cohort.parquet", index=False)
        result.attrition.to_csv(out / "attrition.csv", index=False)
        result.hourly.to_parquet(out / "hourly.parquet", index=False)
        result.skipped.to_csv(out / "cxr_skipped.csv", index=False)
    if args.metrics:
        manifest = verification_manifest(
            result.cohort,
            result.attrition,
            result.skipped,
            result.hourly,
            implausible=result.implausible,
        )
        write_text_atomic(args.metrics, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    summary = {
        "database": describe(url),
        "base_cohort": len(result.cohort),
        "matched": int(result.cohort["matched"].sum()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))


def verification_manifest(
    cohort: pd.DataFrame,
    attrition: pd.DataFrame,
    skipped: pd.DataFrame,
    features: pd.DataFrame,
    implausible: dict[str, int] | None = None,
) -> dict:
    """Aggregate counts only (no per-stay data): what `dvc metrics diff` compares across runs."""
    from ehrcxr.data.phenotypes import phenotype_columns

    def r(x: float) -> float:
        return round(float(x), 4)

    values = features.drop(columns=["stay_id", "hour"])
    return {
        "attrition": {f"{row.step}_{row.name}": int(row.n_stays) for row in attrition.itertuples()},
        "base_cohort": len(cohort),
        "matched": int(cohort["matched"].sum()),
        "matched_fraction": r(cohort["matched"].mean()),
        "cxr_skipped": {
            reason: int((skipped["reason"] == reason).sum())
            for reason in ("missing", "unreadable", "malformed")
        },
        "prevalence": {
            "mortality": r(cohort["mortality"].mean()),
            **{c: r(cohort[c].mean()) for c in phenotype_columns()},
        },
        "los_class_share": {str(k): r((cohort["los_class"] == k).mean()) for k in range(7)},
        "splits": {s: int((cohort["split"] == s).sum()) for s in ("train", "val", "test")},
        "matched_splits": {
            s: int(((cohort["split"] == s) & cohort["matched"]).sum())
            for s in ("train", "val", "test")
        },
        "missing_fraction": {c: r(values[c].isna().mean()) for c in values.columns},
        "implausible": {k: int(v) for k, v in (implausible or {}).items()},
    }
