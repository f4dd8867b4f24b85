"""The synthetic source: determinism, planted edge cases, value formats, ground truth vs tables."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from PIL import Image

from ehrcxr.data.database import open_engine
from ehrcxr.data.phenotypes import icd_to_ccs, phenotype_columns, phenotype_icd_map
from ehrcxr.data.synthetic import imaging, population

PLANNED = ("ELECTIVE", "SURGICAL SAME DAY ADMISSION")


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read(url: str, sql: str) -> pd.DataFrame:
    engine = open_engine(url)
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text(sql), conn)
    engine.dispose()
    return frame


def test_same_seed_gives_identical_files_through_the_cli(tmp_path: Path) -> None:
    for name in ("A", "B"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ehrcxr.cli",
                "synthesize",
                "--out",
                str(tmp_path / name),
                "--n-patients",
                "200",
                "--seed",
                "0",
            ],
            check=True,
            capture_output=True,
        )
    a, b = _digest(tmp_path / "A"), _digest(tmp_path / "B")
    assert len(a) > 100  # databases, metadata, ground truth and the JPEGs
    assert a == b


def test_the_manifest_lists_every_file_of_the_source_by_hash(small_source: Path) -> None:
    """The readers' one DVC dependency: it changes whenever any file of the source does."""
    manifest = pd.read_csv(small_source / "manifest.tsv", sep="\t")
    files = {k: v for k, v in _digest(small_source).items() if k != "manifest.tsv"}
    assert dict(zip(manifest["path"], manifest["sha256"], strict=True)) == files
    sizes = {str(p.relative_to(small_source)): p.stat().st_size for p in small_source.rglob("*")}
    assert all(sizes[p] == n for p, n in zip(manifest["path"], manifest["size"], strict=True))
    assert any(p.endswith(".jpg") for p in manifest["path"])


def test_another_seed_gives_other_data(tmp_path: Path, small_source: Path) -> None:
    from ehrcxr.data.synthetic import synthesize

    synthesize(tmp_path / "other", n_patients=200, seed=1)
    a = _digest(small_source)
    b = _digest(tmp_path / "other")
    assert a["ground_truth.json"] != b["ground_truth.json"]


