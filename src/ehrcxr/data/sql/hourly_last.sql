-- hourly_last: the last non-null <column> of <source> in each (stay, hour) of the window; ties
-- on charttime go to the larger value so both engines agree.
SELECT stay_id, hour, value FROM (
    SELECT c.stay_id, {hour} AS hour, x.{column} AS value,
           ROW_NUMBER() OVER (
               PARTITION BY c.stay_id, {hour} ORDER BY x.charttime DESC, x.{column} DESC
           ) AS rn
    FROM ehrcxr_cohort c
    JOIN {source} x ON x.{join_on} = c.{join_on}
    WHERE x.charttime >= c.intime AND x.charttime < c.window_end AND x.{column} IS NOT NULL
) t
WHERE rn = 1
