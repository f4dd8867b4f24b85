"""The one place that opens database connections: SQLite (the embedded source) and PostgreSQL.

Queries are written once, with schema-qualified names (``mimiciv_icu.icustays``). On PostgreSQL
the schemas are real; on SQLite each schema is its own file, attached under the schema's name to
a small main file, so the same SQL text runs on both engines::

    <dir>/mimiciv.sqlite            main file (table ``source_info``); its URL is the source's URL
    <dir>/mimiciv_hosp.sqlite       attached as mimiciv_hosp
    <dir>/mimiciv_icu.sqlite        attached as mimiciv_icu
    <dir>/mimiciv_derived.sqlite    attached as mimiciv_derived

Credentials stay in the URL, which comes from the command line or ``MIMIC_DB_URL``; nothing here
prints or logs a URL with its password.
"""

from __future__ import annotations

import importlib.resources
import os
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from ehrcxr.errors import EhrcxrError

SCHEMAS: tuple[str, ...] = ("mimiciv_hosp", "mimiciv_icu", "mimiciv_derived")
URL_ENV = "MIMIC_DB_URL"

# (schema, table, columns): the indexes a mimic-code build has on the columns the extraction
# filters by. Kept as data because SQLite and PostgreSQL spell CREATE INDEX differently.
INDEXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("mimiciv_hosp", "patients", ("subject_id",)),
    ("mimiciv_hosp", "admissions", ("hadm_id",)),
    ("mimiciv_hosp", "diagnoses_icd", ("hadm_id",)),
    ("mimiciv_icu", "icustays", ("stay_id",)),
    ("mimiciv_icu", "icustays", ("hadm_id",)),
    ("mimiciv_icu", "chartevents", ("stay_id", "itemid", "charttime")),
    ("mimiciv_derived", "vitalsign", ("stay_id", "charttime")),
    ("mimiciv_derived", "gcs", ("stay_id", "charttime")),
    ("mimiciv_derived", "urine_output", ("stay_id", "charttime")),
    ("mimiciv_derived", "kdigo_uo", ("stay_id", "charttime")),
    ("mimiciv_derived", "oxygen_delivery", ("stay_id", "charttime")),
    ("mimiciv_derived", "ventilator_setting", ("stay_id", "charttime")),
    ("mimiciv_derived", "weight_durations", ("stay_id", "starttime")),
)


class DatabaseError(EhrcxrError):
    """A database that cannot be opened or queried, described without its password."""


def resolve_url(url: str | None) -> str:
    """The URL given, else ``$MIMIC_DB_URL``; a one-line error when neither is set."""
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise DatabaseError(f"no database URL: pass --db-url or set {URL_ENV}")
    return url


def describe(url: str | URL) -> str:
    """``postgresql database 'mimiciv' on 127.0.0.1:5432``: names host and database, no secret."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return f"sqlite database '{u.database}'"
    port = u.port or 5432
    return f"{backend} database '{u.database}' on {u.host or 'localhost'}:{port}"


def _driver_reason(exc: BaseException, url: URL) -> str:
    # First line of the driver's message only, with the password scrubbed should a driver echo it.
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0].strip()
    if url.password:
        first = first.replace(str(url.password), "***")
    return first


def query_error(exc: sa.exc.DBAPIError, url: str | URL) -> DatabaseError:
    """A failed query as one line: the database, and the driver's first line (e.g. ``permission
    denied for table icustays``, ``column x.charttime does not exist``), no password, no SQL."""
    u = make_url(url)
    return DatabaseError(f"query on {describe(u)} failed: {_driver_reason(exc, u)}")


def sqlite_url(main_file: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL of an embedded source's main file."""
    return f"sqlite:///{Path(main_file).resolve()}"


