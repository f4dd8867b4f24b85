-- The MIMIC-IV v2.2 tables the benchmark reads, as mimic-code's buildmimic/postgres/create.sql and
-- the concepts_postgres scripts define them (column names, order and types). Only the tables and
-- columns the extraction needs, plus the columns a real user's tables carry beside them.
-- The same text runs on PostgreSQL (real schemas) and SQLite (each schema is an attached file).
-- Statements are separated by ';' at line end; ehrcxr.data.database.run_script splits them.

CREATE TABLE mimiciv_hosp.patients (
    subject_id INTEGER NOT NULL,
    gender CHAR(1) NOT NULL,
    anchor_age SMALLINT,
    anchor_year SMALLINT NOT NULL,
    anchor_year_group VARCHAR(20) NOT NULL,
    dod DATE
);

CREATE TABLE mimiciv_hosp.admissions (
    subject_id INTEGER NOT NULL,
    hadm_id INTEGER NOT NULL,
    admittime TIMESTAMP NOT NULL,
    dischtime TIMESTAMP,
    deathtime TIMESTAMP,
    admission_type VARCHAR(40) NOT NULL,
    admit_provider_id VARCHAR(10),
    admission_location VARCHAR(60),
    discharge_location VARCHAR(60),
    insurance VARCHAR(255),
    language VARCHAR(10),
    marital_status VARCHAR(30),
    race VARCHAR(80),
    edregtime TIMESTAMP,
    edouttime TIMESTAMP,
    hospital_expire_flag SMALLINT
);

CREATE TABLE mimiciv_hosp.diagnoses_icd (
    subject_id INTEGER NOT NULL,
    hadm_id INTEGER NOT NULL,
    seq_num INTEGER NOT NULL,
    icd_code CHAR(7),
    icd_version SMALLINT
);

CREATE TABLE mimiciv_icu.icustays (
    subject_id INTEGER NOT NULL,
    hadm_id INTEGER NOT NULL,
    stay_id INTEGER NOT NULL,
    first_careunit VARCHAR(255),
    last_careunit VARCHAR(255),
    intime TIMESTAMP,
    outtime TIMESTAMP,
    los DOUBLE PRECISION
);

CREATE TABLE mimiciv_icu.chartevents (
    subject_id INTEGER NOT NULL,
    hadm_id INTEGER NOT NULL,
    stay_id INTEGER NOT NULL,
    caregiver_id INTEGER,
    charttime TIMESTAMP NOT NULL,
    storetime TIMESTAMP,
    itemid INTEGER NOT NULL,
    value VARCHAR(200),
    valuenum DOUBLE PRECISION,
    valueuom VARCHAR(20),
    warning SMALLINT
);

CREATE TABLE mimiciv_derived.vitalsign (
    subject_id INTEGER,
    stay_id INTEGER,
    charttime TIMESTAMP,
    heart_rate DOUBLE PRECISION,
    sbp DOUBLE PRECISION,
    dbp DOUBLE PRECISION,
    mbp DOUBLE PRECISION,
    sbp_ni DOUBLE PRECISION,
    dbp_ni DOUBLE PRECISION,
    mbp_ni DOUBLE PRECISION,
    resp_rate DOUBLE PRECISION,
    temperature DOUBLE PRECISION,
    temperature_site TEXT,
    spo2 DOUBLE PRECISION,
    glucose DOUBLE PRECISION
);

CREATE TABLE mimiciv_derived.gcs (
    subject_id INTEGER,
    stay_id INTEGER,
    charttime TIMESTAMP,
    gcs DOUBLE PRECISION,
    gcs_motor DOUBLE PRECISION,
    gcs_verbal DOUBLE PRECISION,
    gcs_eyes DOUBLE PRECISION,
    gcs_unable INTEGER
);

CREATE TABLE mimiciv_derived.urine_output (
    stay_id INTEGER,
    charttime TIMESTAMP,
    urineoutput DOUBLE PRECISION
);

CREATE TABLE mimiciv_derived.kdigo_uo (
    stay_id INTEGER,
    charttime TIMESTAMP,
    weight DOUBLE PRECISION,
    urineoutput_6hr DOUBLE PRECISION,
    urineoutput_12hr DOUBLE PRECISION,
    urineoutput_24hr DOUBLE PRECISION,
    uo_rt_6hr DOUBLE PRECISION,
    uo_rt_12hr DOUBLE PRECISION,
    uo_rt_24hr DOUBLE PRECISION,
    uo_tm_6hr DOUBLE PRECISION,
    uo_tm_12hr DOUBLE PRECISION,
    uo_tm_24hr DOUBLE PRECISION
);

CREATE TABLE mimiciv_derived.oxygen_delivery (
    subject_id INTEGER,
    stay_id INTEGER,
    charttime TIMESTAMP,
    o2_flow DOUBLE PRECISION,
    o2_flow_additional DOUBLE PRECISION,
    o2_delivery_device_1 TEXT,
    o2_delivery_device_2 TEXT,
    o2_delivery_device_3 TEXT,
    o2_delivery_device_4 TEXT
);

CREATE TABLE mimiciv_derived.ventilator_setting (
    subject_id INTEGER,
    stay_id INTEGER,
    charttime TIMESTAMP,
    respiratory_rate_set DOUBLE PRECISION,
    respiratory_rate_total DOUBLE PRECISION,
    respiratory_rate_spontaneous DOUBLE PRECISION,
    minute_volume DOUBLE PRECISION,
    tidal_volume_set DOUBLE PRECISION,
    tidal_volume_observed DOUBLE PRECISION,
    tidal_volume_spontaneous DOUBLE PRECISION,
    plateau_pressure DOUBLE PRECISION,
    peep DOUBLE PRECISION,
    fio2 DOUBLE PRECISION,
    flow_rate DOUBLE PRECISION,
    ventilator_mode TEXT,
    ventilator_mode_hamilton TEXT,
    ventilator_type TEXT
);

CREATE TABLE mimiciv_derived.weight_durations (
    stay_id INTEGER,
    starttime TIMESTAMP,
    endtime TIMESTAMP,
    weight DOUBLE PRECISION,
    weight_type TEXT
);
