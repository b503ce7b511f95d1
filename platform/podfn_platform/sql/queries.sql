-- Platform queries that are not call transitions (those live in
-- podfn_runtime/transitions.sql, shared with the runtime).

-- name: insert_payload
INSERT INTO podfn_payloads (digest, data) VALUES (%(digest)s, %(data)s)
ON CONFLICT (digest) DO NOTHING;

-- name: insert_call
INSERT INTO podfn_calls (id, function_name, function_digest, args, spec,
                         client_python, client_cloudpickle, owner, function_version,
                         result_format)
VALUES (%(id)s, %(function_name)s, %(function_digest)s, %(args)s, %(spec)s,
        %(client_python)s, %(client_cloudpickle)s, %(owner)s, %(function_version)s,
        %(result_format)s);

-- name: notify_queued
SELECT pg_notify('podfn_queued', '');

-- name: get_call
SELECT id, function_name, function_version, owner, state, attempt, user_failures,
       disruptions, reason, spec,
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
SELECT id, function_name, state, attempt, reason, result, result_json, result_format,
       error_type, error_message, error_traceback, error_pickle, created_at, started_at,
       finished_at
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
-- Where the calls a controller is running stand now (to stop the cancelled, and
-- the finished whose pod lingers: a sidecar, a thread that keeps the process up).
SELECT id, attempt, state,
       EXTRACT(EPOCH FROM now() - finished_at)::float8 AS finished_seconds_ago
FROM podfn_calls WHERE id = ANY(%(ids)s);

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

-- name: insert_token
INSERT INTO podfn_tokens (id, name, hash, scopes) VALUES (%(id)s, %(name)s, %(hash)s, %(scopes)s)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, scopes, created_at;

-- name: token_by_hash
SELECT id, name, scopes FROM podfn_tokens WHERE hash = %(hash)s AND revoked_at IS NULL;

-- name: list_tokens
SELECT id, name, scopes, created_at, revoked_at FROM podfn_tokens ORDER BY created_at, id;

-- name: revoke_token
UPDATE podfn_tokens SET revoked_at = now()
WHERE (id = %(ref)s OR name = %(ref)s) AND revoked_at IS NULL
RETURNING id, name, scopes, created_at, revoked_at;

-- name: lock_function_name
SELECT pg_advisory_xact_lock(hashtext('podfn.function:' || %(name)s));

-- name: insert_function_version
INSERT INTO podfn_function_versions (name, version, function_digest, spec, client_python,
                                     client_cloudpickle, deployed_by)
SELECT %(name)s, COALESCE(max(version), 0) + 1, %(function_digest)s, %(spec)s,
       %(client_python)s, %(client_cloudpickle)s, %(deployed_by)s
FROM podfn_function_versions WHERE name = %(name)s
RETURNING name, version, deployed_at;

-- name: set_live_version
INSERT INTO podfn_functions (name, live_version) VALUES (%(name)s, %(version)s)
ON CONFLICT (name) DO UPDATE SET live_version = EXCLUDED.live_version, updated_at = now()
RETURNING name, live_version;

-- name: list_functions
SELECT f.name, f.live_version, v.spec, v.deployed_at, v.deployed_by, f.updated_at,
       (SELECT max(version) FROM podfn_function_versions WHERE name = f.name) AS latest_version
FROM podfn_functions f
JOIN podfn_function_versions v ON v.name = f.name AND v.version = f.live_version
ORDER BY f.name;

-- name: get_function
SELECT f.name, f.live_version, v.version, v.function_digest, v.spec, v.client_python,
       v.client_cloudpickle, v.deployed_at, v.deployed_by
FROM podfn_functions f
JOIN podfn_function_versions v ON v.name = f.name AND v.version = f.live_version
WHERE f.name = %(name)s;

-- name: function_versions
SELECT version, spec, deployed_at, deployed_by FROM podfn_function_versions
WHERE name = %(name)s ORDER BY version;

-- name: claim_idempotency_key
INSERT INTO podfn_idempotency (owner, key, request_hash, call_ids)
VALUES (%(owner)s, %(key)s, %(request_hash)s, '{}')
ON CONFLICT (owner, key) DO NOTHING
RETURNING key;

-- name: get_idempotency_key
SELECT request_hash, call_ids FROM podfn_idempotency WHERE owner = %(owner)s AND key = %(key)s;

-- name: set_idempotency_calls
UPDATE podfn_idempotency SET call_ids = %(call_ids)s WHERE owner = %(owner)s AND key = %(key)s;

-- name: call_owners
SELECT id, owner FROM podfn_calls WHERE id = ANY(%(ids)s);

-- name: call_counts
-- For /metrics: calls per state, and how many queued calls are due now (the queue depth).
SELECT state, count(*) AS calls,
       count(*) FILTER (WHERE state = 'queued' AND (not_before IS NULL OR not_before <= now())) AS due
FROM podfn_calls
GROUP BY state;
