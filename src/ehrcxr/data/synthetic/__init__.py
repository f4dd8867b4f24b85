"""A schema-faithful synthetic MIMIC-IV + MIMIC-CXR-JPG source with planted, documented signal.

``synthesize(out_dir, n_patients, seed)`` writes::

    <out>/mimiciv/mimiciv.sqlite            main file; URL sqlite:///<out>/mimiciv/mimiciv.sqlite
    <out>/mimiciv/mimiciv_hosp.sqlite       patients, admissions, diagnoses_icd
    <out>/mimiciv/mimiciv_icu.sqlite        icustays, chartevents (itemids 220048, 224650)
    <out>/mimiciv/mimiciv_derived.sqlite    vitalsign, gcs, urine_output, kdigo_uo, oxygen_delivery,
                                            ventilator_setting, weight_durations
    <out>/cxr/mimic-cxr-2.0.0-metadata.csv.gz
    <out>/cxr/files/pXX/p<subject_id>/s<study_id>/<dicom_id>.jpg
    <out>/ground_truth.json                 planted answers; never read by the pipeline

The same seed gives byte-identical files.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import importlib.resources
import json
import multiprocessing
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ehrcxr.data.database import create_index_statements, create_sqlite_source
from ehrcxr.data.phenotypes import phenotype_columns
from ehrcxr.data.synthetic import charting, imaging, population
from ehrcxr.data.synthetic.population import NULL_TIME
from ehrcxr.io import atomic_path

GENERATOR_VERSION = "1"
CHUNK_STAYS = 4000
METADATA_NAME = "mimic-cxr-2.0.0-metadata.csv.gz"
_DATE_COLUMNS = {"dod"}
_TIME_COLUMNS = {
    "admittime",
    "dischtime",
    "deathtime",
    "edregtime",
    "edouttime",
    "intime",
    "outtime",
    "charttime",
    "storetime",
    "starttime",
    "endtime",
}


def load_vocabulary() -> dict:
    text = (
        importlib.resources.files("ehrcxr.data.resources")
        .joinpath("mimic_vocabulary.yaml")
        .read_text()
    )
    return yaml.safe_load(text)


def format_times(seconds: np.ndarray) -> list[str | None]:
    """int64 seconds → 'YYYY-MM-DD HH:MM:SS' (the one canonical text form), NULL_TIME → None."""
    seconds = np.asarray(seconds, dtype=np.int64)
    null = seconds == NULL_TIME
    text = np.datetime_as_string(np.where(null, 0, seconds).astype("datetime64[s]"), unit="s")
    chars = text.astype("<U19").view(np.uint32).reshape(-1, 19).copy()
    chars[:, 10] = ord(" ")
    out = chars.view("<U19").ravel().astype(object)
    out[null] = None
    return out.tolist()


def _format_dates(seconds: np.ndarray) -> list[str | None]:
    return [None if t is None else t[:10] for t in format_times(seconds)]


def _sql_values(name: str, values: np.ndarray) -> list:
    if name in _TIME_COLUMNS:
        return format_times(values)
    if name in _DATE_COLUMNS:
        return _format_dates(values)
    values = np.asarray(values)
    if values.dtype.kind == "f":
        out = values.astype(object)
        out[np.isnan(values)] = None
        return out.tolist()
    if values.dtype.kind == "b":
        return values.astype(np.int64).tolist()
    if values.dtype.kind == "O":
        # pandas marks a missing string as NaN/NA; the database wants NULL.
        return [
            None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v
            for v in values.tolist()
        ]
    return values.tolist()


def _insert(
    conn: sqlite3.Connection, schema: str, table: str, columns: dict[str, np.ndarray]
) -> None:
    names = [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({table})")]
    missing = set(names) - set(columns)
    if missing:
        raise ValueError(f"{schema}.{table}: generator gave no {sorted(missing)}")
    lists = [
        _sql_values(
            n,
            np.asarray(columns[n])
            if not isinstance(columns[n], list)
            else np.array(columns[n], dtype=object),
        )
        for n in names
    ]
    placeholders = ", ".join("?" * len(names))
    conn.executemany(
        f"INSERT INTO {schema}.{table} VALUES ({placeholders})", zip(*lists, strict=True)
    )


def _frame_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: frame[c].to_numpy() for c in frame.columns}


def _render_chunk(args: tuple[int, Path, list[tuple]]) -> None:
    seed, root, records = args
    for index, rel, view, shape, findings, status in records:
        if status == "missing":
            continue
        rng = np.random.default_rng([seed, 7, index])
        data = imaging.encode_jpeg(imaging.render(rng, view, shape, *findings))
        if status == "corrupt":
            data = data[
                : len(data) // 3
            ]  # a truncated transfer: header survives, scan data does not
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def synthesize(out_dir: str | Path, n_patients: int, seed: int, workers: int = 2) -> dict:
    """Write the synthetic source to ``out_dir`` (atomically); return a summary of counts."""
    if n_patients < 1:
        raise ValueError("n_patients must be at least 1")
    vocab = load_vocabulary()
    seeds = np.random.SeedSequence(seed).spawn(4)
    pop = population.make_population(np.random.default_rng(seeds[0]), n_patients, vocab)
    with atomic_path(out_dir) as tmp:
        db_dir = tmp / "mimiciv"
        db_dir.mkdir(parents=True)
        counts = _write_database(db_dir, pop, vocab, seeds[1], n_patients, seed)
        images, cases, expected = _write_cxr(tmp / "cxr", pop, seeds[2], seed, workers)
        truth = _ground_truth(pop, cases, expected, n_patients, seed, counts, images)
        (tmp / "ground_truth.json").write_text(
            json.dumps(truth, separators=(",", ":"), sort_keys=True)
        )
        write_manifest(tmp)
    return {"tables": counts, "images": len(images), "stays": len(pop.stays)}


MANIFEST = "manifest.tsv"


def write_manifest(root: Path) -> Path:
    """``root``/manifest.tsv: ``path, size, sha256`` of every other file of the source, sorted.

    The stages that read the source depend on this one file rather than on the folder: DVC then
    walks the ≈ 11,500 files of the default source once per `dvc status`, for the synthesize
    stage's output, instead of once more for each reader (≈ 4 s of a no-op `dvc status`). Only
    `synthesize` writes the source, and it rewrites the manifest with it.
    """
    rows = ["path\tsize\tsha256"]
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        data = path.read_bytes()
        rows.append(
            f"{path.relative_to(root).as_posix()}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}"
        )
    out = root / MANIFEST
    out.write_text("\n".join(rows) + "\n")
    return out


def _write_database(
    db_dir: Path,
    pop: population.Population,
    vocab: dict,
    seed_seq: np.random.SeedSequence,
    n_patients: int,
    seed: int,
) -> dict[str, int]:
    conn = create_sqlite_source(db_dir)
    conn.executemany(
        "INSERT INTO source_info VALUES (?, ?)",
        [
            ("generator", "ehrcxr.synthetic"),
            ("generator_version", GENERATOR_VERSION),
            ("n_patients", str(n_patients)),
            ("seed", str(seed)),
        ],
    )

    p = pop.patients
    _insert(conn, "mimiciv_hosp", "patients", _frame_columns(p))
    a = pop.admissions
    _insert(conn, "mimiciv_hosp", "admissions", _frame_columns(a))
    _insert(conn, "mimiciv_hosp", "diagnoses_icd", _frame_columns(pop.diagnoses))
    stays_by_time = pop.stays.sort_values(["subject_id", "intime"], kind="stable")
    _insert(conn, "mimiciv_icu", "icustays", _frame_columns(stays_by_time))
    counts = {
        "patients": len(p),
        "admissions": len(a),
        "diagnoses_icd": len(pop.diagnoses),
        "icustays": len(pop.stays),
    }
    chunk_seeds = seed_seq.spawn((len(stays_by_time) + CHUNK_STAYS - 1) // CHUNK_STAYS)
    for i, start in enumerate(range(0, len(stays_by_time), CHUNK_STAYS)):
        chunk = stays_by_time.iloc[start : start + CHUNK_STAYS]
        tables = charting.chart_stays(np.random.default_rng(chunk_seeds[i]), chunk, vocab)
        for table, columns in tables.items():
            schema = "mimiciv_icu" if table == "chartevents" else "mimiciv_derived"
            _insert(conn, schema, table, columns)
            counts[table] = counts.get(table, 0) + len(columns["stay_id"])
        conn.commit()
    for stmt in create_index_statements("sqlite"):
        conn.execute(stmt)
    conn.commit()
    conn.close()
    return counts


def _write_cxr(
    root: Path,
    pop: population.Population,
    seed_seq: np.random.SeedSequence,
    seed: int,
    workers: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    vocab_views = load_vocabulary()["cxr_views"]
    rng = np.random.default_rng(seed_seq)
    images, cases = imaging.plan_studies(rng, pop.stays, pop.patients)
    shapes = np.array(imaging.SHAPES)[rng.integers(0, len(imaging.SHAPES), len(images))]
    images["rows"], images["columns"] = shapes[:, 0], shapes[:, 1]
    # What each film shows: its stay's expressed findings; outpatient films: random, rarer.
    st = pop.stays.set_index("stay_id")
    findings = {}
    for name in ("cardiomegaly", "opacity", "effusion", "pneumothorax"):
        linked = images["stay_id"].map(st[f"latent_{name}"] & st["expressed"])
        findings[name] = linked.fillna(
            pd.Series(rng.random(len(images)) < 0.05, index=images.index)
        ).astype(bool)
    t = images["time_ms"].to_numpy()
    sec = t // 1000
    text = format_times(sec)
    images["StudyDate"] = [int(s[:10].replace("-", "")) for s in text]
    images["StudyTime"] = [
        int(s[11:13] + s[14:16] + s[17:19]) + (ms % 1000) / 1000
        for s, ms in zip(text, t, strict=True)
    ]
    orient_rng = np.random.default_rng(seed_seq.spawn(1)[0])
    meta = pd.DataFrame(
        {
            "dicom_id": images["dicom_id"],
            "subject_id": images["subject_id"],
            "study_id": images["study_id"],
            "PerformedProcedureStepDescription": images["view"].map(
                lambda v: vocab_views[v]["procedure"]
            ),
            "ViewPosition": images["view"],
            "Rows": images["rows"],
            "Columns": images["columns"],
            "StudyDate": images["StudyDate"],
            "StudyTime": images["StudyTime"].astype(float),
            "ProcedureCodeSequence_CodeMeaning": images["view"].map(
                lambda v: vocab_views[v]["procedure"]
            ),
            "ViewCodeSequence_CodeMeaning": images["view"].map(
                lambda v: vocab_views[v]["view_code"]
            ),
            "PatientOrientationCodeSequence_CodeMeaning": [
                _pick(orient_rng, vocab_views[v]["orientation"]) for v in images["view"]
            ],
        }
    ).sort_values(["subject_id", "study_id", "dicom_id"], kind="stable")
    root.mkdir(parents=True)
    with (
        open(root / METADATA_NAME, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
    ):
        gz.write(meta.to_csv(index=False).encode())
    records = [
        (
            i,
            imaging.image_path(Path("."), int(r.subject_id), int(r.study_id), r.dicom_id),
            r.view,
            (int(r.rows), int(r.columns)),
            (
                bool(findings["cardiomegaly"][i]),
                bool(findings["opacity"][i]),
                bool(findings["effusion"][i]),
                bool(findings["pneumothorax"][i]),
            ),
            r.file_status,
        )
        for i, r in enumerate(images.itertuples(index=False))
    ]
    chunks = [(seed, root, records[j : j + 500]) for j in range(0, len(records), 500)]
    if workers > 1 and len(chunks) > 1:
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            list(pool.map(_render_chunk, chunks))
    else:
        for c in chunks:
            _render_chunk(c)
    for name in ("cardiomegaly", "opacity", "effusion", "pneumothorax"):
        images[f"shows_{name}"] = findings[name].to_numpy()
    expected = imaging.expected_image(pop.stays, images)
    return images, cases, expected


def _pick(rng: np.random.Generator, weights: dict) -> str | None:
    keys = list(weights)
    p = np.array([float(weights[k]) for k in keys])
    return keys[rng.choice(len(keys), p=p / p.sum())]


def _ground_truth(
    pop: population.Population,
    cases: pd.DataFrame,
    expected: pd.DataFrame,
    n_patients: int,
    seed: int,
    counts: dict[str, int],
    images: pd.DataFrame,
) -> dict:
    s = pop.stays.merge(cases, on="stay_id", how="left").merge(expected, on="stay_id", how="left")
    latent_cols = [c for c in s.columns if c.startswith("latent_")]
    columns = [
        "stay_id",
        "subject_id",
        "hadm_id",
        "exclusion_step",
        "planted_exclusion",
        "image_case",
        "ap_variant",
        "expected_dicom_id",
        "expected_cxr_time",
        "mortality",
        "los_class",
        *phenotype_columns(),
        "race_group",
        "gender",
        "age",
        "expressed",
        "severity",
        *latent_cols,
    ]
    s["expected_dicom_id"] = s["dicom_id"].astype(object).where(s["dicom_id"].notna(), None)
    ms = s["time_ms"].fillna(0).astype(np.int64).to_numpy()
    text = format_times(ms // 1000)
    s["expected_cxr_time"] = [
        None if pd.isna(v) else f"{t}.{m % 1000:03d}"
        for v, t, m in zip(s["time_ms"], text, ms, strict=True)
    ]
    s["severity"] = s["severity"].round(4)
    rows = []
    for rec in s[columns].itertuples(index=False):
        rows.append([_json_value(v) for v in rec])
    base = s["exclusion_step"] == 0
    return {
        "generator": {
            "name": "ehrcxr.synthetic",
            "version": GENERATOR_VERSION,
            "seed": seed,
            "n_patients": n_patients,
        },
        "design": {
            "latent_factors": population.LATENT_FACTORS,
            "phenotype_drivers": population.PHENOTYPE_DRIVERS,
            "label_flip": population.LABEL_FLIP,
            "mortality_logit": population.MORTALITY_LOGIT,
            "los_log_excess_days": population.LOS_LOG_EXCESS_DAYS,
            "fairness": {
                "group": population.UNDEREXPRESSED_GROUP,
                "share_not_expressed": population.UNDEREXPRESSED_SHARE,
                "effect": "state absent from EHR and images, severity capped at 0; labels kept",
            },
            "exclusion_steps": [
                {"step": n, "name": name} for n, name in population.EXCLUSION_STEPS
            ],
            "image_cases": imaging.IMAGE_CASES,
            "ap_variants": imaging.AP_VARIANTS,
        },
        "summary": {
            "table_rows": counts,
            "images": len(images),
            "images_missing": int((images["file_status"] == "missing").sum()),
            "images_corrupt": int((images["file_status"] == "corrupt").sum()),
            "icu_stays": len(s),
            "base_cohort": int(base.sum()),
            "matched": int((base & s["expected_dicom_id"].notna()).sum()),
            "mortality_in_base": round(float(s.loc[base, "mortality"].mean()), 4)
            if base.any()
            else None,
        },
        "stays": {"columns": columns, "rows": rows},
    }


def _json_value(v: object) -> object:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.bool_ | bool):
        return int(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v
