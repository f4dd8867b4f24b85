"""Time series of ICU stays: chartevents (rhythm items) and the mimic-code derived tables.

Every stay is charted over its whole ICU stay (not only the first 48 h), at MIMIC's densities
(mimic_schema.md §1.5): vitals about hourly, temperature and GCS about every 4 h, urine hourly for
catheterised stays, oxygen and ventilator settings only while on oxygen or ventilated, daily
weights. Values follow the stay's *expressed* latent state (population.py). Times are int64
seconds; ``NULL_TIME`` and NaN mark missing values; text columns are object arrays with None.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from ehrcxr.data.synthetic.population import DAY, HOUR

Columns = dict[str, np.ndarray]

ITEM_HEART_RHYTHM = 220048
ITEM_ECTOPY_TYPE = 224650


def _vocab_draw(rng: np.random.Generator, weights: dict, size: int) -> np.ndarray:
    keys = list(weights)
    p = np.array([float(weights[k]) for k in keys])
    return np.array(keys, dtype=object)[rng.choice(len(keys), size=size, p=p / p.sum())]


class _Grid:
    """Hourly rows of every stay in a chunk: row → stay index, hour index and time."""

    def __init__(self, intime: np.ndarray, outtime: np.ndarray, every: int = 1) -> None:
        first = intime - intime % HOUR + HOUR  # first full hour after intime
        n = np.where(outtime > first, (outtime - first) // (HOUR * every) + 1, 0)
        self.stay = np.repeat(np.arange(len(intime)), n)
        starts = np.cumsum(n) - n
        self.k = np.arange(len(self.stay)) - np.repeat(starts, n)
        self.starts = starts
        self.time = first[self.stay] + self.k * HOUR * every
        self.hours = (self.time - intime[self.stay]) / HOUR

    def __len__(self) -> int:
        return len(self.stay)

    def ar1(self, rng: np.random.Generator, phi: float, sigma: float) -> np.ndarray:
        """A stationary AR(1) process per stay (sd ``sigma``), restarted at each stay's start."""
        n = len(self.stay)
        e = rng.normal(0.0, sigma * np.sqrt(1 - phi**2), n)
        first = self.k == 0
        e[first] = rng.normal(0.0, sigma, int(first.sum()))
        y = lfilter([1.0], [1.0, -phi], e)
        carry = np.where(self.starts > 0, y[np.maximum(self.starts - 1, 0)], 0.0)
        return y - carry[self.stay] * phi ** (self.k + 1.0)


