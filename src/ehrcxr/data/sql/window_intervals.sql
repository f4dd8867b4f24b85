-- window_intervals: the intervals of <source> that overlap each cohort stay's window, with
-- <plausible>: 1 when the value lies in the feature's range, else 0 (the caller drops and counts
-- those rows).
SELECT c.stay_id, x.starttime, x.endtime, x.{column} AS value, {plausible} AS plausible
FROM ehrcxr_cohort c
JOIN {source} x ON x.{join_on} = c.{join_on}
WHERE x.starttime < c.window_end AND x.endtime > c.intime AND x.{column} IS NOT NULL
