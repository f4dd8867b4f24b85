"""Patients, admissions, ICU stays, their latent clinical state, labels and planted exclusions.

Everything here is per entity (no time series): one table per MIMIC entity plus ``stays``, the
generator's own per-stay frame (latent state, expected labels, the exclusion each stay was planted
to hit). Times are int64 seconds since 1970 on the *shifted* MIMIC calendar (years 2110–2214).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ehrcxr.data.demographics import race_group
from ehrcxr.data.phenotypes import icd_to_ccs, phenotype_table

HOUR = 3600
DAY = 86400
NULL_TIME = np.iinfo(np.int64).min  # a missing timestamp in the generator's int64 arrays

# Latent per-admission states. ``modality`` says where the state shows: in the EHR time series,
# in the chest X-ray, or nowhere observable (label prevalence only). See ground_truth.json.
LATENT_FACTORS: dict[str, dict[str, object]] = {
    "af": {
        "prevalence": 0.20,
        "modality": "ehr",
        "shows_as": "AF rhythm strings, fast irregular HR",
    },
    "aki": {"prevalence": 0.25, "modality": "ehr", "shows_as": "low urine output, low KDIGO rates"},
    "diabetes": {"prevalence": 0.28, "modality": "ehr", "shows_as": "high glucose"},
    "sepsis": {"prevalence": 0.18, "modality": "ehr", "shows_as": "fever, tachycardia"},
    "shock": {"prevalence": 0.10, "modality": "ehr", "shows_as": "low MBP, tachycardia"},
    "resp_failure": {
        "prevalence": 0.22,
        "modality": "ehr",
        "shows_as": "ventilation, FiO2, low SpO2",
    },
    "stroke": {"prevalence": 0.08, "modality": "ehr", "shows_as": "low GCS motor/verbal"},
    "fluid_overload": {
        "prevalence": 0.5,
        "modality": "ehr",
        "shows_as": "daily weight +3 kg/day, HR +12, MBP +10",
    },
    "cardiomegaly": {
        "prevalence": 0.5,
        "modality": "cxr",
        "shows_as": "enlarged heart silhouette",
    },
    "opacity": {"prevalence": 0.25, "modality": "cxr", "shows_as": "focal lung opacity"},
    "effusion": {"prevalence": 0.15, "modality": "cxr", "shows_as": "basal pleural effusion"},
    "pneumothorax": {
        "prevalence": 0.06,
        "modality": "cxr",
        "shows_as": "apical lucency, pleural line",
    },
}

# How each phenotype label is generated. ``all_of``: positive when every listed latent state is
# present; ``any_of``: when one is; otherwise a base prevalence rising with age (no signal).
PHENOTYPE_DRIVERS: dict[str, dict[str, object]] = {
    "dysrhythmias": {"any_of": ["af"], "signal": "ehr"},
    "acute_renal_failure": {"any_of": ["aki"], "signal": "ehr"},
    "diabetes_uncomplicated": {"any_of": ["diabetes"], "share": 0.6, "signal": "ehr"},
    "diabetes_complicated": {"any_of": ["diabetes"], "share": 0.4, "signal": "ehr"},
    "sepsis": {"any_of": ["sepsis"], "signal": "ehr"},
    "shock": {"any_of": ["shock"], "signal": "ehr"},
    "respiratory_failure": {"any_of": ["resp_failure"], "signal": "ehr"},
    "acute_cerebrovascular": {"any_of": ["stroke"], "signal": "ehr"},
    "pneumonia": {"any_of": ["opacity"], "signal": "cxr"},
    "pleurisy_pneumothorax": {"any_of": ["effusion", "pneumothorax"], "signal": "cxr"},
    "chf": {"all_of": ["cardiomegaly", "fluid_overload"], "signal": "both"},
    "essential_hypertension": {"prevalence": 0.40, "signal": "none"},
    "lipid_disorders": {"prevalence": 0.35, "signal": "none"},
    "coronary_atherosclerosis": {"prevalence": 0.30, "signal": "none"},
    "fluid_electrolyte": {"prevalence": 0.35, "signal": "none"},
    "hypertension_complicated": {"prevalence": 0.15, "signal": "none"},
    "chronic_kidney_disease": {"prevalence": 0.15, "signal": "none"},
    "surgical_complications": {"prevalence": 0.15, "signal": "none"},
    "copd": {"prevalence": 0.14, "signal": "none"},
    "lower_respiratory_other": {"prevalence": 0.10, "signal": "none"},
    "conduction_disorders": {"prevalence": 0.08, "signal": "none"},
    "liver_disease_other": {"prevalence": 0.08, "signal": "none"},
    "acute_mi": {"prevalence": 0.07, "signal": "none"},
    "gi_hemorrhage": {"prevalence": 0.07, "signal": "none"},
    "upper_respiratory_other": {"prevalence": 0.05, "signal": "none"},
}
LABEL_FLIP = 0.03  # share of driven labels flipped (coding noise)

# In-hospital death: logistic in the true (not the expressed) state; lung = opacity or effusion.
MORTALITY_LOGIT = {
    "intercept": -3.1,
    "severity": 1.3,
    "lung": 0.6,
    "shock": 0.5,
    "sepsis": 0.3,
    "age_minus_64": 0.02,
}
# ICU stays of 48 h or more last 2 + exp(intercept + … + noise_sd · N(0, 1)) days.
LOS_LOG_EXCESS_DAYS = {
    "intercept": float(np.log(2.3)),
    "severity": 0.35,
    "lung": 0.25,
    "resp_failure": 0.3,
    "noise_sd": 0.85,
}

# Fairness plant: in this race group, a share of admissions do not express their latent state
# (EHR and image look like a healthy patient's) although their labels stay positive.
UNDEREXPRESSED_GROUP = "Black"
UNDEREXPRESSED_SHARE = 0.5

# Exclusion steps of the protocol (benchmark_protocol.md), in order; step 1 is the join itself.
EXCLUSION_STEPS: tuple[tuple[int, str], ...] = (
    (2, "age_under_18"),
    (3, "no_dischtime_or_diagnoses"),
    (4, "implausible_times"),
    (5, "shorter_than_6h"),
    (6, "planned_admission"),
    (7, "multiple_icu_stays"),
    (8, "shorter_than_48h"),
)
PLANNED_TYPES = ("ELECTIVE", "SURGICAL SAME DAY ADMISSION")
FORCED_PLANTS = (
    "minor",
    "no_dischtime",
    "no_diagnoses",
    "ed_boarding",
    "outtime_before_intime",
    "discharge_before_admit",
    "shorter_than_6h",
)

LOS_BIN_EDGES_DAYS = (3, 4, 5, 6, 7, 14)  # [2,3) … [7,14) [14,∞) → 0…6

# Real (unshifted) calendar: MIMIC-IV covers 2008–2019, MIMIC-CXR 2011–2016.
REAL_YEARS = (2008, 2019)
CXR_REAL_YEARS = (2011, 2016)
ICD10_FROM = np.datetime64("2015-10-01", "s").astype(np.int64)


@dataclasses.dataclass
class Population:
    patients: pd.DataFrame
    admissions: pd.DataFrame  # all admissions, with the generator's latent columns
    stays: pd.DataFrame  # one row per ICU stay: icustays columns + latent + expected labels
    diagnoses: pd.DataFrame


def _choice(rng: np.random.Generator, weights: dict, size: int) -> np.ndarray:
    keys = list(weights)
    p = np.array([float(weights[k]) for k in keys])
    idx = rng.choice(len(keys), size=size, p=p / p.sum())
    return np.array(keys, dtype=object)[idx]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _year_start(years: np.ndarray) -> np.ndarray:
    return (
        (years.astype("int64") - 1970)
        .astype("datetime64[Y]")
        .astype("datetime64[s]")
        .astype(np.int64)
    )


def _year_of(seconds: np.ndarray) -> np.ndarray:
    return seconds.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970


def make_population(rng: np.random.Generator, n_patients: int, vocab: dict) -> Population:
    """Draw every entity. Proportions follow mimic_schema.md §7 and benchmark_protocol.md."""
    n = n_patients
    # --- patients -------------------------------------------------------------------------
    subject_id = np.sort(rng.choice(9_000_000, size=n, replace=False)) + 10_000_000
    real_anchor = rng.integers(REAL_YEARS[0], REAL_YEARS[1] + 1, size=n)
    anchor_year = rng.integers(2113, 2206, size=n)  # admissions then fall in 2110–2214
    shift = _year_start(anchor_year) - _year_start(real_anchor)  # seconds, real → shifted
    age = np.clip(np.round(rng.normal(64, 16, size=n)), 18, 95).astype(int)
    anchor_age = np.where(age > 89, 91, age)
    group_start = REAL_YEARS[0] + 3 * ((real_anchor - REAL_YEARS[0]) // 3)
    anchor_year_group = np.array([f"{g} - {g + 2}" for g in group_start], dtype=object)
    gender = np.where(rng.random(n) < 0.56, "M", "F").astype(object)
    race = _choice(rng, vocab["race"], n)
    patients = pd.DataFrame(
        {
            "subject_id": subject_id,
            "gender": gender,
            "anchor_age": anchor_age,
            "anchor_year": anchor_year,
            "anchor_year_group": anchor_year_group,
            "race": race,
            "shift": shift,
            "real_anchor": real_anchor,
        }
    )

    # --- ICU admissions ------------------------------------------------------------------
    n_icu_adm = rng.choice([1, 2, 3, 4], size=n, p=[0.78, 0.15, 0.05, 0.02])
    adm = patients.loc[np.repeat(np.arange(n), n_icu_adm)].reset_index(drop=True)
    m = len(adm)
    first_in_patient = np.r_[
        True, adm["subject_id"].to_numpy()[1:] != adm["subject_id"].to_numpy()[:-1]
    ]
    # Real admission time: the first around the anchor year, later ones 30–700 days apart.
    start = _year_start(adm["real_anchor"].to_numpy()) + (rng.random(m) * 3 - 1) * 365 * DAY
    gaps = np.where(first_in_patient, 0, rng.uniform(30, 700, m) * DAY)
    cum = np.cumsum(gaps)
    base = np.maximum.accumulate(np.where(first_in_patient, np.arange(m), 0))
    real_admit = start[base] + (cum - cum[base])
    lo, hi = (
        _year_start(np.array([REAL_YEARS[0]]))[0],
        _year_start(np.array([REAL_YEARS[1] + 1]))[0],
    )
    real_admit = np.clip(real_admit, lo, hi - 60 * DAY).astype(np.int64)
    real_admit -= real_admit % 60  # admissions are charted to the minute
    admittime = real_admit + adm["shift"].to_numpy()

    admission_type = _choice(rng, vocab["admission_type"], m)
    n_stays = rng.choice([1, 2, 3], size=m, p=[0.91, 0.08, 0.01])
    # Rare plants are also forced onto a few otherwise-eligible admissions, so that even a
    # 200-patient source has every exclusion step remove at least two stays.
    forced = np.full(m, None, dtype=object)
    eligible = np.flatnonzero((n_stays == 1) & ~np.isin(admission_type, PLANNED_TYPES))
    for j, i in enumerate(rng.permutation(eligible)[: 2 * len(FORCED_PLANTS)]):
        forced[i] = FORCED_PLANTS[j % len(FORCED_PLANTS)]

    # Planted minors: an 18-year-old anchor with this admission 1–2 years before the anchor year.
    minor = (rng.random(m) < 0.005) | (forced == "minor")
    adm_year = _year_of(admittime)
    years_back = rng.integers(1, 3, size=m)
    admittime = np.where(
        minor,
        admittime - (adm_year - adm["anchor_year"].to_numpy() + years_back) * 365 * DAY,
        admittime,
    )
    adm.loc[minor, "anchor_age"] = 18
    # A patient's anchor age is one value: propagate the planted 18 to the patient row.
    minor_subjects = np.unique(adm.loc[minor, "subject_id"])
    patients.loc[patients["subject_id"].isin(minor_subjects), "anchor_age"] = 18
    adm["anchor_age"] = adm["subject_id"].map(patients.set_index("subject_id")["anchor_age"])
    real_admit = admittime - adm["shift"].to_numpy()

    # Latent clinical state of the admission.
    latent = {}
    severity = rng.normal(0, 1, m)
    for name, spec in LATENT_FACTORS.items():
        p = float(spec["prevalence"])
        logit = np.log(p / (1 - p))
        if name in ("shock", "resp_failure", "sepsis"):
            logit = logit + 0.8 * severity  # sicker patients more often have these
        latent[name] = rng.random(m) < _sigmoid(logit)
    group = race_group(adm["race"])
    expressed = ~(
        (group == UNDEREXPRESSED_GROUP).to_numpy() & (rng.random(m) < UNDEREXPRESSED_SHARE)
    )

    # Labels: phenotypes from the latent state, mortality and length of stay from severity.
    age_at = adm["anchor_age"].to_numpy() + _year_of(admittime) - adm["anchor_year"].to_numpy()
    labels = {}
    diabetes_split = rng.random(m)
    for column in phenotype_table()["column"]:
        spec = PHENOTYPE_DRIVERS[column]
        if "all_of" in spec:
            y = np.logical_and.reduce([latent[f] for f in spec["all_of"]])
        elif "any_of" in spec:
            y = np.logical_or.reduce([latent[f] for f in spec["any_of"]])
            if column == "diabetes_uncomplicated":
                y = y & (diabetes_split < spec["share"])
            elif column == "diabetes_complicated":
                y = y & (diabetes_split >= 1 - spec["share"])
        else:
            p = float(spec["prevalence"])
            logit = np.log(p / (1 - p)) + 0.03 * (age_at - 64)
            y = rng.random(m) < _sigmoid(logit)
        if spec["signal"] != "none":
            y = y ^ (rng.random(m) < LABEL_FLIP)
        labels[column] = y.astype(np.int8)
    lung = latent["opacity"] | latent["effusion"]
    w = MORTALITY_LOGIT
    death_logit = (
        w["intercept"]
        + w["severity"] * severity
        + w["lung"] * lung
        + w["shock"] * latent["shock"]
        + w["sepsis"] * latent["sepsis"]
        + w["age_minus_64"] * (age_at - 64)
    )
    died = rng.random(m) < _sigmoid(death_logit)

    adm = adm.assign(
        admittime=admittime,
        real_admit=real_admit,
        admission_type=admission_type,
        n_stays=n_stays,
        minor=minor,
        forced=forced,
        severity=severity,
        expressed=expressed,
        race_group=group.to_numpy(),
        died=died,
        **{f"latent_{k}": v for k, v in latent.items()},
        **labels,
    )
    adm["no_dischtime"] = (rng.random(m) < 0.003) | (forced == "no_dischtime")
    adm["no_diagnoses"] = (rng.random(m) < 0.005) | (forced == "no_diagnoses")

    stays = _make_stays(rng, adm)
    adm, stays = _finish_admissions(rng, adm, stays, vocab)
    stays = _expected_exclusion(stays)

    non_icu = _non_icu_admissions(rng, patients, vocab)
    candidates = rng.choice(9_000_000, size=2 * len(non_icu) + 100, replace=False) + 20_000_000
    non_icu["hadm_id"] = candidates[~np.isin(candidates, adm["hadm_id"])][: len(non_icu)]
    all_adm = pd.concat([adm, non_icu], ignore_index=True)
    diagnoses = _diagnoses(rng, all_adm)
    all_adm = all_adm.sort_values(["subject_id", "admittime"], kind="stable").reset_index(drop=True)
    patients = _add_dod(rng, patients, all_adm)
    return Population(patients=patients, admissions=all_adm, stays=stays, diagnoses=diagnoses)


def _make_stays(rng: np.random.Generator, adm: pd.DataFrame) -> pd.DataFrame:
    """ICU stays of each admission, with durations drawn so that the exclusions have work to do."""
    rows = adm.loc[np.repeat(adm.index.to_numpy(), adm["n_stays"].to_numpy())].reset_index(
        drop=True
    )
    k = len(rows)
    # Position of each stay within its admission.
    first = np.r_[True, rows["admittime"].to_numpy()[1:] != rows["admittime"].to_numpy()[:-1]]
    order = np.arange(k) - np.maximum.accumulate(np.where(first, np.arange(k), 0))
    # Duration: < 6 h, 6–48 h, or ≥ 48 h; the long ones depend on severity and the lungs.
    kind = rng.choice(3, size=k, p=[0.03, 0.41, 0.56])
    forced = rows["forced"].to_numpy()
    unforced = pd.isna(rows["forced"]).to_numpy()
    kind = np.where(unforced, kind, np.where(forced == "shorter_than_6h", 0, 2))
    sev = rows["severity"].to_numpy()
    lung = (rows["latent_opacity"] | rows["latent_effusion"]).to_numpy()
    resp = rows["latent_resp_failure"].to_numpy()
    w = LOS_LOG_EXCESS_DAYS
    long_days = 2 + np.exp(
        w["intercept"]
        + w["severity"] * sev
        + w["lung"] * lung
        + w["resp_failure"] * resp
        + w["noise_sd"] * rng.normal(size=k)
    )
    los_days = np.select(
        [kind == 0, kind == 1], [rng.uniform(0.02, 0.249, k), rng.uniform(0.26, 1.98, k)], long_days
    )
    los_days = np.minimum(los_days, 120.0)
    duration = np.round(los_days * DAY).astype(np.int64)
    # intime: 0.5–20 h after admission for the first stay; later stays 1–6 days after the previous.
    delay = np.round(rng.uniform(0.5, 20, k) * HOUR).astype(np.int64)
    gap = np.round(rng.uniform(1, 6, k) * DAY).astype(np.int64)
    intime = np.empty(k, dtype=np.int64)
    outtime = np.empty(k, dtype=np.int64)
    admittime = rows["admittime"].to_numpy()
    for i in range(k):  # sequential within an admission; k ≈ 73k at MIMIC size
        intime[i] = admittime[i] + delay[i] if order[i] == 0 else outtime[i - 1] + gap[i]
        outtime[i] = intime[i] + duration[i]
    # Planted implausible times: ED boarding (ICU before admission) or an outtime before intime.
    implausible = rng.choice(3, size=k, p=[0.982, 0.015, 0.003])
    implausible = np.select(
        [forced == "ed_boarding", forced == "outtime_before_intime", unforced],
        [1, 2, implausible],
        0,
    )
    intime = np.where(
        implausible == 1, admittime - np.round(rng.uniform(1, 8, k) * HOUR).astype(np.int64), intime
    )
    outtime = np.where(implausible == 1, intime + duration, outtime)
    outtime = np.where(
        implausible == 2, intime - np.round(rng.uniform(1, 30, k) * 60).astype(np.int64), outtime
    )
    stays = pd.DataFrame(
        {
            "subject_id": rows["subject_id"].to_numpy(),
            "admit_row": np.repeat(adm.index.to_numpy(), adm["n_stays"].to_numpy()),
            "intime": intime,
            "outtime": outtime,
            "los": np.round((outtime - intime) / DAY, 6),
            "stay_order": order,
            "n_stays": rows["n_stays"].to_numpy(),
            "implausible_kind": implausible,
        }
    )
    return stays


def _finish_admissions(
    rng: np.random.Generator, adm: pd.DataFrame, stays: pd.DataFrame, vocab: dict
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """IDs, discharge and death times, categorical columns; stays gain their admission's columns."""
    m = len(adm)
    adm = adm.copy()
    hadm = np.sort(rng.choice(9_000_000, size=m, replace=False)) + 20_000_000
    adm["hadm_id"] = rng.permutation(hadm)
    stays["hadm_id"] = adm["hadm_id"].to_numpy()[stays["admit_row"].to_numpy()]
    stay_ids = np.sort(rng.choice(9_000_000, size=len(stays), replace=False)) + 30_000_000
    stays["stay_id"] = rng.permutation(stay_ids)
    last_out = stays.groupby("admit_row")["outtime"].max().reindex(adm.index).to_numpy()
    first_in = stays.groupby("admit_row")["intime"].min().reindex(adm.index).to_numpy()
    admittime = adm["admittime"].to_numpy()
    after_icu = np.round(rng.uniform(0.5, 9, m) * DAY).astype(np.int64)
    died = adm["died"].to_numpy()
    in_icu_death = rng.random(m) < 0.6
    dischtime = np.where(
        died & in_icu_death,
        last_out + np.round(rng.uniform(0, 30, m) * 60).astype(np.int64),
        last_out + after_icu,
    )
    dischtime = np.maximum(dischtime, admittime + HOUR)
    # Organ-donor-like pseudo admissions: discharge recorded before admission (implausible).
    donor = (rng.random(m) < 0.002) | (adm["forced"] == "discharge_before_admit").to_numpy()
    dischtime = np.where(
        donor, admittime - np.round(rng.uniform(1, 48, m) * HOUR).astype(np.int64), dischtime
    )
    dischtime = dischtime - dischtime % 60
    adm["dischtime"] = np.where(adm["no_dischtime"], NULL_TIME, dischtime)
    adm["deathtime"] = np.where(died & ~adm["no_dischtime"], adm["dischtime"], NULL_TIME)
    adm["hospital_expire_flag"] = died.astype(np.int8)
    adm["donor_times"] = donor
    emergency = np.isin(adm["admission_type"], ["EW EMER.", "EU OBSERVATION", "DIRECT EMER."])
    edreg = admittime - np.round(rng.uniform(1, 10, m) * HOUR).astype(np.int64)
    adm["edregtime"] = np.where(emergency, edreg, NULL_TIME)
    adm["edouttime"] = np.where(
        emergency, admittime + np.round(rng.uniform(0, 50, m) * 60).astype(np.int64), NULL_TIME
    )
    adm["admission_location"] = np.where(
        emergency, "EMERGENCY ROOM", _choice(rng, vocab["admission_location"], m)
    )
    adm["discharge_location"] = np.where(
        died, "DIED", _choice(rng, vocab["discharge_location_alive"], m)
    ).astype(object)
    adm.loc[adm["no_dischtime"].to_numpy(), "discharge_location"] = None
    adm["insurance"] = _choice(rng, vocab["insurance"], m)
    adm["language"] = _choice(rng, vocab["language"], m)
    adm["marital_status"] = _choice(rng, vocab["marital_status"], m)
    adm["admit_provider_id"] = [f"P{x:05X}" for x in rng.integers(0, 0xFFFFF, m)]
    adm["first_intime"] = first_in
    adm["icu"] = True
    careunits = _choice(rng, vocab["careunit"], len(stays))
    stays["first_careunit"] = careunits
    moved = rng.random(len(stays)) < 0.05
    stays["last_careunit"] = np.where(moved, _choice(rng, vocab["careunit"], len(stays)), careunits)
    # Carry the admission's columns every later step needs onto the stay.
    keep = [
        "hadm_id",
        "admittime",
        "real_admit",
        "admission_type",
        "anchor_age",
        "anchor_year",
        "gender",
        "race",
        "race_group",
        "severity",
        "expressed",
        "died",
        "shift",
        "minor",
        *[c for c in adm.columns if c.startswith("latent_")],
        *phenotype_table()["column"],
    ]
    stays = stays.merge(adm[[*keep, "dischtime", "no_diagnoses", "donor_times"]], on="hadm_id")
    stays = stays.drop(columns=["admit_row"])
    return adm, stays


