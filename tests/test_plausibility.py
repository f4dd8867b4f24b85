"""Plausibility ranges: implausible charted values (±inf, NaN, 1e9, negative rates) never reach
the hourly features or the EHR tensor, and the manifest counts what was dropped."""

from __future__ import annotations

import importlib.resources
import json
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from ehrcxr.cli import main
from ehrcxr.data import features, hourly
from ehrcxr.errors import EhrcxrError
from tiny_source import T0, TinySource, ts

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
H = timedelta(hours=1)
INF, NAN = math.inf, math.nan


def test_every_measured_feature_has_a_documented_finite_range_and_indicators_none() -> None:
    t = hourly.feature_table().set_index("name")
    doc = importlib.resources.files("ehrcxr.data.resources").joinpath("features.md").read_text()
    indicators = set(hourly.indicator_names())
    assert len(indicators) == 5 and len(t) == 27
    for name, row in t.iterrows():
        if name in indicators:
            assert np.isnan(row.valid_low) and np.isnan(row.valid_high), name
            continue
        assert np.isfinite(row.valid_low) and np.isfinite(row.valid_high), name
        assert row.valid_low < row.valid_high, name
        # features.md has one table row per feature: name, then its range as in features.csv.
        line = next(ln for ln in doc.splitlines() if ln.startswith(f"| `{name}` |"))
        assert f"{row.valid_low:g} – {row.valid_high:g}" in line, name
    assert hourly.ranged_names() == [n for n in t.index if n not in indicators]
    # Clinically, not just syntactically: the mimic-code conventions the sources hold.
    assert t.loc["gcs_gcs_verbal", "valid_low"] == 0  # 0 = "No Response-ETT" (intubated)
    assert t.loc["urine_output_urineoutput", "valid_low"] < 0  # GU irrigant in is negative
    assert t.loc["kdigo_uo_uo_tm_6hr", "valid_high"] > 12  # uo_rt_6hr needs 6 ≤ uo_tm_6hr < 12


def _source(root: Path) -> tuple[TinySource, int, int]:
    """Six stays with plausible vitals from hour 12 (so the splits have training stays) and a film;
    returns the source, and the subject and stay that get the implausible values."""
    src = TinySource(root)
    first = None
    for k in range(6):
        sid, _, stay = src.simple_stay()
        first = first or (sid, stay)
        for h in range(12, 48, 3):  # after the planted hours
            src.insert(
                "mimiciv_derived.vitalsign",
                subject_id=sid,
                stay_id=stay,
                charttime=ts(T0 + (h + 0.5) * H),
                heart_rate=70.0 + k + h,
                sbp=110.0 + h,
            )
    src.film(first[0], T0 + 2 * H)
    return src, *first


# (table, hours after intime, column values): None → leave NULL. NAN is PostgreSQL's 'NaN'
# (SQLite stores it as NULL: not charted, not counted).
IMPLAUSIBLE = [
    ("mimiciv_derived.vitalsign", 0.2, {"heart_rate": 80.0, "sbp": 120.0}),
    ("mimiciv_derived.vitalsign", 0.4, {"heart_rate": INF, "sbp": 124.0}),  # the row stays
    ("mimiciv_derived.vitalsign", 1.2, {"heart_rate": 90.0}),
    ("mimiciv_derived.vitalsign", 1.4, {"heart_rate": NAN}),
    ("mimiciv_derived.vitalsign", 2.2, {"heart_rate": 100.0}),
    ("mimiciv_derived.vitalsign", 2.4, {"heart_rate": 1e9}),
    ("mimiciv_derived.vitalsign", 3.2, {"heart_rate": -20.0}),
    ("mimiciv_derived.vitalsign", 4.2, {"heart_rate": -INF}),
    ("mimiciv_derived.vitalsign", 5.2, {"heart_rate": 300.0}),  # the bound is inclusive
    ("mimiciv_derived.vitalsign", 5.4, {"heart_rate": 301.0}),
    ("mimiciv_derived.vitalsign", 48.5, {"heart_rate": INF}),  # outside the window: not counted
    ("mimiciv_derived.urine_output", 2.1, {"urineoutput": 50.0}),
    ("mimiciv_derived.urine_output", 2.2, {"urineoutput": 70.0}),
    ("mimiciv_derived.urine_output", 2.3, {"urineoutput": -100.0}),  # GU irrigant: plausible
    ("mimiciv_derived.urine_output", 2.4, {"urineoutput": 1e9}),
    ("mimiciv_derived.urine_output", 3.4, {"urineoutput": INF}),
    ("mimiciv_derived.ventilator_setting", 4.1, {"fio2": 60.0}),
    ("mimiciv_derived.ventilator_setting", 4.2, {"fio2": INF}),
    ("mimiciv_derived.ventilator_setting", 4.3, {"fio2": NAN}),  # NaN is MAX on PostgreSQL
    ("mimiciv_derived.gcs", 3.2, {"gcs": 9.0, "gcs_verbal": 0.0}),
    ("mimiciv_derived.gcs", 3.7, {"gcs": INF}),  # later in the hour: not the last value
    ("mimiciv_derived.gcs", 3.9, {"gcs": NAN}),
    ("mimiciv_derived.gcs", 6.5, {"gcs": 16.0}),  # the hour's only value: the hour is empty
    ("mimiciv_derived.kdigo_uo", 7.5, {"uo_tm_6hr": 1e9, "uo_rt_6hr": 0.8}),
]
# weight_durations: (start h, end h, weight)
INTERVALS = [(-2, 5, 80.0), (5, 62, INF), (10, 12, 90.0), (20, 30, NAN)]


