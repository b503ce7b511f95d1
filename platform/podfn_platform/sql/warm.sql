-- The controller's view of warm workers (docs/warm-workers.md). A worker is
-- named by the attempt it was launched for, "<call id>/<attempt>"; the
-- attempts it claimed itself (podfn_runtime_v1.next) carry that name in
-- podfn_attempts.worker.

-- name: worker_attempts
-- What each live worker runs now: the attempt it started last (busy while
-- unfinished; a call a worker claimed ahead, migration 0012, is held and not
-- started until the worker marks it), that call's pool, and how long the
-- attempt has run since it started (for its `timeout`; a held call's clock
-- does not run). `holding`: busy, or holding calls it has not started. A
-- standing worker (podfn_workers) that has run nothing yet has a row too:
-- idle, in its pool; `retired` when the controller wants it gone.
SELECT w.worker, cur.call_id AS id, cur.attempt,
       cur.call_id IS NOT NULL AND cur.finished_at IS NULL AS busy,
       (cur.call_id IS NOT NULL AND cur.finished_at IS NULL)
           OR EXISTS (SELECT 1 FROM podfn_attempts h
                      WHERE h.worker = w.worker AND h.finished_at IS NULL) AS holding,
       coalesce(c.pool, s.pool) AS pool, s.retired_at IS NOT NULL AS retired, c.spec,
       c.function_name, c.client_python, c.state AS call_state, cur.launched_at,
       EXTRACT(EPOCH FROM clock_timestamp() - coalesce(cur.started_at, cur.launched_at))::float8
           AS running_seconds
FROM unnest(%(workers)s::text[], %(ids)s::text[], %(attempts)s::int[]) AS w(worker, id, attempt)
LEFT JOIN LATERAL (
    -- The later of two rows: the last attempt the worker started (the newest
    -- entry of podfn_attempts_started_by_worker, migration 0013: one index
    -- probe, where ordering all of a worker's attempts read every call it ever
    -- ran, at every turn) and the attempt it was launched for.
    SELECT x.call_id, x.attempt, x.launched_at, x.started_at, x.finished_at
    FROM ((SELECT a.call_id, a.attempt, a.launched_at, a.started_at, a.finished_at
           FROM podfn_attempts a
           WHERE a.worker = w.worker AND a.started_at IS NOT NULL
           ORDER BY a.started_at DESC, a.attempt DESC
           LIMIT 1)
          UNION ALL
          SELECT a.call_id, a.attempt, a.launched_at, a.started_at, a.finished_at
          FROM podfn_attempts a
          WHERE a.call_id = w.id AND a.attempt = w.attempt) x
    ORDER BY coalesce(x.started_at, x.launched_at) DESC, x.attempt DESC
    LIMIT 1
) cur ON true
LEFT JOIN podfn_calls c ON c.id = cur.call_id
LEFT JOIN podfn_workers s ON s.name = w.worker;

-- name: still_queued
-- Whether a call of these pools is queued and due. A call announced for a pool
-- with a live warm worker gets a controller turn only if it still is after
-- WARM_QUEUED_GRACE (controller/loop.py): most often an idle worker of the pool
-- took it, and a turn would have found nothing to do. (A function, migration
-- 0015: planned by key whatever the statistics say.)
SELECT podfn_pools_queued(%(pools)s::text[]) AS queued;

-- name: orphaned_warm_attempts
-- Attempts a worker claimed whose worker the launcher no longer holds: the
-- worker is gone (crashed, or lost with a restarted controller).
SELECT a.call_id AS id, a.attempt, a.worker
FROM podfn_attempts a JOIN podfn_calls c ON c.id = a.call_id AND c.attempt = a.attempt
WHERE a.worker IS NOT NULL AND a.finished_at IS NULL
  AND c.state IN ('launching', 'running')
  AND NOT (a.worker = ANY(%(workers)s::text[]));

-- name: unfinished_cold_attempts
-- Like unfinished_attempts, without those a warm worker claimed: the launcher
-- reconciles what it launched; the controller reconciles the rest by worker.
SELECT c.id, c.attempt, c.state, c.spec, c.launched_at, c.function_name, c.client_python
FROM podfn_calls c
LEFT JOIN podfn_attempts a ON a.call_id = c.id AND a.attempt = c.attempt
WHERE c.state IN ('launching', 'running') AND a.worker IS NULL;

-- Standing workers: `min_workers` warm workers of a deployed function's live
-- version, started by the controller with no call (migration 0009).

-- name: forget_gone_workers
-- Standing workers whose process the launcher no longer holds (it exited and
-- its exit is recorded, or it was lost with a restarted controller): their
-- secret must match nothing from now on.
DELETE FROM podfn_workers WHERE NOT (name = ANY(%(workers)s::text[]))
RETURNING name, function_name, function_version;

-- name: retire_standing_workers
-- Standing workers nobody wants any more: their version is no longer live
-- (a new deploy, a rollback, the function is gone) or it wants fewer
-- (`min_workers` went down; the newest go). Each finishes its call, if any,
-- and exits on its next ask (next_standing answers `retired`); the NOTIFY
-- wakes it at once.
WITH ranked AS (
    SELECT w.name,
           row_number() OVER (PARTITION BY w.function_name, w.function_version
                              ORDER BY w.started_at, w.name) AS n,
           coalesce(f.live_version = w.function_version, false) AS live,
           CASE WHEN jsonb_typeof(w.spec->'min_workers') = 'number'
                THEN (w.spec->>'min_workers')::numeric ELSE 0 END AS wanted
    FROM podfn_workers w
    LEFT JOIN podfn_functions f ON f.name = w.function_name
    WHERE w.retired_at IS NULL
), retired AS (
    UPDATE podfn_workers w SET retired_at = clock_timestamp()
    FROM ranked r
    WHERE w.name = r.name AND w.retired_at IS NULL AND (NOT r.live OR r.n > r.wanted)
    RETURNING w.name
)
SELECT name, pg_notify('podfn_retired', name) IS NOT NULL AS notified FROM retired;

-- name: standing_wanted
-- Live versions that want standing workers, with how many more they need.
SELECT v.name, v.version, v.spec, v.client_python,
       (v.spec->>'min_workers')::numeric::int - count(w.name) AS missing
FROM podfn_functions f
JOIN podfn_function_versions v ON v.name = f.name AND v.version = f.live_version
LEFT JOIN podfn_workers w ON w.function_name = v.name AND w.function_version = v.version
                          AND w.retired_at IS NULL
WHERE jsonb_typeof(v.spec->'min_workers') = 'number' AND (v.spec->>'min_workers')::numeric > 0
GROUP BY v.name, v.version, v.spec, v.client_python
HAVING (v.spec->>'min_workers')::numeric > count(w.name)
ORDER BY min(f.updated_at), v.name;

-- name: insert_standing_worker
-- A standing worker about to be launched for the live version (name, version);
-- nothing if that version is no longer live.
INSERT INTO podfn_workers (name, function_name, function_version, function_digest, spec,
                           secret_hash)
SELECT %(worker)s, v.name, v.version, v.function_digest, v.spec, %(secret_hash)s
FROM podfn_functions f
JOIN podfn_function_versions v ON v.name = f.name AND v.version = f.live_version
WHERE f.name = %(name)s AND f.live_version = %(version)s
RETURNING name, pool;

-- name: set_worker_ref
UPDATE podfn_workers SET ref = %(ref)s WHERE name = %(worker)s;

-- name: delete_worker
DELETE FROM podfn_workers WHERE name = %(worker)s;