def los_class(los_days: np.ndarray) -> np.ndarray:
    """ICU length of stay in days → class 0…6 ([2,3) [3,4) [4,5) [5,6) [6,7) [7,14) [14,∞))."""
    return np.digitize(los_days, LOS_BIN_EDGES_DAYS).astype(np.int8)


def _expected_exclusion(stays: pd.DataFrame) -> pd.DataFrame:
    """The protocol step that removes each stay (0 for base-cohort stays), from generator values.

    This is the ground truth the extraction is checked against; it reads the generator's arrays,
    not the tables, so the two implementations are independent.
    """
    s = stays
    age = (
        s["anchor_age"].to_numpy()
        + _year_of(s["admittime"].to_numpy())
        - s["anchor_year"].to_numpy()
    )
    no_disch = s["dischtime"].to_numpy() == NULL_TIME
    plausible = (
        (s["admittime"] <= s["intime"])
        & (s["intime"] < s["outtime"])
        & (s["admittime"] <= s["dischtime"])
    ).to_numpy() & ~no_disch
    duration = (s["outtime"] - s["intime"]).to_numpy()
    failing = [
        age < 18,
        no_disch | s["no_diagnoses"].to_numpy(),
        ~plausible,
        duration < 6 * HOUR,
        s["admission_type"].isin(PLANNED_TYPES).to_numpy(),
        s["n_stays"].to_numpy() > 1,
        duration < 48 * HOUR,
    ]
    step = np.zeros(len(s), dtype=np.int8)
    reason = np.full(len(s), None, dtype=object)
    for (number, name), fails in zip(EXCLUSION_STEPS, failing, strict=True):
        hit = (step == 0) & fails
        step[hit] = number
        reason[hit] = name
    # Finer cause inside step 3, for the ground-truth file.
    reason[(step == 3) & no_disch] = "no_dischtime"
    reason[(step == 3) & ~no_disch] = "no_diagnoses"
    s = s.assign(
        age=age,
        exclusion_step=step,
        planted_exclusion=reason,
        in_base_cohort=step == 0,
        mortality=s["died"].astype(np.int8),
        los_class=np.where(step == 0, los_class(s["los"].to_numpy()), -1).astype(np.int8),
    )
    return s.sort_values("stay_id", kind="stable").reset_index(drop=True)


