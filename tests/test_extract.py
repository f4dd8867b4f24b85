"""Extraction with known answers: hand-built tables for every exclusion, label and aggregation."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ehrcxr.data.cohort import CohortRules, Splits
from ehrcxr.data.cxr import ImageRules, parse_study_datetime
from ehrcxr.data.extraction import ExtractConfig, extract
from ehrcxr.errors import EhrcxrError
from tiny_source import T0, TinySource, ts

CONFIG = ExtractConfig(48, CohortRules(), ImageRules(), Splits())
H = timedelta(hours=1)


def test_every_exclusion_step_removes_exactly_its_stays(tmp_path: Path) -> None:
    src = TinySource(tmp_path)
    keep = {}
    _, _, keep["good"] = src.simple_stay()
    # Step 2: age = anchor_age + year(admittime) - anchor_year.
    minor = src.patient(anchor_age=18, anchor_year=2151)
    src.stay(minor, src.admission(minor))  # 18 + 2150 - 2151 = 17
    adult = src.patient(anchor_age=18, anchor_year=2150)
    keep["exactly_18"] = src.stay(adult, src.admission(adult))
    # Step 3: no dischtime; no diagnoses.
    src.simple_stay(dischtime=None)
    src.simple_stay(codes=())
    # Step 4: ICU before admission; outtime == intime; discharge before admission.
    src.simple_stay(admittime=T0 + H)
    s = src.patient()
    src.stay(s, src.admission(s), hours=0)
    src.simple_stay(dischtime=T0 - 5 * H)
    keep["admit_at_intime"] = src.simple_stay(admittime=T0)[2]
    # Step 5: shorter than 6 h; exactly 6 h passes step 5 but not step 8.
    src.simple_stay(hours=5.99)
    src.simple_stay(hours=6)
    # Step 6: planned admissions.
    src.simple_stay(admission_type="ELECTIVE")
    src.simple_stay(admission_type="SURGICAL SAME DAY ADMISSION")
    keep["urgent"] = src.simple_stay(admission_type="URGENT")[2]
    # Step 7: an admission with two ICU stays loses both, even when one is short.
    s = src.patient()
    hadm = src.admission(s)
    src.stay(s, hadm)
    src.stay(s, hadm, intime=T0 + 100 * H, hours=3)
    # Step 8: 48 h exactly stays; one second less goes.
    keep["exactly_48h"] = src.simple_stay(hours=48)[2]
    src.simple_stay(hours=48 - 1 / 3600)
    src.close()

    result = extract(src.url, src.cxr_root, CONFIG)
    assert sorted(result.cohort["stay_id"]) == sorted(keep.values())
    # 18 stays; the two-stay admission's 3 h stay goes at step 5, its other stay at step 7.
    assert result.attrition["n_stays"].tolist() == [18, 17, 15, 12, 10, 8, 7, 5]
    assert result.attrition["name"].tolist() == [
        "icu_stays",
        "adult",
        "discharge_and_diagnoses",
        "plausible_times",
        "min_icu_hours",
        "not_planned",
        "single_icu_stay",
        "min_window_hours",
    ]


def test_labels_mortality_los_and_phenotypes(tmp_path: Path) -> None:
    src = TinySource(tmp_path)
    los = {2.0: 0, 2.999: 0, 3.0: 1, 6.99: 4, 7.0: 5, 13.99: 5, 14.0: 6}
    stays = {d: src.simple_stay(hours=d * 24)[2] for d in los}
    _, _, dead = src.simple_stay(died=1)
    _, _, chf9 = src.simple_stay(codes=(("4280", 9), ("0389", 9)))
    _, _, chf10 = src.simple_stay(codes=(("I509", 10),))
    _, _, wrong_version = src.simple_stay(codes=(("4019", 10),))
    # A benchmark code on another admission of the same patient does not count.
    sid, _, other = src.simple_stay(codes=(("E119", 10),))
    src.admission(
        sid,
        admittime=T0 - timedelta(days=300),
        dischtime=T0 - timedelta(days=290),
        codes=(("I509", 10),),
    )
    src.close()

    c = extract(src.url, src.cxr_root, CONFIG).cohort.set_index("stay_id")
    for days, expected in los.items():
        assert c.loc[stays[days], "los_class"] == expected, days
    assert c.loc[dead, "mortality"] == 1 and c.loc[chf9, "mortality"] == 0
    assert c.loc[chf9, "chf"] == 1 and c.loc[chf9, "sepsis"] == 1  # 0389: leading zero kept
    assert c.loc[chf10, "chf"] == 1
    assert c.loc[wrong_version, "essential_hypertension"] == 0  # (code, version) both must match
    assert c.loc[stays[2.0], "essential_hypertension"] == 1
    assert c.loc[other, "chf"] == 0 and c.loc[other, "diabetes_uncomplicated"] == 1
    assert c.loc[dead, "race_group"] == "White" and c.loc[dead, "age_group"] == "45-64"


def test_hourly_aggregation_rules(tmp_path: Path) -> None:
    src = TinySource(tmp_path)
    sid, _, stay = src.simple_stay()
    vs = "mimiciv_derived.vitalsign"
    for offset, hr in [
        (-5 / 60, 150),
        (10 / 60, 80),
        (50 / 60, 100),
        (1, 70),
        (47 + 3599 / 3600, 60),
        (48, 200),
    ]:
        src.insert(vs, subject_id=sid, stay_id=stay, charttime=ts(T0 + offset * H), heart_rate=hr)
    for offset, uo in [(2, 50), (2.5, 70)]:
        src.insert(
            "mimiciv_derived.urine_output",
            stay_id=stay,
            charttime=ts(T0 + offset * H),
            urineoutput=uo,
        )
    src.insert(
        "mimiciv_derived.gcs",
        subject_id=sid,
        stay_id=stay,
        charttime=ts(T0 + 3.2 * H),
        gcs=15,
        gcs_eyes=4,
    )
    src.insert(
        "mimiciv_derived.gcs", subject_id=sid, stay_id=stay, charttime=ts(T0 + 3.7 * H), gcs=9
    )
    # Ventilator rows join on subject_id and the window (their stay_id can be NULL in MIMIC).
    for offset, fio2 in [(4.1, 50), (4.3, 60)]:
        src.insert(
            "mimiciv_derived.ventilator_setting",
            subject_id=sid,
            stay_id=None,
            charttime=ts(T0 + offset * H),
            fio2=fio2,
        )
    for offset, item, value in [
        (5, 220048, "AF (Atrial Fibrillation)"),
        (5.5, 220048, "SR (Sinus Rhythm)"),
        (5.5, 224650, "PVC's"),
        (6, 220048, "ST (Sinus Tachycardia) "),
        (7, 224650, "None"),
    ]:
        src.insert(
            "mimiciv_icu.chartevents",
            subject_id=sid,
            hadm_id=0,
            stay_id=stay,
            charttime=ts(T0 + offset * H),
            itemid=item,
            value=value,
        )
    for start, end, w in [(-2, 5, 80.0), (5, 62, 82.0), (10, 12, 90.0)]:
        src.insert(
            "mimiciv_derived.weight_durations",
            stay_id=stay,
            starttime=ts(T0 + start * H),
            endtime=ts(T0 + end * H),
            weight=w,
        )
    src.close()

    h = extract(src.url, src.cxr_root, CONFIG).hourly.set_index("hour")
    assert len(h) == 48
    hr = h["vitalsign_heart_rate"]
    assert hr[0] == 90 and hr[1] == 70 and hr[47] == 60 and hr.notna().sum() == 3
    assert h.loc[2, "urine_output_urineoutput"] == 120
    assert h.loc[3, "gcs_gcs"] == 9 and h.loc[3, "gcs_gcs_eyes"] == 4  # last non-null per column
    assert h.loc[4, "ventilator_setting_fio2"] == 60
    assert h.loc[5, ["rhythm_af", "rhythm_sr", "rhythm_pvc", "rhythm_st"]].tolist() == [1, 1, 1, 0]
    assert h.loc[6, "rhythm_st"] == 1  # trailing space trimmed
    assert h.loc[7, "rhythm_no_ectopy"] == 1 and np.isnan(h.loc[8, "rhythm_af"])
    w = h["weight_durations_weight"]
    assert (
        w[0:5].tolist() == [80.0] * 5 and w[5] == 82 and w[10] == 90 and w[11] == 90 and w[12] == 82
    )


def test_image_selection_rules(tmp_path: Path) -> None:
    src = TinySource(tmp_path)
    cases = {}
    sid, _, cases["latest"] = src.simple_stay()
    src.film(sid, T0 - 24 * H)
    want = src.film(sid, T0 + 10 * H)
    src.film(sid, T0 + 20 * H, view="LATERAL")
    src.film(sid, T0 + 48 * H, ms=500)  # 0.5 s after the window
    src.film(sid, T0 + 60 * H)
    expected = {cases["latest"]: want}

    sid, _, cases["edge_24h"] = src.simple_stay()
    expected[cases["edge_24h"]] = src.film(sid, T0 - 24 * H)
    src.film(sid, T0 - 24 * H - timedelta(seconds=1))

    sid, _, cases["edge_48h"] = src.simple_stay()
    expected[cases["edge_48h"]] = src.film(sid, T0 + 48 * H)

    sid, _, cases["tie"] = src.simple_stay()
    study = 59_000_000
    src.film(
        sid, T0 + 5 * H, dicom_id="bbbbbbbb-00000000-00000000-00000000-00000000", study_id=study
    )
    expected[cases["tie"]] = src.film(
        sid, T0 + 5 * H, dicom_id="aaaaaaaa-00000000-00000000-00000000-00000000", study_id=study
    )

    sid, _, cases["bad_latest"] = src.simple_stay()
    expected[cases["bad_latest"]] = src.film(sid, T0 + 1 * H)
    missing = src.film(sid, T0 + 2 * H, file="missing")
    corrupt = src.film(sid, T0 + 3 * H, file="corrupt")

    sid, _, cases["only_bad"] = src.simple_stay()
    src.film(sid, T0 + 2 * H, file="corrupt")
    sid, _, cases["only_pa"] = src.simple_stay()
    src.film(sid, T0 + 2 * H, view="PA")
    sid, _, cases["only_after"] = src.simple_stay()
    src.film(sid, T0 + 49 * H)
    src.close()

    result = extract(src.url, src.cxr_root, CONFIG)
    c = result.cohort.set_index("stay_id")
    chosen = c.loc[c["matched"], "dicom_id"].to_dict()
    assert chosen == expected
    assert not c.loc[[cases["only_bad"], cases["only_pa"], cases["only_after"]], "matched"].any()
    assert c["dicom_id"].isna().sum() == 3 and c["cxr_time"].isna().sum() == 3
    assert c.loc[cases["edge_24h"], "cxr_time"] == pd.Timestamp(T0 - 24 * H)
    skipped = result.skipped.set_index("dicom_id")["reason"].to_dict()
    assert skipped[missing] == "missing" and skipped[corrupt] == "unreadable" and len(skipped) == 3


def test_study_time_with_lost_leading_zeros() -> None:
    parsed = parse_study_datetime(
        pd.Series(["21800506", "21800506", "21800506"]), pd.Series(["80556.875", "5.5", "213014"])
    )
    assert parsed.tolist() == [
        pd.Timestamp("2180-05-06 08:05:56.875"),
        pd.Timestamp("2180-05-06 00:00:05.500"),
        pd.Timestamp("2180-05-06 21:30:14"),
    ]


def test_splits_are_patient_disjoint_seeded_and_inherited(
    small_sqlite_url: str, small_source: Path
) -> None:
    c = extract(small_sqlite_url, small_source / "cxr", CONFIG).cohort
    per_patient = c.groupby("subject_id")["split"].nunique()
    assert (per_patient == 1).all()
    share = c.drop_duplicates("subject_id")["split"].value_counts(normalize=True)
    assert abs(share["train"] - 0.7) < 0.02 and abs(share["test"] - 0.2) < 0.02
    again = extract(small_sqlite_url, small_source / "cxr", CONFIG).cohort
    assert (again["split"] == c["split"]).all()
    other = ExtractConfig(48, CohortRules(), ImageRules(), Splits(seed=7))
    assert (
        extract(small_sqlite_url, small_source / "cxr", other).cohort["split"] != c["split"]
    ).any()
    matched = c[c["matched"]]
    assert set(matched["split"]) == {"train", "val", "test"}


def test_cohort_equals_the_ground_truth_stay_for_stay(
    small_sqlite_url: str, small_source: Path, ground_truth: pd.DataFrame
) -> None:
    from ehrcxr.data.phenotypes import phenotype_columns

    c = (
        extract(small_sqlite_url, small_source / "cxr", CONFIG)
        .cohort.set_index("stay_id")
        .sort_index()
    )
    truth = ground_truth[ground_truth["exclusion_step"] == 0].set_index("stay_id").sort_index()
    assert c.index.tolist() == truth.index.tolist()
    for column in ["mortality", "los_class", *phenotype_columns()]:
        assert c[column].tolist() == truth[column].tolist(), column
    assert c["dicom_id"].fillna("").tolist() == truth["expected_dicom_id"].fillna("").tolist()
    times = c["cxr_time"].dropna().dt.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3]
    assert times.tolist() == truth["expected_cxr_time"].dropna().tolist()
    assert (c["race_group"] == truth["race_group"]).all()


def test_missing_table_names_it_and_says_how_to_build(small_source: Path, tmp_path: Path) -> None:
    import shutil
    import sqlite3

    from ehrcxr.data.database import sqlite_url

    copy = tmp_path / "mimiciv"
    shutil.copytree(small_source / "mimiciv", copy)
    con = sqlite3.connect(copy / "mimiciv_derived.sqlite")
    con.execute("DROP TABLE kdigo_uo")
    con.commit()
    con.close()
    with pytest.raises(EhrcxrError, match=r"mimiciv_derived\.kdigo_uo.*concepts"):
        extract(sqlite_url(copy / "mimiciv.sqlite"), small_source / "cxr", CONFIG)


def test_empty_cohort_stops_with_a_clear_message(tmp_path: Path) -> None:
    src = TinySource(tmp_path)
    src.simple_stay(hours=30)
    src.simple_stay(hours=20)
    src.close()
    with pytest.raises(EhrcxrError, match=r"base cohort is empty.*step 8"):
        extract(src.url, src.cxr_root, CONFIG)


def test_postgresql_and_sqlite_give_the_same_cohort_and_tensors(
    small_sqlite_url: str, small_postgres_url: str, small_source: Path
) -> None:
    from ehrcxr.data import features, hourly

    lite = extract(small_sqlite_url, small_source / "cxr", CONFIG)
    pg = extract(small_postgres_url, small_source / "cxr", CONFIG)
    assert len(lite.cohort) > 50
    pd.testing.assert_frame_equal(lite.cohort, pg.cohort)
    pd.testing.assert_frame_equal(lite.attrition, pg.attrition)
    pd.testing.assert_frame_equal(lite.hourly, pg.hourly, rtol=1e-9)
    names = hourly.feature_table()["name"].tolist()
    tensors = [
        features.build(
            r.hourly,
            r.cohort["stay_id"].to_numpy(),
            (r.cohort["split"] == "train").to_numpy(),
            names,
            hourly.indicator_names(),
            48,
            0.9,
        ).tensor
        for r in (lite, pg)
    ]
    np.testing.assert_allclose(tensors[0], tensors[1], rtol=1e-6, atol=1e-6)


def test_extract_cli_against_postgresql_equals_the_embedded_default(
    tmp_path: Path, small_postgres_url: str, small_source: Path
) -> None:
    import subprocess
    import sys

    params = Path(__file__).resolve().parents[1] / "params.yaml"
    run = [sys.executable, "-m", "ehrcxr.cli", "extract", "--params", str(params)]
    subprocess.run(
        [
            *run,
            "--db-url",
            small_postgres_url,
            "--cxr-root",
            str(small_source / "cxr"),
            "--out",
            str(tmp_path / "pg"),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run,
            "--synthetic",
            str(small_source),
            "--out",
            str(tmp_path / "lite"),
            "--metrics",
            str(tmp_path / "cohort.json"),
        ],
        check=True,
        capture_output=True,
    )
    a = pd.read_parquet(tmp_path / "pg" / "cohort.parquet")
    b = pd.read_parquet(tmp_path / "lite" / "cohort.parquet")
    pd.testing.assert_frame_equal(a, b)
    manifest = __import__("json").loads((tmp_path / "cohort.json").read_text())
    assert manifest["base_cohort"] == len(b) and manifest["matched"] == int(b["matched"].sum())
    assert manifest["attrition"]["8_min_window_hours"] == len(b)
    assert 0 < manifest["missing_fraction"]["vitalsign_heart_rate"] < 0.5


def test_unreachable_database_is_a_one_line_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    from ehrcxr.data.pg_cluster import _free_port

    url = f"postgresql+psycopg2://u:topsecret9@127.0.0.1:{_free_port()}/mimiciv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ehrcxr.cli",
            "extract",
            "--db-url",
            url,
            "--cxr-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "x"),
            "--params",
            str(Path(__file__).resolve().parents[1] / "params.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "topsecret9" not in done.stderr
    assert "127.0.0.1" in done.stderr and "mimiciv" in done.stderr


def test_a_null_length_of_stay_is_an_error_never_the_last_class() -> None:
    from ehrcxr.data.cohort import add_labels

    base = pd.DataFrame(
        {
            "stay_id": [1, 2],
            "hadm_id": [10, 20],
            "hospital_expire_flag": [0, 1],
            "los": [3.5, None],
            "race": ["WHITE", "WHITE"],
            "age": [50.0, 60.0],
        }
    )
    diagnoses = pd.DataFrame({"hadm_id": [10], "icd_code": ["4280"], "icd_version": [9]})
    with pytest.raises(EhrcxrError, match=r"1 base-cohort stays have no icustays\.los"):
        add_labels(base, diagnoses)
    labelled = add_labels(base.assign(los=[3.5, 15.0]), diagnoses)
    assert labelled["los_class"].tolist() == [1, 6]
