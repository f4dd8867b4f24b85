"""The database layer on SQLite and a real PostgreSQL server, and the load-db copy between them."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from ehrcxr.data.database import DatabaseError, describe, open_engine, table_names
from ehrcxr.data.load_database import load_into_postgres
from ehrcxr.data.pg_cluster import _free_port


def _columns(url: str) -> dict[str, list[str]]:
    engine = open_engine(url)
    inspector = sa.inspect(engine)
    out = {}
    for schema, table in table_names():
        out[f"{schema}.{table}"] = [c["name"] for c in inspector.get_columns(table, schema=schema)]
    engine.dispose()
    return out


def _normalised(url: str, schema: str, table: str) -> pd.DataFrame:
    """Rows as a user would compare them: timestamps as text, numbers as float, CHAR trimmed."""
    engine = open_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM {schema}.{table}")).all()
        keys = list(conn.execute(sa.text(f"SELECT * FROM {schema}.{table} LIMIT 0")).keys())
    engine.dispose()

    def norm(v: object) -> object:
        if v is None:
            return None
        if hasattr(v, "isoformat"):
            return v.isoformat(sep=" ") if hasattr(v, "hour") else v.isoformat()
        if isinstance(v, Decimal | int | float) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            return v.rstrip(" ")
        return v

    frame = pd.DataFrame([[norm(v) for v in r] for r in rows], columns=keys, dtype=object)
    return frame.sort_values(keys, key=lambda s: s.astype(str)).reset_index(drop=True)


def test_postgres_copy_has_the_same_tables_and_columns(
    small_sqlite_url: str, small_postgres_url: str
) -> None:
    lite, pg = _columns(small_sqlite_url), _columns(small_postgres_url)
    assert len(lite) == 12
    assert lite == pg
    engine = open_engine(small_postgres_url)
    schemas = set(sa.inspect(engine).get_schema_names())
    engine.dispose()
    assert {"mimiciv_hosp", "mimiciv_icu", "mimiciv_derived"} <= schemas


@pytest.mark.parametrize(("schema", "table"), table_names())
def test_postgres_copy_has_the_same_rows(
    small_sqlite_url: str, small_postgres_url: str, schema: str, table: str
) -> None:
    lite = _normalised(small_sqlite_url, schema, table)
    pg = _normalised(small_postgres_url, schema, table)
    assert len(lite) > 0
    pd.testing.assert_frame_equal(lite, pg)


def test_postgres_pads_icd_codes_like_a_real_mimic_build(small_postgres_url: str) -> None:
    engine = open_engine(small_postgres_url)
    with engine.connect() as conn:
        codes = (
            conn.execute(sa.text("SELECT icd_code FROM mimiciv_hosp.diagnoses_icd")).scalars().all()
        )
        types = conn.execute(
            sa.text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_schema = 'mimiciv_hosp' "
                "AND table_name = 'diagnoses_icd' AND column_name = 'icd_code'"
            )
        ).scalar_one()
    engine.dispose()
    assert types == "character"
    assert all(len(c) == 7 for c in codes)  # CHAR(7): a query must TRIM, as on real MIMIC


def test_the_same_query_runs_on_both_engines(
    small_sqlite_url: str, small_postgres_url: str
) -> None:
    sql = (
        "SELECT i.stay_id, COUNT(*) AS n FROM mimiciv_icu.icustays i "
        "JOIN mimiciv_derived.vitalsign v ON v.stay_id = i.stay_id "
        "WHERE v.charttime >= i.intime GROUP BY i.stay_id ORDER BY i.stay_id"
    )
    results = []
    for url in (small_sqlite_url, small_postgres_url):
        engine = open_engine(url)
        with engine.connect() as conn:
            results.append([tuple(r) for r in conn.execute(sa.text(sql))])
        engine.dispose()
    assert len(results[0]) > 100
    assert results[0] == results[1]


def test_unreachable_database_is_one_line_without_the_password() -> None:
    url = f"postgresql+psycopg2://alice:hunter2-secret@127.0.0.1:{_free_port()}/mimiciv"
    with pytest.raises(DatabaseError) as err:
        open_engine(url)
    message = str(err.value)
    assert "\n" not in message
    assert "127.0.0.1" in message and "mimiciv" in message
    assert "hunter2-secret" not in message


def test_wrong_password_is_one_line_without_the_password(postgres_url: str) -> None:
    u = sa.engine.make_url(postgres_url).set(password="not-the-password-42")
    with pytest.raises(DatabaseError) as err:
        open_engine(u.render_as_string(hide_password=False))
    message = str(err.value)
    assert "\n" not in message and "not-the-password-42" not in message
    assert "authentication failed" in message and describe(u) in message


def test_cli_reports_database_errors_in_one_line_and_exits_2() -> None:
    url = f"postgresql+psycopg2://bob:pa55word-x@127.0.0.1:{_free_port()}/mimiciv"
    done = subprocess.run(
        [sys.executable, "-m", "ehrcxr.cli", "load-db", "--source", ".", "--db-url", url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "pa55word-x" not in done.stderr


def test_missing_sqlite_file_and_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="no such file"):
        open_engine(f"sqlite:///{tmp_path}/nothing.sqlite")
    with pytest.raises(DatabaseError, match="unsupported"):
        open_engine("mysql://u:p@127.0.0.1/db")


def test_load_db_refuses_to_overwrite_without_replace(
    small_source: Path, small_postgres_url: str
) -> None:
    with pytest.raises(DatabaseError, match="--replace"):
        load_into_postgres(small_source, small_postgres_url)


def test_sqlite_source_needs_its_schema_files(small_source: Path, tmp_path: Path) -> None:
    # The main file alone (schemas not attached) cannot answer a schema-qualified query.
    lone = tmp_path / "mimiciv.sqlite"
    lone.write_bytes((small_source / "mimiciv" / "mimiciv.sqlite").read_bytes())
    engine = open_engine(f"sqlite:///{lone}")
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="no such table"):
        conn.execute(sa.text("SELECT COUNT(*) FROM mimiciv_icu.icustays"))
    engine.dispose()
