"""Hourly features → the model's EHR tensor (benchmark_protocol.md, "Time window and features").

Steps, all statistics from the training split only:
1. features missing in more than ``max_missing_fraction`` of training stay-hours are dropped
   (rhythm indicators are never dropped: absent means 0);
2. mask channel per kept non-indicator feature: 1 where a value was measured in that hour;
3. forward fill within the stay (never backwards: no look-ahead), then the training median;
   indicators are not filled: an hour without that rhythm charted is 0;
4. (x − median) / scale with training statistics, scale = max(IQR, σ_w) where σ_w is the
   standard deviation of the training values winsorised at their 1st and 99th percentiles (both
   0 → 1); indicators are not scaled. For most features the IQR is the larger (it is 1.35 σ for
   normal data), so this is the protocol's robust scaling. The guard is for nearly constant
   features: MIMIC's ``kdigo_uo.uo_tm_12hr`` is 12 h in most hours, its IQR is 0.01, and plain
   IQR scaling turns a 0 into −1,200 — an input that swamps every other channel (it made
   MedFuse's raw-input LSTM blind to the EHR).

Result: float32 [N, T, F + M] — F kept feature values, then M masks — with stays in cohort order.

Finite, guaranteed: ``ehrcxr extract`` drops every charted value outside the feature's plausible
range (``resources/features.csv``), so ±inf never reaches ``hourly.parquet``. An hourly frame that
still holds ±inf (written by something else) is refused, not repaired — an :class:`EhrcxrError`
naming each such feature and its count — because imputing it would hide a broken input; and a
tensor with a non-finite entry (a finite but absurd value that overflows float32 once scaled) is
refused the same way, naming its channels. Both checks are real checks, not ``assert``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ehrcxr.errors import EhrcxrError


@dataclasses.dataclass
class FeatureSet:
    tensor: np.ndarray  # float32 [N, T, F + M]
    stay_ids: np.ndarray  # int64 [N]
    value_names: list[str]  # F
    mask_names: list[str]  # M
    median: dict[str, float]
    iqr: dict[str, float]
    scale: dict[str, float]  # the divisor: max(IQR, winsorised σ), 1 when both are 0
    dropped: list[str]
    missing_fraction: dict[str, float]  # per feature, over training stay-hours


def dense(hourly: pd.DataFrame, stay_ids: np.ndarray, names: list[str], hours: int) -> np.ndarray:
    """Long (stay_id, hour, features…) → float64 [N, T, F] in ``stay_ids`` order, NaN = missing."""
    out = np.full((len(stay_ids), hours, len(names)), np.nan)
    order = np.argsort(stay_ids)
    pos = order[np.searchsorted(stay_ids[order], hourly["stay_id"].to_numpy())]
    h = hourly["hour"].to_numpy().astype(int)
    out[pos, h] = hourly[names].to_numpy(dtype=float)
    return out


def forward_fill(x: np.ndarray) -> np.ndarray:
    """Carry the last observed value forward along axis 1 (time), per stay and feature."""
    t = x.shape[1]
    observed = ~np.isnan(x)
    idx = np.where(observed, np.arange(t)[None, :, None], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    filled = np.take_along_axis(x, idx, axis=1)
    # Before the first observation idx points at hour 0, which may itself be missing: stays NaN.
    return filled


def build(
    hourly: pd.DataFrame,
    stay_ids: np.ndarray,
    train: np.ndarray,
    names: list[str],
    indicators: list[str],
    hours: int,
    max_missing_fraction: float,
) -> FeatureSet:
    """The EHR tensor; ``train`` is a bool [N] marking training-split stays."""
    infinite = np.isinf(hourly[names].to_numpy(dtype=float)).sum(axis=0)
    if infinite.any():
        found = ", ".join(f"{n}: {int(k)}" for n, k in zip(names, infinite, strict=True) if k)
        raise EhrcxrError(
            f"hourly features hold infinite values ({found}); `ehrcxr extract` writes finite "
            "values only (implausible ones are dropped): re-extract"
        )
    raw = dense(hourly, stay_ids, names, hours)
    missing = {n: float(np.isnan(raw[train, :, i]).mean()) for i, n in enumerate(names)}
    dropped = [n for n in names if n not in indicators and missing[n] > max_missing_fraction]
    kept = [n for n in names if n not in dropped]
    raw = raw[:, :, [names.index(n) for n in kept]]
    is_ind = np.array([n in indicators for n in kept])
    masks = (~np.isnan(raw[:, :, ~is_ind])).astype(np.float32)
    median, iqr, scale = {}, {}, {}
    x = forward_fill(raw)
    for i, n in enumerate(kept):
        if is_ind[i]:
            # An hour without rhythm charting is evidence of nothing: 0, not carried forward.
            x[:, :, i] = np.nan_to_num(raw[:, :, i], nan=0.0)
            continue
        observed = raw[train, :, i]
        observed = observed[~np.isnan(observed)]
        med = float(np.median(observed)) if observed.size else 0.0
        q1, q3, p1, p99 = np.percentile(observed, [25, 75, 1, 99]) if observed.size else (0,) * 4
        winsorised_sd = float(np.clip(observed, p1, p99).std()) if observed.size else 0.0
        spread = max(float(q3 - q1), winsorised_sd) or 1.0
        median[n], iqr[n], scale[n] = med, float(q3 - q1), spread
        col = x[:, :, i]
        col[np.isnan(col)] = med
        x[:, :, i] = (col - med) / spread
    with np.errstate(over="ignore"):  # an overflow is refused just below, by name
        tensor = np.concatenate([x, masks], axis=2).astype(np.float32)
    mask_names = [f"{n}_mask" for n in np.array(kept)[~is_ind]]
    bad = (~np.isfinite(tensor)).sum(axis=(0, 1))
    if bad.any():
        found = ", ".join(
            f"{c}: {int(k)}" for c, k in zip([*kept, *mask_names], bad, strict=True) if k
        )
        raise EhrcxrError(f"the EHR tensor has non-finite entries ({found})")
    return FeatureSet(
        tensor=tensor,
        stay_ids=stay_ids,
        value_names=kept,
        mask_names=mask_names,
        median=median,
        iqr=iqr,
        scale=scale,
        dropped=dropped,
        missing_fraction=missing,
    )
