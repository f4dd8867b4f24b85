"""Hourly EHR features over each cohort stay's first 48 h, aggregated in SQL.

The feature list (``resources/features.csv``) is data: name, source table, column, per-hour
aggregation (mean, max, sum, last, indicator, interval), join key, for rhythm indicators the
chartevents itemid and value string, and for every other feature its plausible range
``valid_low ≤ value ≤ valid_high`` (units and sources: ``resources/features.md``). Every query
joins a temporary table of the cohort's stays (``ehrcxr_cohort``) and keeps only
``intime <= charttime < intime + 48 h``, so memory depends on the cohort and the window, never on
the size of chartevents.

Plausibility: a charted value outside its range is dropped before aggregation (in SQL: ``BETWEEN``
inside the aggregate, or a flag that excludes the row), and counted. The same test removes
PostgreSQL's ``'Infinity'``, ``'-Infinity'`` and ``'NaN'`` (NaN sorts above every number there)
and SQLite's ±9e999 (SQLite stores a NaN as NULL: not charted). So every aggregate is finite.

Output: a long frame ``stay_id, hour`` (0…47) plus one float column per feature, NaN where
nothing plausible was charted in that hour (rhythm indicators are 0/1 where charted); and per
ranged feature the number of non-null values charted in the cohort's windows that were dropped.
"""

from __future__ import annotations

import functools
import importlib.resources
import io

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ehrcxr.data.cohort import to_seconds
from ehrcxr.data.database import read_sql_resource

HOUR = 3600
COHORT_TABLE = "ehrcxr_cohort"
AGGREGATE_SQL = {"mean": "AVG", "max": "MAX", "sum": "SUM"}
DROPPED = "__implausible"  # suffix of a query's per-(stay, hour) count of dropped values


@functools.cache
def feature_table() -> pd.DataFrame:
    """The 27 protocol features in model input order (see module docstring)."""
    text = importlib.resources.files("ehrcxr.data.resources").joinpath("features.csv").read_text()
    # keep_default_na=False: the ectopy value string 'None' is data, not a missing value.
    table = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype=str)
    table["itemid"] = pd.to_numeric(table["itemid"].replace("", np.nan))
    for bound in ("valid_low", "valid_high"):
        table[bound] = pd.to_numeric(table[bound].replace("", np.nan))
    ranged = table["aggregation"] != "indicator"
    low, high = table["valid_low"].to_numpy(), table["valid_high"].to_numpy()
    bad = ranged & ~(np.isfinite(low) & np.isfinite(high) & (low < high))
    bad |= ~ranged & (table["valid_low"].notna() | table["valid_high"].notna())
    if bad.any():
        raise ValueError(
            "features.csv: every non-indicator feature needs finite valid_low < valid_high and "
            f"indicators none; not so for {', '.join(table.loc[bad, 'name'])}"
        )
    return table


def ranged_names() -> list[str]:
    """Features with a plausible range (every one but the rhythm indicators)."""
    t = feature_table()
    return t.loc[t["valid_low"].notna(), "name"].tolist()


def indicator_names() -> list[str]:
    """Features that are 0/1 indicators: filled with 0, never masked or scaled."""
    t = feature_table()
    return t.loc[t["aggregation"] == "indicator", "name"].tolist()


def hour_expression(dialect: str) -> str:
    """floor((x.charttime − c.intime) / 1 h) in exact integer arithmetic, per dialect."""
    if dialect == "sqlite":
        return (
            "((CAST(strftime('%s', x.charttime) AS INTEGER) "
            "- CAST(strftime('%s', c.intime) AS INTEGER)) / 3600)"
        )
    return "CAST(FLOOR(EXTRACT(EPOCH FROM (x.charttime - c.intime)) / 3600) AS INTEGER)"


