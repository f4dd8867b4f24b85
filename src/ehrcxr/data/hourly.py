"""Hourly EHR features over each cohort stay's first 48 h, aggregated in SQL.

The feature list (``resources/features.csv``) is data: name, source table, column, per-hour
aggregation (mean, max, sum, last, indicator, interval), join key, and for rhythm indicators the
chartevents itemid and value string. Every query joins a temporary table of the cohort's stays
(``ehrcxr_cohort``) and keeps only ``intime <= charttime < intime + 48 h``, so memory depends on
the cohort and the window, never on the size of chartevents.

Output: a long frame ``stay_id, hour`` (0…47) plus one float column per feature, NaN where
nothing was charted in that hour (rhythm indicators are 0/1 where charted).
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


@functools.cache
def feature_table() -> pd.DataFrame:
    """The 27 protocol features in model input order (see module docstring)."""
    text = importlib.resources.files("ehrcxr.data.resources").joinpath("features.csv").read_text()
    # keep_default_na=False: the ectopy value string 'None' is data, not a missing value.
    table = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype=str)
    table["itemid"] = pd.to_numeric(table["itemid"].replace("", np.nan))
    return table


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


def extract_hourly(conn: Connection, cohort: pd.DataFrame, window_hours: int) -> pd.DataFrame:
    """Every feature per (stay, hour); the cohort table must exist on ``conn``."""
    dialect = conn.dialect.name
    hour = hour_expression(dialect)
    features = feature_table()
    stays = np.sort(cohort["stay_id"].to_numpy().astype(np.int64))
    names = features["name"].tolist()
    values = np.full((len(stays) * window_hours, len(names)), np.nan)

    def put(frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        row = np.searchsorted(stays, frame["stay_id"].to_numpy().astype(np.int64)) * window_hours
        row = row + frame["hour"].to_numpy().astype(np.int64)
        for column in frame.columns.drop(["stay_id", "hour"]):
            values[row, names.index(column)] = frame[column].astype(float).to_numpy()

    template = read_sql_resource("hourly_aggregate.sql")
    for (source, join_on, agg), group in features.groupby(
        ["source", "join_on", "aggregation"], sort=False
    ):
        if agg in AGGREGATE_SQL:
            aggregates = ", ".join(
                f"{AGGREGATE_SQL[agg]}(x.{c}) AS {n}"
                for c, n in zip(group["column"], group["name"], strict=True)
            )
            sql = template.format(
                source=source, join_on=join_on, hour=hour, aggregates=aggregates, filter=""
            )
            put(_frame(conn, sql))
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
                frame = _frame(
                    conn, last.format(source=source, join_on=join_on, hour=hour, column=row.column)
                )
                put(frame.rename(columns={"value": row.name}))
        elif agg == "interval":
            sql = read_sql_resource("window_intervals.sql")
            for row in group.itertuples(index=False):
                frame = _frame(conn, sql.format(source=source, join_on=join_on, column=row.column))
                put(
                    _intervals_to_hours(frame, cohort, window_hours).rename(
                        columns={"value": row.name}
                    )
                )
        else:
            raise ValueError(f"unknown aggregation {agg!r} in features.csv")
    out = pd.DataFrame(values, columns=names)
    out.insert(0, "hour", np.tile(np.arange(window_hours, dtype=np.int16), len(stays)))
    out.insert(0, "stay_id", np.repeat(stays, window_hours))
    return out


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