def test_layout_matches_mimic(small_source: Path) -> None:
    for schema in ("mimiciv_hosp", "mimiciv_icu", "mimiciv_derived"):
        assert (small_source / "mimiciv" / f"{schema}.sqlite").is_file()
    meta = pd.read_csv(small_source / "cxr" / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert list(meta.columns) == [
        "dicom_id",
        "subject_id",
        "study_id",
        "PerformedProcedureStepDescription",
        "ViewPosition",
        "Rows",
        "Columns",
        "StudyDate",
        "StudyTime",
        "ProcedureCodeSequence_CodeMeaning",
        "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ]
    assert set(meta["ViewPosition"]) >= {"AP", "PA", "LATERAL"}
    assert meta["dicom_id"].str.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}").all()
    assert meta["study_id"].between(50_000_000, 59_999_999).all()
    ok = meta.iloc[0]
    path = imaging.image_path(small_source / "cxr", ok.subject_id, ok.study_id, ok.dicom_id)
    assert path.parent.parent.parent.name == f"p{ok.subject_id}"[:3]
    # The gzip header carries no timestamp (determinism) and real readers accept it.
    raw = (small_source / "cxr" / "mimic-cxr-2.0.0-metadata.csv.gz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0"
    assert gzip.decompress(raw).startswith(b"dicom_id,")


def test_identifier_and_time_formats(small_sqlite_url: str) -> None:
    p = _read(small_sqlite_url, "SELECT * FROM mimiciv_hosp.patients")
    a = _read(small_sqlite_url, "SELECT * FROM mimiciv_hosp.admissions")
    s = _read(small_sqlite_url, "SELECT * FROM mimiciv_icu.icustays")
    assert p["subject_id"].between(10_000_000, 19_999_999).all()
    assert a["hadm_id"].between(20_000_000, 29_999_999).all() and a["hadm_id"].is_unique
    assert s["stay_id"].between(30_000_000, 39_999_999).all() and s["stay_id"].is_unique
    assert set(p["gender"]) == {"F", "M"}
    assert p["anchor_age"].between(18, 91).all() and (p["anchor_age"] <= 89).sum() > 0
    assert set(p["anchor_year_group"]) <= {
        "2008 - 2010",
        "2011 - 2013",
        "2014 - 2016",
        "2017 - 2019",
    }
    # Timestamps are text 'YYYY-MM-DD HH:MM:SS' on the shifted calendar.
    assert a["admittime"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
    years = pd.to_datetime(a["admittime"]).dt.year
    assert years.between(2110, 2214).all()
    assert (
        s["los"]
        - (pd.to_datetime(s["outtime"]) - pd.to_datetime(s["intime"])).dt.total_seconds() / 86400
    ).abs().max() < 1e-5
    assert set(a["admission_type"]) <= {
        "AMBULATORY OBSERVATION",
        "DIRECT EMER.",
        "DIRECT OBSERVATION",
        "ELECTIVE",
        "EU OBSERVATION",
        "EW EMER.",
        "OBSERVATION ADMIT",
        "SURGICAL SAME DAY ADMISSION",
        "URGENT",
    }
    died = (a["hospital_expire_flag"] == 1) & a["dischtime"].notna()
    assert died.any() and a.loc[died, "deathtime"].notna().all()


def test_icd_codes_parse_as_a_real_user_would(small_sqlite_url: str) -> None:
    dx = _read(small_sqlite_url, "SELECT * FROM mimiciv_hosp.diagnoses_icd")
    assert dx["icd_code"].map(type).eq(str).all()
    assert not dx["icd_code"].str.contains(r"\.").any()  # no dots, as MIMIC stores them
    nine = dx[dx["icd_version"] == 9]["icd_code"]
    assert nine.str.startswith("0").any()  # leading zeros survive (e.g. 0389, septicemia)
    assert set(dx["icd_version"]) == {9, 10}
    known = icd_to_ccs().set_index(["icd_code", "icd_version"]).index
    assert dx.set_index(["icd_code", "icd_version"]).index.isin(known).all()
    # One vocabulary per admission, and ICD-10 never in the earliest real-year group.
    assert dx.groupby("hadm_id")["icd_version"].nunique().eq(1).all()
    early = _read(
        small_sqlite_url,
        "SELECT d.icd_version FROM mimiciv_hosp.diagnoses_icd d JOIN mimiciv_hosp.patients p "
        "ON p.subject_id = d.subject_id WHERE p.anchor_year_group = '2008 - 2010'",
    )
    assert len(early) > 0 and (early["icd_version"] == 9).all()


def test_study_time_lost_leading_zeros_and_parses_with_milliseconds(
    small_source: Path, ground_truth: pd.DataFrame
) -> None:
    text = gzip.decompress(
        (small_source / "cxr" / "mimic-cxr-2.0.0-metadata.csv.gz").read_bytes()
    ).decode()
    raw = pd.read_csv(io.StringIO(text), dtype=str)
    assert raw["StudyTime"].str.fullmatch(r"\d{1,6}(\.\d+)?").all()
    assert (raw["StudyTime"].str.split(".").str[0].str.len() < 6).any()  # 80556.875-style values

    meta = pd.read_csv(small_source / "cxr" / "mimic-cxr-2.0.0-metadata.csv.gz").set_index(
        "dicom_id"
    )

    def parse(date: int, time: float) -> datetime:
        whole = int(time)
        ms = round((time - whole) * 1000)
        return datetime.strptime(f"{date} {whole:06d}", "%Y%m%d %H%M%S") + timedelta(
            milliseconds=ms
        )

    chosen = ground_truth.dropna(subset=["expected_dicom_id"])
    assert len(chosen) > 10
    for row in chosen.itertuples():
        m = meta.loc[row.expected_dicom_id]
        assert (
            parse(m.StudyDate, m.StudyTime).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            == row.expected_cxr_time
        )


def test_every_exclusion_step_and_image_rule_is_planted(ground_truth: pd.DataFrame) -> None:
    steps = set(ground_truth["planted_exclusion"].dropna())
    assert steps == {
        "age_under_18",
        "no_dischtime",
        "no_diagnoses",
        "implausible_times",
        "shorter_than_6h",
        "planned_admission",
        "multiple_icu_stays",
        "shorter_than_48h",
    }
    assert (ground_truth["exclusion_step"] == 0).sum() > 50
    cases = set(ground_truth["image_case"])
    assert cases >= set(imaging.IMAGE_CASES)
    variants = set(ground_truth["ap_variant"].dropna())
    assert variants == set(imaging.AP_VARIANTS)


def _oracle_exclusion(url: str) -> pd.Series:
    """The protocol's exclusion step per stay, computed here from the tables with pandas."""
    s = _read(url, "SELECT * FROM mimiciv_icu.icustays")
    a = _read(url, "SELECT * FROM mimiciv_hosp.admissions")
    p = _read(url, "SELECT * FROM mimiciv_hosp.patients")
    dx = set(_read(url, "SELECT DISTINCT hadm_id FROM mimiciv_hosp.diagnoses_icd")["hadm_id"])
    d = s.merge(a, on=["subject_id", "hadm_id"]).merge(p, on="subject_id")
    for c in ("intime", "outtime", "admittime", "dischtime"):
        d[c] = pd.to_datetime(d[c])
    age = d["anchor_age"] + d["admittime"].dt.year - d["anchor_year"]
    plausible = (
        (d["admittime"] <= d["intime"])
        & (d["intime"] < d["outtime"])
        & (d["admittime"] <= d["dischtime"])
    )
    hours = (d["outtime"] - d["intime"]).dt.total_seconds() / 3600
    n_stays = d["hadm_id"].map(s.groupby("hadm_id").size())
    fails = [
        age < 18,
        d["dischtime"].isna() | ~d["hadm_id"].isin(dx),
        ~plausible.fillna(False),
        hours < 6,
        d["admission_type"].isin(PLANNED),
        n_stays > 1,
        hours < 48,
    ]
    step = pd.Series(0, index=d.index)
    for number, fail in zip(range(2, 9), fails, strict=True):
        step[(step == 0) & fail] = number
    return pd.Series(step.to_numpy(), index=d["stay_id"].to_numpy())


def test_ground_truth_exclusions_agree_with_the_tables(
    small_sqlite_url: str, ground_truth: pd.DataFrame
) -> None:
    oracle = _oracle_exclusion(small_sqlite_url)
    truth = ground_truth.set_index("stay_id")["exclusion_step"]
    assert len(oracle) == len(truth)
    pd.testing.assert_series_equal(oracle.sort_index(), truth.sort_index(), check_names=False)


def test_ground_truth_labels_agree_with_the_tables(
    small_sqlite_url: str, ground_truth: pd.DataFrame
) -> None:
    base = ground_truth[ground_truth["exclusion_step"] == 0].set_index("stay_id")
    s = _read(small_sqlite_url, "SELECT stay_id, hadm_id, los FROM mimiciv_icu.icustays").set_index(
        "stay_id"
    )
    a = _read(small_sqlite_url, "SELECT hadm_id, hospital_expire_flag FROM mimiciv_hosp.admissions")
    dx = _read(
        small_sqlite_url, "SELECT hadm_id, icd_code, icd_version FROM mimiciv_hosp.diagnoses_icd"
    )
    mort = s.loc[base.index, "hadm_id"].map(a.set_index("hadm_id")["hospital_expire_flag"])
    assert (mort == base["mortality"]).all()
    los_class = np.digitize(s.loc[base.index, "los"], [3, 4, 5, 6, 7, 14])
    assert (los_class == base["los_class"]).all()
    coded = dx.merge(phenotype_icd_map(), on=["icd_code", "icd_version"])
    positive = set(zip(coded["hadm_id"], coded["column"], strict=True))
    for column in phenotype_columns():
        from_tables = [int((h, column) in positive) for h in s.loc[base.index, "hadm_id"]]
        assert from_tables == base[column].tolist(), column


def test_ground_truth_image_choice_agrees_with_metadata_and_files(
    small_source: Path, small_sqlite_url: str, ground_truth: pd.DataFrame
) -> None:
    meta = pd.read_csv(small_source / "cxr" / "mimic-cxr-2.0.0-metadata.csv.gz")
    whole = meta["StudyTime"].astype(int)
    meta["time"] = pd.to_datetime(
        meta["StudyDate"].astype(str) + whole.map("{:06d}".format), format="%Y%m%d%H%M%S"
    )
    meta["time"] += pd.to_timedelta(((meta["StudyTime"] - whole) * 1000).round(), unit="ms")

    def readable(r: pd.Series) -> bool:
        path = imaging.image_path(small_source / "cxr", r.subject_id, r.study_id, r.dicom_id)
        try:
            with Image.open(path) as im:
                im.load()
            return True
        except OSError:
            return False

    meta["ok"] = meta.apply(readable, axis=1)
    assert (~meta["ok"]).sum() >= 4  # missing and corrupt files are planted
    stays = _read(small_sqlite_url, "SELECT stay_id, subject_id, intime FROM mimiciv_icu.icustays")
    stays["intime"] = pd.to_datetime(stays["intime"])
    pairs = stays.merge(meta[(meta["ViewPosition"] == "AP") & meta["ok"]], on="subject_id")
    inside = (pairs["time"] >= pairs["intime"] - pd.Timedelta(hours=24)) & (
        pairs["time"] <= pairs["intime"] + pd.Timedelta(hours=48)
    )
    chosen = (
        pairs[inside]
        .sort_values(["stay_id", "time", "dicom_id"], ascending=[True, False, True])
        .drop_duplicates("stay_id")
        .set_index("stay_id")["dicom_id"]
    )
    truth = ground_truth.set_index("stay_id")["expected_dicom_id"].dropna()
    assert chosen.sort_index().to_dict() == truth.sort_index().to_dict()


def test_chartevents_rhythm_strings_duplicates_and_storetime(small_sqlite_url: str) -> None:
    ce = _read(small_sqlite_url, "SELECT * FROM mimiciv_icu.chartevents")
    assert set(ce["itemid"]) == {220048, 224650}
    rhythm = set(ce.loc[ce["itemid"] == 220048, "value"])
    ectopy = set(ce.loc[ce["itemid"] == 224650, "value"])
    assert {"AF (Atrial Fibrillation)", "SR (Sinus Rhythm)", "ST (Sinus Tachycardia)"} <= rhythm
    assert {"None", "PVC's"} <= ectopy
    assert ce.duplicated().sum() > 0  # exact duplicate rows, as in MIMIC (no primary key)
    lag = (pd.to_datetime(ce["storetime"]) - pd.to_datetime(ce["charttime"])).dt.total_seconds()
    assert (lag < 0).any() and (lag > 3600).any() and lag.between(-900, 3 * 3600).all()


def test_charting_densities_and_outliers(small_sqlite_url: str) -> None:
    s = _read(small_sqlite_url, "SELECT stay_id, los FROM mimiciv_icu.icustays WHERE los > 0")
    hours = s["los"].sum() * 24

    def per_hour(sql: str) -> float:
        return float(_read(small_sqlite_url, sql)["n"].iloc[0]) / hours

    assert 0.8 < per_hour("SELECT COUNT(*) AS n FROM mimiciv_derived.vitalsign") < 1.05
    assert (
        0.75
        < per_hour("SELECT COUNT(*) AS n FROM mimiciv_icu.chartevents WHERE itemid = 220048")
        < 1.0
    )
    assert 0.18 < per_hour("SELECT COUNT(*) AS n FROM mimiciv_derived.gcs") < 0.3
    v = _read(
        small_sqlite_url, "SELECT heart_rate, temperature, glucose FROM mimiciv_derived.vitalsign"
    )
    assert v["heart_rate"].max() > 200 and v["heart_rate"].min() > 0  # implausible but kept values
    assert v["temperature"].notna().mean() < 0.4  # about every 4 h
    w = _read(
        small_sqlite_url,
        "SELECT stay_id, weight, weight_type FROM mimiciv_derived.weight_durations",
    )
    assert set(w["weight_type"]) == {"admit", "daily"}
    by_type = w.groupby(["stay_id", "weight_type"])["weight"].median().unstack().dropna()
    assert (by_type["admit"] / by_type["daily"] > 1.8).any()  # pounds charted in the kg field
    g = _read(small_sqlite_url, "SELECT * FROM mimiciv_derived.gcs")
    intubated = g[g["gcs_unable"] == 1]
    assert (
        len(intubated) > 0
        and (intubated["gcs_verbal"] == 0).all()
        and (intubated["gcs"] == 15).all()
    )
    early = _read(
        small_sqlite_url,
        "SELECT COUNT(*) AS n FROM mimiciv_derived.vitalsign v JOIN mimiciv_icu.icustays i "
        "ON i.stay_id = v.stay_id WHERE v.charttime < i.intime",
    )
    assert early["n"].iloc[0] > 0  # ED vitals before ICU admission exist and must be filtered


def test_planted_signal_reaches_the_tables(
    small_sqlite_url: str, ground_truth: pd.DataFrame
) -> None:
    gt = ground_truth.set_index("stay_id")
    v = _read(
        small_sqlite_url, "SELECT stay_id, heart_rate, glucose FROM mimiciv_derived.vitalsign"
    )
    means = v.groupby("stay_id").mean()
    shown = gt["expressed"] == 1
    dm = gt.loc[means.index, "latent_diabetes"].astype(bool) & shown.loc[means.index]
    assert means.loc[dm, "glucose"].mean() - means.loc[~dm, "glucose"].mean() > 50
    ce = _read(
        small_sqlite_url, "SELECT stay_id, value FROM mimiciv_icu.chartevents WHERE itemid = 220048"
    )
    af_share = (
        ce.assign(af=ce["value"].eq("AF (Atrial Fibrillation)")).groupby("stay_id")["af"].mean()
    )
    af = gt.loc[af_share.index, "latent_af"].astype(bool) & shown.loc[af_share.index]
    assert af_share[af].mean() > 0.7 and af_share[~af].mean() < 0.05
    # CHF needs both the image finding and the EHR pattern (label noise aside).
    chf_both = gt["latent_cardiomegaly"] & gt["latent_fluid_overload"]
    assert (gt["chf"] == chf_both).mean() > 0.93


@pytest.mark.parametrize("n_patients", [2000])
def test_proportions_resemble_mimic(tmp_path: Path, n_patients: int) -> None:
    from ehrcxr.data.synthetic import synthesize

    synthesize(tmp_path / "s", n_patients=n_patients, seed=3)
    truth = json.loads((tmp_path / "s" / "ground_truth.json").read_text())
    summary = truth["summary"]
    stays = summary["icu_stays"]
    assert 1.3 < stays / n_patients < 1.6  # ≈ 73k stays for ≈ 50k patients
    assert 0.32 < summary["base_cohort"] / stays < 0.42  # ≈ 37 % reach the base cohort
    assert 0.20 < summary["matched"] / summary["base_cohort"] < 0.33  # ≈ 26 % matched
    assert 0.08 < summary["mortality_in_base"] < 0.16  # ≈ 12 %
    gt = pd.DataFrame(truth["stays"]["rows"], columns=truth["stays"]["columns"])
    prevalence = gt.loc[gt["exclusion_step"] == 0, phenotype_columns()].mean()
    assert prevalence.between(0.04, 0.5).all(), prevalence.to_dict()
    groups = gt["race_group"].value_counts(normalize=True)
    assert groups["White"] > 0.6 and groups["Black"] > 0.05
    assert set(population.PHENOTYPE_DRIVERS) == set(phenotype_columns())