def _non_icu_admissions(
    rng: np.random.Generator, patients: pd.DataFrame, vocab: dict
) -> pd.DataFrame:
    """Hospital admissions without an ICU stay: they must never enter the cohort."""
    k = rng.poisson(0.8, size=len(patients))
    p = patients.loc[np.repeat(patients.index.to_numpy(), k)].reset_index(drop=True)
    n = len(p)
    # Around the anchor year, like the ICU admissions, within MIMIC-IV's real 2008–2019.
    lo = _year_start(np.array([REAL_YEARS[0]]))[0]
    hi = _year_start(np.array([REAL_YEARS[1] + 1]))[0] - 30 * DAY
    real_admit = _year_start(p["real_anchor"].to_numpy()) + (
        (rng.random(n) * 4 - 1) * 365 * DAY
    ).astype(np.int64)
    real_admit = np.clip(real_admit, lo, hi)
    real_admit -= real_admit % 60
    admittime = real_admit + p["shift"].to_numpy()
    dischtime = admittime + np.round(rng.uniform(0.3, 8, n) * DAY).astype(np.int64)
    dischtime -= dischtime % 60
    types = {**vocab["admission_type"], "ELECTIVE": 0.2, "SURGICAL SAME DAY ADMISSION": 0.15}
    return pd.DataFrame(
        {
            "subject_id": p["subject_id"].to_numpy(),
            "admittime": admittime,
            "real_admit": real_admit,
            "dischtime": dischtime,
            "deathtime": NULL_TIME,
            "admission_type": _choice(rng, types, n),
            "admit_provider_id": [f"P{x:05X}" for x in rng.integers(0, 0xFFFFF, n)],
            "admission_location": _choice(rng, vocab["admission_location"], n),
            "discharge_location": _choice(rng, vocab["discharge_location_alive"], n),
            "insurance": _choice(rng, vocab["insurance"], n),
            "language": _choice(rng, vocab["language"], n),
            "marital_status": _choice(rng, vocab["marital_status"], n),
            "race": p["race"].to_numpy(),
            "edregtime": NULL_TIME,
            "edouttime": NULL_TIME,
            "hospital_expire_flag": np.zeros(n, dtype=np.int8),
            "icu": False,
            "no_diagnoses": False,
        }
    )


