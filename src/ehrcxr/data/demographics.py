"""Sensitive attributes as the protocol defines them: race group (by prefix) and age group."""

from __future__ import annotations

import functools
import importlib.resources
import io

import numpy as np
import pandas as pd

OTHER = "Other"


@functools.cache
def _table(name: str) -> pd.DataFrame:
    text = importlib.resources.files("ehrcxr.data.resources").joinpath(name).read_text()
    return pd.read_csv(io.StringIO(text))


def race_group(race: pd.Series) -> pd.Series:
    """Map MIMIC race strings to White, Black, Hispanic/Latino, Asian or Other by prefix.

    Unknown, declined, multiple and every unlisted string map to Other (race_groups.csv).
    """
    race = race.fillna("").astype(str).str.strip()
    out = pd.Series(OTHER, index=race.index, dtype=object)
    for prefix, group in _table("race_groups.csv").itertuples(index=False):
        out[race.str.startswith(prefix)] = group
    return out


def age_group(age: pd.Series) -> pd.Series:
    """18–44, 45–64, 65–79, 80+ (age_groups.csv)."""
    table = _table("age_groups.csv")
    idx = np.searchsorted(table["min_age"].to_numpy(), age.to_numpy(dtype=float), side="right") - 1
    labels = table["group"].to_numpy(dtype=object)
    return pd.Series(np.where(idx >= 0, labels[np.clip(idx, 0, None)], None), index=age.index)