def create_cohort_table(conn: Connection, cohort: pd.DataFrame, window_hours: int) -> None:
    """Fill the temporary ``ehrcxr_cohort`` (stay_id, subject_id, hadm_id, intime, window_end)."""
    conn.execute(sa.text(f"DROP TABLE IF EXISTS {COHORT_TABLE}"))
    conn.execute(
        sa.text(
            f"CREATE TEMPORARY TABLE {COHORT_TABLE} (stay_id INTEGER PRIMARY KEY, "
            "subject_id INTEGER, hadm_id INTEGER, intime TIMESTAMP, window_end TIMESTAMP)"
        )
    )
    intime = to_seconds(cohort["intime"])
    fmt = lambda s: np.datetime_as_string(s.astype("datetime64[s]"), unit="s")  # noqa: E731
    rows = [
        {
            "stay_id": int(a),
            "subject_id": int(b),
            "hadm_id": int(c),
            "intime": str(d).replace("T", " "),
            "window_end": str(e).replace("T", " "),
        }
        for a, b, c, d, e in zip(
            cohort["stay_id"],
            cohort["subject_id"],
            cohort["hadm_id"],
            fmt(intime),
            fmt(intime + window_hours * HOUR),
            strict=True,
        )
    ]
    conn.execute(
        sa.text(
            f"INSERT INTO {COHORT_TABLE} "
            "VALUES (:stay_id, :subject_id, :hadm_id, :intime, :window_end)"
        ),
        rows,
    )


def _frame(conn: Connection, sql: str, params: dict | None = None) -> pd.DataFrame:
    result = conn.execute(sa.text(sql), params or {})
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _plausible(column: str, k: int) -> str:
    """SQL true when ``column`` lies in the range bound as ``:lo<k>``, ``:hi<k>`` (NULL: null)."""
    return f"x.{column} BETWEEN :lo{k} AND :hi{k}"


def _plausible_flag(column: str) -> str:
    """SQL 1 when ``column`` lies in the range bound as ``:lo0``, ``:hi0``, else 0."""
    return f"CASE WHEN {_plausible(column, 0)} THEN 1 ELSE 0 END"


def _bounds(k: int, row) -> dict[str, float]:
    return {f"lo{k}": float(row.valid_low), f"hi{k}": float(row.valid_high)}