def _plant(insert, sid: int, stay: int) -> None:
    """Insert the rows above with ``insert(table, **values)``."""
    for table, offset, values in IMPLAUSIBLE:
        keys = {"stay_id": stay, "charttime": ts(T0 + offset * H)}
        if table in ("mimiciv_derived.vitalsign", "mimiciv_derived.gcs"):
            keys["subject_id"] = sid
        if table == "mimiciv_derived.ventilator_setting":  # joined on subject_id + window
            keys |= {"subject_id": sid, "stay_id": None}
        insert(table, **keys, **values)
    for start, end, weight in INTERVALS:
        insert(
            "mimiciv_derived.weight_durations",
            stay_id=stay,
            starttime=ts(T0 + start * H),
            endtime=ts(T0 + end * H),
            weight=weight,
        )


def _expected_dropped(nan_is_charted: bool) -> dict[str, int]:
    counts = dict.fromkeys(hourly.ranged_names(), 0)
    nan = int(nan_is_charted)
    counts["vitalsign_heart_rate"] = 5 + nan  # inf, 1e9, -20, -inf, 301 (+ NaN)
    counts["urine_output_urineoutput"] = 2  # 1e9, inf
    counts["ventilator_setting_fio2"] = 1 + nan  # inf (+ NaN)
    counts["gcs_gcs"] = 2 + nan  # inf, 16 (+ NaN)
    counts["kdigo_uo_uo_tm_6hr"] = 1  # 1e9 h
    counts["weight_durations_weight"] = 1 + nan  # inf (+ NaN)
    return counts


def _check_hourly(h: pd.DataFrame) -> None:
    """The planted stay's hours: aggregates of the plausible values only."""
    assert len(h) == 48 and np.isfinite(h.drop(columns="stay_id").fillna(0).to_numpy()).all()
    hr = h["vitalsign_heart_rate"]
    assert hr[0] == 80 and hr[1] == 90 and hr[2] == 100 and hr[5] == 300
    assert np.isnan(hr[3]) and np.isnan(hr[4])
    assert h.loc[0, "vitalsign_sbp"] == 122  # the inf heart rate's row keeps its sbp
    assert h.loc[2, "urine_output_urineoutput"] == 20  # 50 + 70 - 100
    assert np.isnan(h.loc[3, "urine_output_urineoutput"])
    assert h.loc[4, "ventilator_setting_fio2"] == 60
    assert h.loc[3, "gcs_gcs"] == 9 and h.loc[3, "gcs_gcs_verbal"] == 0
    assert h["gcs_gcs"].notna().sum() == 1  # hour 6's 16 is gone
    assert np.isnan(h.loc[7, "kdigo_uo_uo_tm_6hr"]) and h.loc[7, "kdigo_uo_uo_rt_6hr"] == 0.8
    w = h["weight_durations_weight"]
    assert w[0:5].tolist() == [80.0] * 5 and w[10:12].tolist() == [90.0] * 2
    assert w[5:10].isna().all() and w[12:].isna().all()


def _extract_and_featurize(tmp_path: Path, db: list[str], stay: int) -> tuple[dict, np.ndarray]:
    out = tmp_path / "out"
    extract = ["extract", *db, "--out", str(out / "extract")]
    metrics = ["--metrics", str(out / "cohort.json"), "--params", str(PARAMS)]
    assert main([*extract, *metrics]) == 0
    hours = pd.read_parquet(out / "extract" / "hourly.parquet")
    _check_hourly(hours[hours["stay_id"] == stay].set_index("hour"))
    featurize = ["featurize", "--extract", str(out / "extract"), "--out", str(out / "features")]
    assert main([*featurize, "--params", str(PARAMS)]) == 0
    manifest = json.loads((out / "cohort.json").read_text())
    return manifest, np.load(out / "features" / "ehr.npy")


