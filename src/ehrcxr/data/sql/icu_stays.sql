-- icu_stays: one row per ICU stay joined to its admission and patient (protocol step 1), with
-- the columns every later exclusion step and label needs.
SELECT
    i.subject_id,
    i.hadm_id,
    i.stay_id,
    i.intime,
    i.outtime,
    i.los,
    a.admittime,
    a.dischtime,
    a.admission_type,
    a.race,
    a.hospital_expire_flag,
    p.gender,
    p.anchor_age,
    p.anchor_year,
    (SELECT COUNT(*) FROM mimiciv_icu.icustays i2 WHERE i2.hadm_id = i.hadm_id) AS n_icu_stays,
    CASE WHEN EXISTS (
        SELECT 1 FROM mimiciv_hosp.diagnoses_icd d WHERE d.hadm_id = i.hadm_id
    ) THEN 1 ELSE 0 END AS has_diagnoses
FROM mimiciv_icu.icustays i
JOIN mimiciv_hosp.admissions a ON a.hadm_id = i.hadm_id
JOIN mimiciv_hosp.patients p ON p.subject_id = i.subject_id
ORDER BY i.stay_id
