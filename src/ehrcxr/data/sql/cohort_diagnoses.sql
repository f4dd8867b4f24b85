-- cohort_diagnoses: the ICD codes of the cohort's admissions (CHAR padding trimmed).
SELECT d.hadm_id, TRIM(d.icd_code) AS icd_code, d.icd_version
FROM mimiciv_hosp.diagnoses_icd d
WHERE d.hadm_id IN (SELECT hadm_id FROM ehrcxr_cohort)
