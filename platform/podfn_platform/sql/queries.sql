-- Platform queries that are not call transitions (those live in
-- podfn_runtime/transitions.sql, shared with the runtime).

-- name: insert_payload
INSERT INTO podfn_payloads (digest, data) VALUES (%(digest)s, %(data)s)
ON CONFLICT (digest) DO NOTHING;

-- name: insert_call
INSERT INTO podfn_calls (id, function_name, function_digest, args, spec,
                         client_python, client_cloudpickle)
VALUES (%(id)s, %(function_name)s, %(function_digest)s, %(args)s, %(spec)s,
        %(client_python)s, %(client_cloudpickle)s);

-- name: notify_queued
SELECT pg_notify('podfn_queued', '');

-- name: get_call
SELECT id, function_name, state, attempt, user_failures, disruptions, reason, spec,
       error_type, error_message, error_traceback, client_python, client_cloudpickle,
       created_at, launched_at, started_at, finished_at, not_before
FROM podfn_calls WHERE id = %(id)s;

-- name: get_attempts
SELECT attempt, state, reason, exit_code, ref, launched_at, started_at, finished_at
FROM podfn_attempts WHERE call_id = %(id)s ORDER BY attempt;

-- name: get_logs
SELECT id, state, stdout, stderr FROM podfn_calls WHERE id = %(id)s;

-- name: finished_calls
-- The finished calls among ids, with what the client needs to rebuild the outcome.
SELECT id, function_name, state, attempt, reason, result, error_type, error_message,
       error_traceback, error_pickle, created_at, started_at, finished_at
FROM podfn_calls
WHERE id = ANY(%(ids)s) AND state IN ('succeeded', 'failed', 'timed_out', 'cancelled');

-- name: existing_ids
SELECT id FROM podfn_calls WHERE id = ANY(%(ids)s);

-- name: list_calls
SELECT id, function_name, state, attempt, reason, created_at, started_at, finished_at
FROM podfn_calls
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(function)s::text IS NULL OR function_name = %(function)s)
ORDER BY created_at DESC, id
LIMIT %(limit)s;

-- name: call_states
-- Where the calls a controller is running stand now (to stop the cancelled).
SELECT id, attempt, state FROM podfn_calls WHERE id = ANY(%(ids)s);

-- name: unfinished_attempts
-- Calls that had an attempt launched and have not finished: after a restart
-- the controller reconciles each against what its launcher still holds.
SELECT id, attempt, state, spec, launched_at, function_name, client_python FROM podfn_calls
WHERE state IN ('launching', 'running');

-- name: next_retry_at
SELECT min(not_before) AS at FROM podfn_calls WHERE state = 'queued';

-- name: set_attempt_ref
UPDATE podfn_attempts SET ref = %(ref)s WHERE call_id = %(id)s AND attempt = %(attempt)s;

-- name: get_state
SELECT value FROM podfn_controller_state WHERE key = %(key)s;

-- name: put_state
INSERT INTO podfn_controller_state (key, value) VALUES (%(key)s, %(value)s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();

-- name: call_counts
-- For /metrics: calls per state, and how many queued calls are due now (the queue depth).
SELECT state, count(*) AS calls,
       count(*) FILTER (WHERE state = 'queued' AND (not_before IS NULL OR not_before <= now())) AS due
FROM podfn_calls
GROUP BY state;
