"""Copy an embedded (SQLite) source into PostgreSQL under the same schema and table names.

This is how tests, benchmarks and curious users get a real PostgreSQL MIMIC stand-in: the tables
get mimic-code's DDL types (so ``icd_code CHAR(7)`` comes back space-padded, as on a real build),
rows are streamed with ``COPY`` in chunks, and the indexes are built after loading.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import sqlalchemy as sa

from ehrcxr.data.database import (
    SCHEMAS,
    DatabaseError,
    create_index_statements,
    describe,
    open_engine,
    read_sql_resource,
    split_statements,
    table_names,
)

CHUNK_ROWS = 200_000


def source_main_file(source_dir: str | Path) -> Path:
    """``<source>/mimiciv/mimiciv.sqlite``, the main file of an embedded source."""
    main = Path(source_dir) / "mimiciv" / "mimiciv.sqlite"
    if not main.is_file():
        raise DatabaseError(f"no embedded source at {source_dir} (expected {main})")
    return main


def load_into_postgres(
    source_dir: str | Path, url: str, *, replace: bool = False
) -> dict[str, int]:
    """Create the MIMIC schemas in the PostgreSQL database at ``url`` and copy every table.

    Refuses to touch existing MIMIC schemas unless ``replace`` (then they are dropped first).
    Returns the number of rows copied per ``schema.table``.
    """
    main = source_main_file(source_dir)
    engine = open_engine(url)
    if engine.dialect.name != "postgresql":
        raise DatabaseError(f"load-db writes to PostgreSQL, not to {describe(url)}")
    with engine.begin() as conn:
        present = set(conn.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars())
        clash = sorted(present & set(SCHEMAS))
        if clash and not replace:
            raise DatabaseError(
                f"{describe(url)} already has schema(s) {', '.join(clash)}; "
                "pass --replace to drop them"
            )
        for schema in SCHEMAS:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        for stmt in split_statements(read_sql_resource("mimiciv_tables.sql")):
            conn.execute(sa.text(stmt))

    src = sqlite3.connect(f"file:{main}?mode=ro", uri=True)
    for schema in SCHEMAS:
        src.execute(
            f"ATTACH DATABASE ? AS {schema}",
            (f"file:{main.with_name(schema + '.sqlite')}?mode=ro",),
        )
    counts: dict[str, int] = {}
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for schema, table in table_names():
            counts[f"{schema}.{table}"] = _copy_table(src, cur, schema, table)
        for stmt in create_index_statements("postgresql"):
            cur.execute(stmt)
        for schema, table in table_names():
            cur.execute(f"ANALYZE {schema}.{table}")
        raw.commit()
    finally:
        raw.close()
        src.close()
        engine.dispose()
    return counts


def _copy_table(src: sqlite3.Connection, cur, schema: str, table: str) -> int:
    columns = [r[1] for r in src.execute(f"PRAGMA {schema}.table_info({table})")]
    rows = src.execute(f"SELECT {', '.join(columns)} FROM {schema}.{table}")
    total = 0
    while batch := rows.fetchmany(CHUNK_ROWS):
        buf = io.StringIO()
        # NULL is an unquoted empty field in COPY's CSV format; the source holds no empty strings.
        csv.writer(buf, lineterminator="\n").writerows(batch)
        buf.seek(0)
        cur.copy_expert(
            f"COPY {schema}.{table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buf
        )
        total += len(batch)
    return total