def _nan_where(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    return np.where(missing, np.nan, values)


def chart_stays(rng: np.random.Generator, stays: pd.DataFrame, vocab: dict) -> dict[str, Columns]:
    """All time-series tables for a chunk of stays, as column arrays per table."""
    k = len(stays)
    intime = stays["intime"].to_numpy()
    outtime = stays["outtime"].to_numpy()
    expressed = stays["expressed"].to_numpy()

    def obs(name: str) -> np.ndarray:
        return (stays[f"latent_{name}"].to_numpy() & expressed).astype(float)

    sev = np.where(
        expressed, stays["severity"].to_numpy(), np.minimum(stays["severity"].to_numpy(), 0) * 0.3
    )
    af, aki, dm, sepsis, shock = obs("af"), obs("aki"), obs("diabetes"), obs("sepsis"), obs("shock")
    resp, stroke, fluid = obs("resp_failure"), obs("stroke"), obs("fluid_overload")
    u = rng.random(k)
    ventilated = (resp > 0) & (u < 0.85) | (sev > 1.5) & (u < 0.5) | (u < 0.05)
    vent_hours = np.round(rng.uniform(18, 96, k) + 24 * resp)
    on_oxygen = ~ventilated & (
        (resp > 0) | (sev > 0.3) & (rng.random(k) < 0.6) | (rng.random(k) < 0.3)
    )
    catheter = rng.random(k) < 0.8
    arterial = rng.random(k) < 0.38

    g = _Grid(intime, outtime)
    s = g.stay
    # ---- vital signs -----------------------------------------------------------------------
    hr = (
        78
        + 9 * sev[s]
        + 14 * sepsis[s]
        + 12 * fluid[s]
        + 12 * af[s]
        + 6 * shock[s]
        + g.ar1(rng, 0.9, 6)
    )
    hr = hr + af[s] * rng.normal(0, 8, len(g))
    rr = 18 + 2.5 * sev[s] + 4 * resp[s] + g.ar1(rng, 0.85, 3)
    mbp = 80 - 5 * sev[s] - 16 * shock[s] + 10 * fluid[s] + g.ar1(rng, 0.9, 7)
    sbp = mbp + 38 + rng.normal(0, 6, len(g))
    dbp = mbp - 18 + rng.normal(0, 4, len(g))
    spo2 = np.minimum(97.3 - 0.8 * sev[s] - 3 * resp[s] + g.ar1(rng, 0.8, 1.5), 100)
    temp = 36.9 + 1.2 * sepsis[s] + 0.15 * sev[s] + g.ar1(rng, 0.9, 0.35)
    glucose = 125 + 90 * dm[s] + 8 * sev[s] + rng.normal(0, 25, len(g))
    row_kept = rng.random(len(g)) < 0.93
    minute = np.where(rng.random(len(g)) < 0.1, rng.integers(1, 60, len(g)) * 60, 0)
    phase = rng.integers(0, 4, k)
    temp_row = ((g.k + phase[s]) % 4 == 0) & (rng.random(len(g)) < 0.9)
    gluc_row = rng.random(len(g)) < np.where(dm[s] > 0, 0.35, 0.18)
    ni_row = rng.random(len(g)) < 0.65
    # Outliers a real derived table still holds (the concept filters only impossible values).
    hr = np.where(rng.random(len(g)) < 0.002, rng.uniform(200, 299, len(g)), hr)
    sbp = np.where(rng.random(len(g)) < 0.001, rng.uniform(300, 399, len(g)), sbp)
    temp = np.where(rng.random(len(g)) < 0.001, rng.uniform(15, 25, len(g)), temp)
    glucose = np.where(rng.random(len(g)) < 0.001, rng.uniform(800, 1500, len(g)), glucose)
    sbp_ni = _nan_where(np.round(sbp + rng.normal(0, 3, len(g))), ~ni_row)
    dbp_ni = _nan_where(np.round(dbp + rng.normal(0, 2, len(g))), ~ni_row)
    mbp_ni = _nan_where(np.round(mbp + rng.normal(0, 2, len(g))), ~ni_row)
    art = arterial[s]
    sbp_all = np.where(art, np.where(ni_row, (np.round(sbp) + sbp_ni) / 2, np.round(sbp)), sbp_ni)
    dbp_all = np.where(art, np.where(ni_row, (np.round(dbp) + dbp_ni) / 2, np.round(dbp)), dbp_ni)
    mbp_all = np.where(art, np.where(ni_row, (np.round(mbp) + mbp_ni) / 2, np.round(mbp)), mbp_ni)
    keep = row_kept
    vit_time = g.time + minute
    temp_site = np.where(temp_row, _vocab_draw(rng, vocab["temperature_site"], len(g)), None)
    vitalsign: Columns = {
        "subject_id": stays["subject_id"].to_numpy()[s],
        "stay_id": stays["stay_id"].to_numpy()[s],
        "charttime": vit_time,
        "heart_rate": _nan_where(np.round(hr), rng.random(len(g)) > 0.97),
        "sbp": sbp_all,
        "dbp": dbp_all,
        "mbp": mbp_all,
        "sbp_ni": sbp_ni,
        "dbp_ni": dbp_ni,
        "mbp_ni": mbp_ni,
        "resp_rate": _nan_where(np.round(np.maximum(rr, 4)), rng.random(len(g)) > 0.96),
        "temperature": _nan_where(np.round(temp, 2), ~temp_row),
        "temperature_site": temp_site,
        "spo2": _nan_where(np.round(spo2), rng.random(len(g)) > 0.95),
        "glucose": _nan_where(np.round(np.maximum(glucose, 20)), ~gluc_row),
    }
    vitalsign = {c: v[keep] for c, v in vitalsign.items()}
    # Some stays have vitals charted in the ED minutes before ICU admission (outside the window).
    early = rng.random(k) < 0.1
    if early.any():
        e_idx = np.flatnonzero(early)
        ne = len(e_idx)
        early_rows: Columns = {c: np.full(ne, np.nan) for c in vitalsign}
        early_rows["subject_id"] = stays["subject_id"].to_numpy()[e_idx]
        early_rows["stay_id"] = stays["stay_id"].to_numpy()[e_idx]
        early_rows["charttime"] = intime[e_idx] - rng.integers(5, 56, ne) * 60
        early_rows["heart_rate"] = np.round(90 + 10 * sev[e_idx] + rng.normal(0, 8, ne))
        early_rows["resp_rate"] = np.round(20 + 2 * sev[e_idx] + rng.normal(0, 3, ne))
        early_rows["spo2"] = np.round(np.minimum(96 + rng.normal(0, 2, ne), 100))
        early_rows["temperature_site"] = np.full(ne, None, dtype=object)
        vitalsign = _concat_sorted([vitalsign, early_rows], ("stay_id", "charttime"))

    # ---- rhythm items in chartevents (same nursing times as the vitals) ------------------------
    chartevents = _rhythm_events(rng, stays, g, hr, af, keep, vit_time, vocab)

    # ---- GCS every ~4 h ---------------------------------------------------------------------
    phase2 = rng.integers(0, 4, k)
    gcs_row = ((g.k + phase2[s]) % 4 == 0) & (rng.random(len(g)) < 0.9)
    gi = np.flatnonzero(gcs_row)
    gs = s[gi]
    neuro = np.maximum(sev[gs], 0)
    motor = np.clip(6 - np.round(neuro + 2.5 * stroke[gs] + rng.normal(0, 0.5, len(gi))), 1, 6)
    verbal = np.clip(5 - np.round(neuro + 2.0 * stroke[gs] + rng.normal(0, 0.5, len(gi))), 1, 5)
    eyes = np.clip(4 - np.round(0.7 * neuro + 1.5 * stroke[gs] + rng.normal(0, 0.5, len(gi))), 1, 4)
    intubated = ventilated[gs] & (g.hours[gi] < vent_hours[gs])
    verbal = np.where(intubated, 0.0, verbal)
    # mimic-code: an intubated patient's verbal score is 0 and the total is set to 15.
    total = np.where(intubated, 15.0, motor + verbal + eyes)
    gcs: Columns = {
        "subject_id": stays["subject_id"].to_numpy()[gs],
        "stay_id": stays["stay_id"].to_numpy()[gs],
        "charttime": g.time[gi],
        "gcs": total,
        "gcs_motor": motor,
        "gcs_verbal": verbal,
        "gcs_eyes": eyes,
        "gcs_unable": intubated.astype(np.int64),
    }

    # ---- weights, urine output, KDIGO ---------------------------------------------------------
    weight_durations = _weights(rng, stays, fluid)
    urine_output = _urine(rng, stays, g, aki, sev, catheter)
    kdigo_uo = _kdigo(urine_output, weight_durations, stays)

    # ---- oxygen delivery and ventilator settings ------------------------------------------------
    oxygen_delivery, ventilator_setting = _respiratory(
        rng, stays, g, sev, resp, ventilated, vent_hours, on_oxygen, vocab
    )
    return {
        "chartevents": chartevents,
        "vitalsign": vitalsign,
        "gcs": gcs,
        "urine_output": urine_output,
        "kdigo_uo": kdigo_uo,
        "oxygen_delivery": oxygen_delivery,
        "ventilator_setting": ventilator_setting,
        "weight_durations": weight_durations,
    }


def _concat_sorted(parts: list[Columns], keys: tuple[str, str]) -> Columns:
    out = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    order = np.lexsort((out[keys[1]], out[keys[0]]))
    return {c: v[order] for c, v in out.items()}


def _rhythm_events(
    rng: np.random.Generator,
    stays: pd.DataFrame,
    g: _Grid,
    hr: np.ndarray,
    af: np.ndarray,
    keep: np.ndarray,
    times: np.ndarray,
    vocab: dict,
) -> Columns:
    s = g.stay
    n = len(g)
    rhythm = _vocab_draw(
        rng, {k: v for k, v in vocab["heart_rhythm"].items() if not k.startswith("AF")}, n
    )
    rhythm = np.where(
        hr > 100, np.where(rng.random(n) < 0.8, "ST (Sinus Tachycardia)", rhythm), rhythm
    )
    rhythm = np.where(
        hr < 58, np.where(rng.random(n) < 0.7, "SB (Sinus Bradycardia)", rhythm), rhythm
    )
    rhythm = np.where((af[s] > 0) & (rng.random(n) < 0.85), "AF (Atrial Fibrillation)", rhythm)
    ectopy = _vocab_draw(rng, vocab["ectopy_type"], n)
    has_rhythm = keep & (rng.random(n) < 0.93)
    has_ectopy = keep & (rng.random(n) < 0.83)
    ri, ei = np.flatnonzero(has_rhythm), np.flatnonzero(has_ectopy)
    rows = np.concatenate([ri, ei])
    item = np.concatenate([np.full(len(ri), ITEM_HEART_RHYTHM), np.full(len(ei), ITEM_ECTOPY_TYPE)])
    value = np.concatenate([rhythm[ri], ectopy[ei]]).astype(object)
    # Charting corrections and double documentation: ~0.5 % exact duplicate rows.
    dup = rng.random(len(rows)) < 0.005
    rows, item, value = np.r_[rows, rows[dup]], np.r_[item, item[dup]], np.r_[value, value[dup]]
    order = np.lexsort((item, times[rows], s[rows]))
    rows, item, value = rows[order], item[order], value[order]
    m = len(rows)
    charttime = times[rows]
    # storetime: validated minutes to hours after charting, sometimes a little before.
    lag = np.select(
        [rng.random(m) < 0.85, rng.random(m) < 0.67],
        [rng.uniform(0, 1800, m), rng.uniform(1800, 3 * HOUR, m)],
        rng.uniform(-900, 0, m),
    ).astype(np.int64)
    storetime = charttime + lag
    # duplicates keep their original's storetime
    caregiver = rng.integers(1000, 99999, len(stays))
    return {
        "subject_id": stays["subject_id"].to_numpy()[s[rows]],
        "hadm_id": stays["hadm_id"].to_numpy()[s[rows]],
        "stay_id": stays["stay_id"].to_numpy()[s[rows]],
        "caregiver_id": caregiver[s[rows]],
        "charttime": charttime,
        "storetime": _dedup_storetime(rows, item, storetime),
        "itemid": item,
        "value": value,
        "valuenum": np.full(m, np.nan),
        "valueuom": np.full(m, None, dtype=object),
        "warning": np.zeros(m, dtype=np.int64),
    }


def _dedup_storetime(rows: np.ndarray, item: np.ndarray, storetime: np.ndarray) -> np.ndarray:
    # An exact duplicate repeats its original's storetime too.
    same = np.r_[False, (rows[1:] == rows[:-1]) & (item[1:] == item[:-1])]
    out = storetime.copy()
    for i in np.flatnonzero(same):
        out[i] = out[i - 1]
    return out


def _weights(rng: np.random.Generator, stays: pd.DataFrame, fluid: np.ndarray) -> Columns:
    """weight_durations: the admit weight from intime − 2 h, then daily weights at 04:00."""
    k = len(stays)
    intime = stays["intime"].to_numpy()
    outtime = stays["outtime"].to_numpy()
    w0 = np.clip(rng.normal(80, 18, k), 40, 180)
    valid = outtime > intime
    first_daily = intime - intime % DAY + DAY + 4 * HOUR
    n_daily = np.where(valid & (outtime > first_daily), (outtime - first_daily) // DAY + 1, 0)
    stay = np.repeat(np.arange(k), n_daily)
    day = np.arange(len(stay)) - np.repeat(np.cumsum(n_daily) - n_daily, n_daily)
    charted = rng.random(len(stay)) < 0.8
    stay, day = stay[charted], day[charted]
    d_start = first_daily[stay] + day * DAY
    d_weight = w0[stay] + fluid[stay] * 3.0 * (day + 1) + rng.normal(0, 0.7, len(stay))
    a = np.flatnonzero(valid)
    a_weight = np.where(rng.random(len(a)) < 0.02, w0[a] * 2.2046, w0[a])  # lbs in the kg field
    stay_all = np.r_[a, stay]
    start = np.r_[intime[a] - 2 * HOUR, d_start]
    weight = np.round(np.r_[a_weight, d_weight], 1)
    wtype = np.r_[np.full(len(a), "admit", dtype=object), np.full(len(stay), "daily", dtype=object)]
    order = np.lexsort((start, stay_all))
    stay_all, start, weight, wtype = stay_all[order], start[order], weight[order], wtype[order]
    nxt_same = np.r_[stay_all[1:] == stay_all[:-1], False]
    end = np.where(nxt_same, np.r_[start[1:], 0], outtime[stay_all] + 2 * HOUR)
    return {
        "stay_id": stays["stay_id"].to_numpy()[stay_all],
        "starttime": start,
        "endtime": end,
        "weight": weight,
        "weight_type": wtype,
    }


def _urine(
    rng: np.random.Generator,
    stays: pd.DataFrame,
    g: _Grid,
    aki: np.ndarray,
    sev: np.ndarray,
    catheter: np.ndarray,
) -> Columns:
    """urine_output: hourly Foley volumes, or voids every few hours without a catheter."""
    s = g.stay
    n = len(g)
    hourly = catheter[s] & (rng.random(n) < 0.9)
    void = ~catheter[s] & (rng.random(n) < 0.22)
    row = hourly | void
    base = 85 * np.exp(-1.0 * aki[s] - 0.2 * sev[s]) * rng.lognormal(0, 0.45, n)
    volume = np.where(void, base * 4.5, base)
    volume = np.where(rng.random(n) < 0.001, -rng.uniform(50, 300, n), volume)  # GU irrigant in
    idx = np.flatnonzero(row)
    return {
        "stay_id": stays["stay_id"].to_numpy()[s[idx]],
        "charttime": g.time[idx],
        "urineoutput": np.round(volume[idx]),
    }


def _kdigo(urine: Columns, weights: Columns, stays: pd.DataFrame) -> Columns:
    """kdigo_uo per urine charttime: volumes and documented hours over 6/12/24 h, rates in mL/kg/h.

    Follows the mimic-code v2.5+ logic: a rate is reported only when enough hours are documented
    (6 ≤ uo_tm_6hr < 12; uo_tm_12hr ≥ 12; uo_tm_24hr ≥ 24).
    """
    stay_ids = urine["stay_id"]
    t = urine["charttime"]
    n = len(t)
    out: Columns = {"stay_id": stay_ids, "charttime": t}
    if n == 0:
        for c in (
            "weight",
            "urineoutput_6hr",
            "urineoutput_12hr",
            "urineoutput_24hr",
            "uo_rt_6hr",
            "uo_rt_12hr",
            "uo_rt_24hr",
            "uo_tm_6hr",
            "uo_tm_12hr",
            "uo_tm_24hr",
        ):
            out[c] = np.zeros(0)
        return out
    intime = pd.Series(stays["intime"].to_numpy(), index=stays["stay_id"].to_numpy())
    first = np.r_[True, stay_ids[1:] != stay_ids[:-1]]
    prev = np.r_[0, t[:-1]]
    tm = np.where(first, np.maximum(t - intime.loc[stay_ids].to_numpy(), 0), t - prev) / HOUR
    # A key that keeps stays apart so one searchsorted serves every stay.
    rank = np.cumsum(first) - 1
    key = rank * 10**10 + (t - t.min())
    vol_cum = np.r_[0.0, np.cumsum(urine["urineoutput"])]
    tm_cum = np.r_[0.0, np.cumsum(tm)]
    # Weight at charttime: the covering interval with the latest start.
    w_key = pd.DataFrame(
        {"stay_id": weights["stay_id"], "start": weights["starttime"], "w": weights["weight"]}
    )
    u_df = pd.DataFrame({"stay_id": stay_ids, "start": t, "i": np.arange(n)}).sort_values("start")
    merged = pd.merge_asof(
        u_df, w_key.sort_values("start"), on="start", by="stay_id", direction="backward"
    )
    weight = merged.sort_values("i")["w"].to_numpy()
    out["weight"] = weight
    for hours in (6, 12, 24):
        left = np.searchsorted(key, key - hours * HOUR, side="right")
        vol = vol_cum[np.arange(n) + 1] - vol_cum[left]
        docs = tm_cum[np.arange(n) + 1] - tm_cum[left]
        if hours == 6:
            ok = (docs >= 6) & (docs < 12)
        else:
            ok = docs >= hours
        rate = np.where(
            ok & (weight > 0),
            vol / np.where(weight > 0, weight, 1) / np.maximum(docs, 1e-9),
            np.nan,
        )
        out[f"urineoutput_{hours}hr"] = vol
        out[f"uo_rt_{hours}hr"] = np.round(rate, 4)
        out[f"uo_tm_{hours}hr"] = np.round(docs, 2)
    order = [
        "stay_id",
        "charttime",
        "weight",
        "urineoutput_6hr",
        "urineoutput_12hr",
        "urineoutput_24hr",
        "uo_rt_6hr",
        "uo_rt_12hr",
        "uo_rt_24hr",
        "uo_tm_6hr",
        "uo_tm_12hr",
        "uo_tm_24hr",
    ]
    return {c: out[c] for c in order}


def _respiratory(
    rng: np.random.Generator,
    stays: pd.DataFrame,
    g: _Grid,
    sev: np.ndarray,
    resp: np.ndarray,
    ventilated: np.ndarray,
    vent_hours: np.ndarray,
    on_oxygen: np.ndarray,
    vocab: dict,
) -> tuple[Columns, Columns]:
    s = g.stay
    n = len(g)
    in_vent = ventilated[s] & (g.hours < vent_hours[s])
    vent_row = in_vent & (g.k % 2 == 0) & (rng.random(n) < 0.9)
    o2_row = (on_oxygen[s] | in_vent) & (g.k % 4 == 1) & (rng.random(n) < 0.9)
    vi = np.flatnonzero(vent_row)
    vs = s[vi]
    m = len(vi)
    fio2 = np.clip(np.round(40 + 12 * sev[vs] + 15 * resp[vs] + rng.normal(0, 8, m)), 21, 100)
    rr_set = rng.choice([14.0, 16.0, 18.0, 20.0], m)
    rr_total = np.round(rr_set + np.abs(rng.normal(0, 3, m)))
    tv_set = rng.choice([400.0, 450.0, 500.0], m)
    tv_obs = np.round(tv_set + rng.normal(0, 30, m))
    mode = _vocab_draw(rng, vocab["ventilator_mode"], m)
    vtype = _vocab_draw(rng, vocab["ventilator_type"], m)
    ventilator_setting: Columns = {
        "subject_id": stays["subject_id"].to_numpy()[vs],
        "stay_id": stays["stay_id"].to_numpy()[vs],
        "charttime": g.time[vi],
        "respiratory_rate_set": rr_set,
        "respiratory_rate_total": rr_total,
        "respiratory_rate_spontaneous": np.maximum(rr_total - rr_set, 0),
        "minute_volume": np.round(rr_total * tv_obs / 1000, 1),
        "tidal_volume_set": tv_set,
        "tidal_volume_observed": tv_obs,
        "tidal_volume_spontaneous": np.full(m, np.nan),
        "plateau_pressure": np.round(rng.uniform(14, 30, m)),
        "peep": rng.choice([5.0, 8.0, 10.0, 12.0], m),
        "fio2": fio2,
        "flow_rate": np.full(m, np.nan),
        "ventilator_mode": mode,
        "ventilator_mode_hamilton": np.full(m, None, dtype=object),
        "ventilator_type": vtype,
    }
    oi = np.flatnonzero(o2_row)
    os_ = s[oi]
    q = len(oi)
    vent_now = in_vent[oi]
    high = (resp[os_] > 0) & ~vent_now
    device = np.where(
        vent_now,
        _vocab_draw(rng, vocab["o2_device_ventilated"], q),
        np.where(
            high,
            _vocab_draw(rng, vocab["o2_device_high_flow"], q),
            _vocab_draw(rng, vocab["o2_device_supplemental"], q),
        ),
    )
    flow = np.where(
        vent_now,
        np.nan,
        np.where(high, np.round(rng.uniform(30, 50, q)), np.round(rng.uniform(1, 6, q))),
    )
    oxygen_delivery: Columns = {
        "subject_id": stays["subject_id"].to_numpy()[os_],
        "stay_id": stays["stay_id"].to_numpy()[os_],
        "charttime": g.time[oi],
        "o2_flow": flow,
        "o2_flow_additional": np.full(q, np.nan),
        "o2_delivery_device_1": device.astype(object),
        "o2_delivery_device_2": np.full(q, None, dtype=object),
        "o2_delivery_device_3": np.full(q, None, dtype=object),
        "o2_delivery_device_4": np.full(q, None, dtype=object),
    }
    return oxygen_delivery, ventilator_setting
