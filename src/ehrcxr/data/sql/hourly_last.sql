-- hourly_last: the last plausible <column> of <source> in each (stay, hour) of the window, and
-- how many non-null values there were outside the feature's range (dropped). <plausible> is 1
-- inside the range, else 0 (an infinity or NaN is outside); ties on charttime go to the larger
-- value so both engines agree. An hour charted only implausibly has value NULL.
SELECT stay_id, hour,
       MAX(CASE WHEN plausible = 1 AND rn = 1 THEN value END) AS value,
       SUM(1 - plausible) AS dropped
FROM (
    SELECT c.stay_id, {hour} AS hour, x.{column} AS value, {plausible} AS plausible,
           ROW_NUMBER() OVER (
               PARTITION BY c.stay_id, {hour}, {plausible}
               ORDER BY x.charttime DESC, x.{column} DESC
           ) AS rn
    FROM ehrcxr_cohort c
    JOIN {source} x ON x.{join_on} = c.{join_on}
    WHERE x.charttime >= c.intime AND x.charttime < c.window_end AND x.{column} IS NOT NULL
) t
GROUP BY stay_id, hour