def _icd_version(real_time: np.ndarray) -> np.ndarray:
    """ICD-10-CM from 2015-10-01 on the real calendar (the shifted year does not tell)."""
    return np.where(real_time >= ICD10_FROM, 10, 9)


def _diagnoses(rng: np.random.Generator, adm: pd.DataFrame) -> pd.DataFrame:
    """diagnoses_icd: each positive phenotype's code, plus filler codes from other CCS groups."""
    grouper = icd_to_ccs()
    pheno = phenotype_table()
    benchmark_ccs = set(pheno["ccs_id"])
    version = _icd_version(adm["real_admit"].to_numpy())
    hadm = adm["hadm_id"].to_numpy()
    subject = adm["subject_id"].to_numpy()
    has_dx = ~adm["no_diagnoses"].to_numpy().astype(bool)
    icu = adm["icu"].to_numpy().astype(bool)
    parts_row, parts_code = [], []
    for v in (9, 10):
        codes_v = grouper[grouper["icd_version"] == v]
        for ccs_id, column in zip(pheno["ccs_id"], pheno["column"], strict=True):
            pool = codes_v.loc[codes_v["ccs_id"] == ccs_id, "icd_code"].to_numpy()
            if column in adm:
                positive = adm[column].fillna(0).to_numpy().astype(bool)
            else:
                positive = np.zeros(len(adm), dtype=bool)
            # Admissions without an ICU stay carry benchmark codes too (a past history).
            positive = positive | (~icu & (rng.random(len(adm)) < 0.04))
            rows = np.flatnonzero(positive & has_dx & (version == v))
            parts_row.append(rows)
            parts_code.append(pool[rng.integers(0, len(pool), len(rows))])
        filler_pool = codes_v.loc[~codes_v["ccs_id"].isin(benchmark_ccs), "icd_code"].to_numpy()
        n_fill = np.where(icu, rng.integers(8, 20, len(adm)), rng.integers(3, 12, len(adm)))
        n_fill = np.where(has_dx & (version == v), n_fill, 0)
        rows = np.repeat(np.arange(len(adm)), n_fill)
        parts_row.append(rows)
        parts_code.append(filler_pool[rng.integers(0, len(filler_pool), len(rows))])
    row = np.concatenate(parts_row)
    code = np.concatenate(parts_code)
    order = np.lexsort((rng.random(len(row)), row))
    row, code = row[order], code[order]
    first = np.r_[True, row[1:] != row[:-1]]
    seq = np.arange(len(row)) - np.maximum.accumulate(np.where(first, np.arange(len(row)), 0)) + 1
    out = pd.DataFrame(
        {
            "subject_id": subject[row],
            "hadm_id": hadm[row],
            "seq_num": seq,
            "icd_code": code,
            "icd_version": version[row],
        }
    )
    return out.sort_values(["subject_id", "hadm_id", "seq_num"], kind="stable").reset_index(
        drop=True
    )


def _add_dod(rng: np.random.Generator, patients: pd.DataFrame, adm: pd.DataFrame) -> pd.DataFrame:
    """Date of death: in-hospital deaths, plus registry deaths up to a year after discharge."""
    death = adm.loc[adm["deathtime"] != NULL_TIME].groupby("subject_id")["deathtime"].min()
    last = adm.loc[adm["dischtime"] != NULL_TIME].groupby("subject_id")["dischtime"].max()
    dod = patients["subject_id"].map(death)
    later = patients["subject_id"].map(last) + (rng.uniform(1, 365, len(patients)) * DAY)
    registry = dod.isna() & (rng.random(len(patients)) < 0.08) & later.notna()
    dod = dod.where(~registry, later)
    patients = patients.copy()
    patients["dod"] = dod.fillna(NULL_TIME).astype(np.int64)
    return patients
