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

-- name: ui_now
-- Calls unfinished now, and outcomes over the last hour and day.
SELECT
    count(*) FILTER (WHERE state = 'queued') AS queued,
    count(*) FILTER (WHERE state = 'launching') AS launching,
    count(*) FILTER (WHERE state = 'running') AS running,
    count(*) FILTER (WHERE state = 'succeeded' AND finished_at > now() - interval '1 hour')
        AS succeeded_hour,
    count(*) FILTER (WHERE state = 'failed' AND finished_at > now() - interval '1 hour')
        AS failed_hour,
    count(*) FILTER (WHERE state = 'timed_out' AND finished_at > now() - interval '1 hour')
        AS timed_out_hour,
    count(*) FILTER (WHERE state = 'cancelled' AND finished_at > now() - interval '1 hour')
        AS cancelled_hour,
    count(*) FILTER (WHERE state = 'succeeded' AND finished_at > now() - interval '1 day')
        AS succeeded_day,
    count(*) FILTER (WHERE state = 'failed' AND finished_at > now() - interval '1 day')
        AS failed_day,
    count(*) FILTER (WHERE state = 'timed_out' AND finished_at > now() - interval '1 day')
        AS timed_out_day,
    count(*) FILTER (WHERE state = 'cancelled' AND finished_at > now() - interval '1 day')
        AS cancelled_day
FROM podfn_calls
WHERE state IN ('queued', 'launching', 'running') OR finished_at > now() - interval '1 day';

-- name: ui_failure_reasons
-- The most common reasons calls failed or timed out over the last day.
SELECT reason, count(*) AS calls, max(id) FILTER (WHERE finished_at = last) AS example
FROM (
    SELECT id, COALESCE(reason, '') AS reason, finished_at,
           max(finished_at) OVER (PARTITION BY COALESCE(reason, '')) AS last
    FROM podfn_calls
    WHERE state IN ('failed', 'timed_out') AND finished_at > now() - interval '1 day'
) f
GROUP BY reason ORDER BY calls DESC, reason LIMIT 10;

-- name: ui_launch_latency
-- From launch to the runtime's claim, over attempts of the last hour.
SELECT count(*) AS attempts,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - launched_at))
           AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - launched_at))
           AS p95
FROM podfn_attempts
WHERE started_at IS NOT NULL AND launched_at > now() - interval '1 hour';

-- name: ui_controller
-- Controller health as Postgres sees it: is the leader's advisory lock held
-- (controller/leader.py's LOCK_KEY split into its two 32-bit halves), and
-- since when; the last launch; the controller's durable facts.
SELECT
    (SELECT a.backend_start FROM pg_locks l
     LEFT JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
               SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.classid::bigint = %(classid)s AND l.objid::bigint = %(objid)s AND l.objsubid = 1
     LIMIT 1) AS leader_since,
    EXISTS (SELECT 1 FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                      SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid::bigint = %(classid)s AND l.objid::bigint = %(objid)s AND l.objsubid = 1)
        AS leader,
    (SELECT max(launched_at) FROM podfn_attempts) AS last_launch,
    (SELECT max(finished_at) FROM podfn_attempts) AS last_finish;

-- name: ui_controller_state
SELECT key, value, updated_at FROM podfn_controller_state ORDER BY key;

-- name: ui_calls
-- The Calls page: the CLI's filters, a time range, search by id prefix, paging.
SELECT c.id, c.function_name, c.state, c.attempt, c.reason, c.owner, c.created_at,
       c.started_at, c.finished_at, t.name AS token_name
FROM podfn_calls c LEFT JOIN podfn_tokens t ON t.id = c.owner
WHERE (%(state)s::text IS NULL OR c.state = %(state)s)
  AND (%(function)s::text IS NULL OR c.function_name = %(function)s)
  AND (%(token)s::text IS NULL OR c.owner = %(token)s OR t.name = %(token)s)
  AND (%(since)s::float8 IS NULL
       OR c.created_at > now() - make_interval(secs => %(since)s::float8))
  AND (%(id)s::text IS NULL OR c.id LIKE %(id)s || '%%')
  AND (%(reason)s::text IS NULL OR COALESCE(c.reason, '') = %(reason)s)
ORDER BY c.created_at DESC, c.id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: ui_call
-- The call page's row; its output is read by get_logs, as the logs route reads it.
SELECT c.id, c.function_name, c.function_version, c.owner, c.state, c.attempt,
       c.user_failures, c.disruptions, c.reason, c.spec, c.error_type, c.error_message,
       c.error_traceback, c.client_python, c.client_cloudpickle, c.created_at, c.launched_at,
       c.started_at, c.finished_at, c.not_before, c.result_format,
       octet_length(c.result) AS result_size, octet_length(c.result_json) AS json_size,
       CASE WHEN octet_length(c.result_json) <= %(json_limit)s THEN c.result_json END
           AS result_json,
       t.name AS token_name
FROM podfn_calls c LEFT JOIN podfn_tokens t ON t.id = c.owner
WHERE c.id = %(id)s;

-- name: ui_calls_per_minute
-- Finished calls per minute by outcome over the last `minutes` minutes.
SELECT date_trunc('minute', finished_at) AS minute, state, count(*) AS calls
FROM podfn_calls
WHERE finished_at > date_trunc('minute', now()) - make_interval(mins => %(minutes)s)
GROUP BY 1, 2 ORDER BY 1;

-- name: ui_durations
-- Duration percentiles (start to finish) per minute over the last `minutes` minutes.
SELECT date_trunc('minute', finished_at) AS minute,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM finished_at - started_at))
           AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM finished_at - started_at))
           AS p95
FROM podfn_calls
WHERE started_at IS NOT NULL
  AND finished_at > date_trunc('minute', now()) - make_interval(mins => %(minutes)s)
GROUP BY 1 ORDER BY 1;

-- name: ui_queue_depth
-- Calls waiting (created, not yet launched nor finished) at the end of each
-- minute, rebuilt from the calls' own timestamps. launched_at is the call's
-- latest launch, so a call queued again for a retry counts as launched: an
-- approximation that needs no second store. Only calls that waited at some
-- point in the window are looked at (one scan), then counted per minute.
WITH w AS (
    SELECT date_trunc('minute', now()) - make_interval(mins => %(minutes)s) AS lo
), waited AS MATERIALIZED (
    SELECT c.created_at, LEAST(c.launched_at, c.finished_at) AS left_at
    FROM podfn_calls c, w
    WHERE c.state = 'queued' OR LEAST(c.launched_at, c.finished_at) > w.lo
)
SELECT m.minute,
       (SELECT count(*) FROM waited
        WHERE created_at <= m.minute + interval '1 minute'
          AND (left_at IS NULL OR left_at > m.minute + interval '1 minute')) AS queued
FROM w, generate_series(w.lo, date_trunc('minute', now()), interval '1 minute') AS m(minute)
ORDER BY m.minute;
