-- hourly_aggregate: one row per (stay, hour of the window) of <source>, columns aggregated with
-- <aggregates> (for ranged features: the aggregate of the plausible values only, and a count of
-- the others). <hour> is the dialect's floor((charttime - intime) / 1 h).
SELECT c.stay_id, {hour} AS hour, {aggregates}
FROM ehrcxr_cohort c
JOIN {source} x ON x.{join_on} = c.{join_on}
WHERE x.charttime >= c.intime AND x.charttime < c.window_end {filter}
GROUP BY 1, 2
