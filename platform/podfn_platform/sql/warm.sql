-- The controller's view of warm workers (docs/warm-workers.md). A worker is
-- named by the attempt it was launched for, "<call id>/<attempt>"; the
-- attempts it claimed itself (podfn_runtime_v1.next) carry that name in
-- podfn_attempts.worker.

-- name: worker_attempts
-- What each live worker runs now: its latest attempt (busy while unfinished),
-- that call's pool, and how long the attempt has run (for its `timeout`).
SELECT DISTINCT ON (w.worker) w.worker, a.call_id AS id, a.attempt,
       a.finished_at IS NULL AS busy, c.pool, c.spec, c.function_name, c.client_python,
       c.state AS call_state, a.launched_at,
       EXTRACT(EPOCH FROM clock_timestamp() - coalesce(a.started_at, a.launched_at))::float8
           AS running_seconds
FROM unnest(%(workers)s::text[], %(ids)s::text[], %(attempts)s::int[]) AS w(worker, id, attempt)
JOIN podfn_attempts a ON a.worker = w.worker OR (a.call_id = w.id AND a.attempt = w.attempt)
JOIN podfn_calls c ON c.id = a.call_id
ORDER BY w.worker, a.launched_at DESC, a.attempt DESC;

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