def test_postgresql_drops_and_counts_infinity_nan_and_absurd_values(
    tmp_path: Path, postgres_url: str
) -> None:
    from ehrcxr.data.load_database import load_into_postgres

    src, sid, stay = _source(tmp_path / "src")
    src.close()
    name = f"plausible_{tmp_path.name.lower()[-20:]}".replace("-", "_")
    server = sa.engine.make_url(postgres_url)
    admin = sa.create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        load_into_postgres(tmp_path / "src", url)
        engine = sa.create_engine(url)
        with engine.begin() as conn:

            def insert(table: str, **values: object) -> None:
                cols = ", ".join(values)
                marks = ", ".join(f":{c}" for c in values)
                conn.execute(sa.text(f"INSERT INTO {table} ({cols}) VALUES ({marks})"), values)

            _plant(insert, sid, stay)
            # The premise: PostgreSQL holds real infinities and NaN, not NULLs.
            held = conn.execute(
                sa.text(
                    "SELECT SUM(CASE WHEN heart_rate = 'Infinity'::float8 THEN 1 ELSE 0 END), "
                    "SUM(CASE WHEN heart_rate = '-Infinity'::float8 THEN 1 ELSE 0 END), "
                    "SUM(CASE WHEN heart_rate = 'NaN'::float8 THEN 1 ELSE 0 END) "
                    "FROM mimiciv_derived.vitalsign"
                )
            ).one()
            assert tuple(held) == (2, 1, 1)
        engine.dispose()
        db = ["--db-url", url, "--cxr-root", str(src.cxr_root)]
        manifest, tensor = _extract_and_featurize(tmp_path, db, stay)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    assert manifest["implausible"] == _expected_dropped(nan_is_charted=True)
    assert tensor.dtype == np.float32 and tensor.shape[:2] == (6, 48)
    assert np.isfinite(tensor).all()


def test_sqlite_drops_and_counts_infinity_and_absurd_values(tmp_path: Path) -> None:
    src, sid, stay = _source(tmp_path / "src")
    _plant(src.insert, sid, stay)
    held = src.conn.execute(
        "SELECT SUM(heart_rate = 9e999), SUM(heart_rate = -9e999), "
        "SUM(heart_rate IS NULL) FROM mimiciv_derived.vitalsign WHERE stay_id = ?",
        (stay,),
    ).fetchone()
    assert held == (2, 1, 1)  # SQLite stores the NaN as NULL
    src.close()
    db = ["--db-url", src.url, "--cxr-root", str(src.cxr_root)]
    manifest, tensor = _extract_and_featurize(tmp_path, db, stay)
    assert manifest["implausible"] == _expected_dropped(nan_is_charted=False)
    assert np.isfinite(tensor).all()


def _extract_dir(root: Path, hours: pd.DataFrame, stays: list[int]) -> Path:
    root.mkdir()
    splits = ["train"] * (len(stays) - 1) + ["test"]
    pd.DataFrame({"stay_id": stays, "split": splits}).to_parquet(root / "cohort.parquet")
    hours.to_parquet(root / "hourly.parquet", index=False)
    return root


def _plausible_hours(stays: list[int]) -> pd.DataFrame:
    names = hourly.feature_table()["name"].tolist()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.uniform(1, 2, (len(stays) * 48, len(names))), columns=names)
    frame.insert(0, "hour", np.tile(np.arange(48), len(stays)))
    frame.insert(0, "stay_id", np.repeat(stays, 48))
    return frame


def test_featurize_refuses_an_hourly_input_holding_infinities(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stays = [1, 2, 3]
    hours = _plausible_hours(stays)
    hours.loc[5, "vitalsign_heart_rate"] = INF
    hours.loc[[7, 60], "vitalsign_sbp"] = -INF
    hours.loc[8, "vitalsign_dbp"] = NAN  # missing: fine
    extract = _extract_dir(tmp_path / "extract", hours, stays)
    out = tmp_path / "features"
    argv = ["featurize", "--extract", str(extract), "--out", str(out), "--params", str(PARAMS)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    # Refused as input (not repaired, not only caught in the tensor), naming features and counts.
    assert "hourly features hold infinite values (vitalsign_heart_rate: 1, vitalsign_sbp: 2)" in err
    assert "dbp" not in err
    assert not out.exists()
    # The same frame without the infinities featurizes.
    hours.loc[[5, 7, 60], ["vitalsign_heart_rate", "vitalsign_sbp"]] = NAN
    hours.to_parquet(extract / "hourly.parquet", index=False)
    assert main(argv) == 0 and np.isfinite(np.load(out / "ehr.npy")).all()


def test_a_tensor_that_would_not_be_finite_is_refused() -> None:
    """A finite input that overflows float32 once scaled (a test stay: not in the statistics)."""
    stays = [1, 2, 3]
    hours = _plausible_hours(stays)
    hours.loc[hours["stay_id"] == 3, "vitalsign_glucose"] = 1e300
    names = hourly.feature_table()["name"].tolist()
    build = (np.array(stays), np.array([True, True, False]), names, hourly.indicator_names(), 48)
    with pytest.raises(EhrcxrError, match=r"not finite|non-finite") as err:
        features.build(hours, *build, 0.9)
    assert str(err.value).endswith("(vitalsign_glucose: 48)")
    hours.loc[hours["stay_id"] == 3, "vitalsign_glucose"] = 1.5
    assert np.isfinite(features.build(hours, *build, 0.9).tensor).all()
