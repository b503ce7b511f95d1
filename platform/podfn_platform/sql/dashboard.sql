-- What the dashboard (/ui) and the usage API read. Read-only statements over
-- the tables podfn already keeps: no second time-series store.

-- name: function_usage
-- Usage of a function's last `last` finished calls, from the attempt that
-- finished each (the one that reported usage). Percentiles are Postgres's.
WITH recent AS (
    SELECT a.peak_bytes, a.cpu_seconds, a.wall_seconds
    FROM podfn_calls c
    JOIN podfn_attempts a ON a.call_id = c.id AND a.attempt = c.attempt
    WHERE c.function_name = %(name)s AND c.finished_at IS NOT NULL
      AND a.wall_seconds IS NOT NULL
    ORDER BY c.finished_at DESC
    LIMIT %(last)s
)
SELECT count(*) AS calls,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY peak_bytes) AS peak_bytes_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY peak_bytes) AS peak_bytes_p95,
       max(peak_bytes) AS peak_bytes_max,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY cpu_seconds) AS cpu_seconds_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY cpu_seconds) AS cpu_seconds_p95,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY wall_seconds) AS wall_seconds_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY wall_seconds) AS wall_seconds_p95,
       -- cores busy on average during a call: CPU seconds over wall seconds
       percentile_cont(0.5) WITHIN GROUP (ORDER BY cpu_seconds / NULLIF(wall_seconds, 0))
           AS cores_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY cpu_seconds / NULLIF(wall_seconds, 0))
           AS cores_p95
FROM recent;

-- name: function_hints
-- The hints a function runs with: the live deployed version's, else those of
-- its latest call (functions called without deploying).
SELECT spec FROM (
    SELECT v.spec, 0 AS rank
    FROM podfn_functions f
    JOIN podfn_function_versions v ON v.name = f.name AND v.version = f.live_version
    WHERE f.name = %(name)s
    UNION ALL
    (SELECT spec, 1 FROM podfn_calls WHERE function_name = %(name)s
     ORDER BY created_at DESC LIMIT 1)
) s ORDER BY rank LIMIT 1;

-- name: called_functions
-- Every function name with calls or a deployment, for the usage of all of them.
SELECT name FROM podfn_functions
UNION
SELECT DISTINCT function_name FROM podfn_calls
ORDER BY 1;