def extract_hourly(
    conn: Connection, cohort: pd.DataFrame, window_hours: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every feature per (stay, hour), and per ranged feature the number of implausible values
    dropped (see the module docstring); the cohort table must exist on ``conn``."""
    dialect = conn.dialect.name
    hour = hour_expression(dialect)
    features = feature_table()
    stays = np.sort(cohort["stay_id"].to_numpy().astype(np.int64))
    names = features["name"].tolist()
    values = np.full((len(stays) * window_hours, len(names)), np.nan)
    implausible = dict.fromkeys(ranged_names(), 0)

    def put(frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        row = np.searchsorted(stays, frame["stay_id"].to_numpy().astype(np.int64)) * window_hours
        row = row + frame["hour"].to_numpy().astype(np.int64)
        for column in frame.columns.drop(["stay_id", "hour"]):
            if column.endswith(DROPPED):
                implausible[column.removesuffix(DROPPED)] += int(frame[column].sum())
            else:
                values[row, names.index(column)] = frame[column].astype(float).to_numpy()

    template = read_sql_resource("hourly_aggregate.sql")
    for (source, join_on, agg), group in features.groupby(
        ["source", "join_on", "aggregation"], sort=False
    ):
        if agg in AGGREGATE_SQL:
            params, parts = {}, []
            for k, row in enumerate(group.itertuples(index=False)):
                params |= _bounds(k, row)
                ok, c, n = _plausible(row.column, k), row.column, row.name
                parts.append(f"{AGGREGATE_SQL[agg]}(CASE WHEN {ok} THEN x.{c} END) AS {n}")
                parts.append(
                    f"SUM(CASE WHEN x.{c} IS NULL OR {ok} THEN 0 ELSE 1 END) AS {n}{DROPPED}"
                )
            sql = template.format(
                source=source, join_on=join_on, hour=hour, aggregates=", ".join(parts), filter=""
            )
            put(_frame(conn, sql, params))
        elif agg == "indicator":
            params, parts = {}, []
            for k, row in enumerate(group.itertuples(index=False)):
                params[f"item{k}"], params[f"value{k}"] = int(row.itemid), row.value
                parts.append(
                    f"MAX(CASE WHEN x.itemid = :item{k} AND TRIM(x.{row.column}) = :value{k} "
                    f"THEN 1 ELSE 0 END) AS {row.name}"
                )
            items = sorted({int(i) for i in group["itemid"]})
            sql = template.format(
                source=source,
                join_on=join_on,
                hour=hour,
                aggregates=", ".join(parts),
                filter=f"AND x.itemid IN ({', '.join(map(str, items))})",
            )
            put(_frame(conn, sql, params))
        elif agg == "last":
            last = read_sql_resource("hourly_last.sql")
            for row in group.itertuples(index=False):
                ok = _plausible_flag(row.column)
                sql = last.format(
                    source=source, join_on=join_on, hour=hour, column=row.column, plausible=ok
                )
                frame = _frame(conn, sql, _bounds(0, row))
                put(frame.rename(columns={"value": row.name, "dropped": row.name + DROPPED}))
        elif agg == "interval":
            sql = read_sql_resource("window_intervals.sql")
            for row in group.itertuples(index=False):
                ok = _plausible_flag(row.column)
                text = sql.format(source=source, join_on=join_on, column=row.column, plausible=ok)
                frame = _frame(conn, text, _bounds(0, row))
                kept = frame["plausible"].astype(int) == 1
                implausible[row.name] += int((~kept).sum())
                put(
                    _intervals_to_hours(frame[kept], cohort, window_hours).rename(
                        columns={"value": row.name}
                    )
                )
        else:
            raise ValueError(f"unknown aggregation {agg!r} in features.csv")
    out = pd.DataFrame(values, columns=names)
    out.insert(0, "hour", np.tile(np.arange(window_hours, dtype=np.int16), len(stays)))
    out.insert(0, "stay_id", np.repeat(stays, window_hours))
    return out, implausible


def _intervals_to_hours(
    frame: pd.DataFrame, cohort: pd.DataFrame, window_hours: int
) -> pd.DataFrame:
    """Per hour, the value of the covering interval with the latest start."""
    if frame.empty:
        return pd.DataFrame({"stay_id": [], "hour": [], "value": []})
    intime = pd.Series(to_seconds(cohort["intime"]), index=cohort["stay_id"].to_numpy())
    t0 = intime.loc[frame["stay_id"].to_numpy()].to_numpy()
    start = to_seconds(frame["starttime"]) - t0
    end = to_seconds(frame["endtime"]) - t0
    # Hour h overlaps [start, end) when start < (h + 1) h and end > h h.
    first = np.clip(np.floor_divide(start, HOUR), 0, window_hours - 1)
    last = np.clip(-np.floor_divide(-end, HOUR) - 1, 0, window_hours - 1)
    n = np.maximum(last - first + 1, 0)
    rows = np.repeat(np.arange(len(frame)), n)
    hours = first[rows] + (np.arange(len(rows)) - np.repeat(np.cumsum(n) - n, n))
    expanded = pd.DataFrame(
        {
            "stay_id": frame["stay_id"].to_numpy()[rows],
            "hour": hours,
            "start": start[rows],
            "value": frame["value"].astype(float).to_numpy()[rows],
        }
    )
    expanded = expanded.sort_values(["stay_id", "hour", "start", "value"]).drop_duplicates(
        ["stay_id", "hour"], keep="last"
    )
    return expanded[["stay_id", "hour", "value"]]


def required_tables() -> list[str]:
    """Every ``schema.table`` the extraction reads."""
    base = [
        "mimiciv_hosp.patients",
        "mimiciv_hosp.admissions",
        "mimiciv_hosp.diagnoses_icd",
        "mimiciv_icu.icustays",
    ]
    return base + sorted(set(feature_table()["source"]))