def open_engine(url: str, *, check: bool = True) -> Engine:
    """An engine for ``url`` (``sqlite:///…/mimiciv.sqlite`` or ``postgresql+psycopg2://…``).

    With ``check``, one round trip proves the database answers; failures become a one-line
    :class:`DatabaseError` naming the host and database.
    """
    try:
        u = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DatabaseError("malformed database URL (expected dialect+driver://…)") from exc
    backend = u.get_backend_name()
    if backend == "sqlite":
        engine = _sqlite_engine(u)
    elif backend == "postgresql":
        if u.drivername == "postgresql":
            # SQLAlchemy 2.1 maps the bare dialect to psycopg 3; we ship psycopg2.
            u = u.set(drivername="postgresql+psycopg2")
        engine = sa.create_engine(u, connect_args={"connect_timeout": 10}, pool_pre_ping=True)
    else:
        raise DatabaseError(f"unsupported database backend '{backend}' (use sqlite or postgresql)")
    if check:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.DBAPIError as exc:
            engine.dispose()
            raise DatabaseError(
                f"cannot connect to {describe(u)}: {_driver_reason(exc, u)}"
            ) from None
    return engine


def _sqlite_engine(u: URL) -> Engine:
    if not u.database:
        raise DatabaseError("an embedded source needs a file: sqlite:///<dir>/mimiciv.sqlite")
    main = Path(u.database)
    if not main.is_file():
        raise DatabaseError(f"cannot open {describe(u)}: no such file")
    engine = sa.create_engine(u)

    @sa.event.listens_for(engine, "connect")
    def _attach_schemas(dbapi_conn, _record) -> None:
        for schema in SCHEMAS:
            path = main.with_name(f"{schema}.sqlite")
            if path.is_file():
                dbapi_conn.execute(f"ATTACH DATABASE ? AS {schema}", (str(path),))

    return engine


def read_sql_resource(name: str) -> str:
    """The text of ``ehrcxr/data/sql/<name>``."""
    return importlib.resources.files("ehrcxr.data.sql").joinpath(name).read_text()


def split_statements(script: str) -> list[str]:
    """Split a SQL script on ``;`` at line ends, dropping ``--`` comment lines."""
    lines = [ln for ln in script.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";")]


def create_index_statements(dialect: str) -> list[str]:
    """``CREATE INDEX`` for :data:`INDEXES` in the given dialect's spelling."""
    out = []
    for schema, table, columns in INDEXES:
        name = f"{table}_{'_'.join(columns)}_idx"
        cols = ", ".join(columns)
        if dialect == "sqlite":
            out.append(f"CREATE INDEX {schema}.{name} ON {table} ({cols})")
        else:
            out.append(f"CREATE INDEX {name} ON {schema}.{table} ({cols})")
    return out


def table_names() -> list[tuple[str, str]]:
    """(schema, table) of every table the DDL creates, in DDL order."""
    out = []
    for stmt in split_statements(read_sql_resource("mimiciv_tables.sql")):
        qualified = stmt.split("(", 1)[0].split()[-1]
        schema, table = qualified.split(".")
        out.append((schema, table))
    return out


def check_tables(engine: Engine, tables: list[str]) -> None:
    """Fail with one line naming the first missing ``schema.table`` and how to build it."""
    inspector = sa.inspect(engine)
    for qualified in tables:
        schema, table = qualified.split(".")
        if not inspector.has_table(table, schema=schema):
            if schema == "mimiciv_derived":
                how = (
                    "build the derived concepts with mimic-code: cd mimic-iv/concepts_postgres && "
                    "psql -d <db> -f postgres-make-concepts.sql (tag v3.0.1)"
                )
            else:
                how = "load MIMIC-IV v2.2 with mimic-code's mimic-iv/buildmimic/postgres scripts"
            raise DatabaseError(f"missing table {qualified} in {describe(engine.url)}: {how}")


def create_sqlite_source(db_dir: str | os.PathLike[str]) -> sqlite3.Connection:
    """An empty embedded source in ``db_dir``: the main file, one file per schema, every table.

    Returns a connection (schemas attached, journaling off for bulk loading); the caller closes it.
    """
    db_dir = Path(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_dir / "mimiciv.sqlite")
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    for schema in SCHEMAS:
        conn.execute(f"ATTACH DATABASE ? AS {schema}", (str(db_dir / f"{schema}.sqlite"),))
        conn.execute(f"PRAGMA {schema}.journal_mode=OFF")
        conn.execute(f"PRAGMA {schema}.synchronous=OFF")
    conn.execute("CREATE TABLE source_info (key TEXT PRIMARY KEY, value TEXT)")
    for stmt in split_statements(read_sql_resource("mimiciv_tables.sql")):
        conn.execute(stmt)
    return conn
