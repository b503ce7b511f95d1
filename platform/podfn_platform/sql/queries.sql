-- Platform queries that are not call transitions (those live in
-- transitions.sql beside this file, and in the runtime protocol of migration 0003).

-- name: insert_payload
INSERT INTO podfn_payloads (digest, data) VALUES (%(digest)s, %(data)s)
ON CONFLICT (digest) DO NOTHING;

-- name: insert_call
INSERT INTO podfn_calls (id, function_name, function_digest, args, spec,
                         client_python, client_cloudpickle, owner, function_version,
                         result_format, by_deployer)
VALUES (%(id)s, %(function_name)s, %(function_digest)s, %(args)s, %(spec)s,
        %(client_python)s, %(client_cloudpickle)s, %(owner)s, %(function_version)s,
        %(result_format)s, %(by_deployer)s);

-- name: notify_queued
SELECT pg_notify('podfn_queued', '');

-- name: submit_one
-- One call, with its Idempotency-Key (if any), its function's payload (if given)
-- and the controller's wake-up, in one statement: one round trip where a
-- transaction took seven (issue 12, third round). When the key is taken,
-- nothing is written and `created` is false: the caller reads what the key made.
-- A duplicate in flight blocks on the key's unique index until it commits, as in
-- the transaction.
WITH claimed AS (
    INSERT INTO podfn_idempotency (owner, key, request_hash, call_ids)
    SELECT %(owner)s, %(key)s::text, %(request_hash)s, ARRAY[%(id)s::text]
    WHERE %(key)s::text IS NOT NULL
    ON CONFLICT (owner, key) DO NOTHING
    RETURNING 1
), go AS (
    SELECT %(key)s::text IS NULL OR EXISTS (SELECT FROM claimed) AS ok
), payload AS (
    INSERT INTO podfn_payloads (digest, data)
    SELECT %(function_digest)s, %(function)s::bytea
    WHERE %(function)s::bytea IS NOT NULL AND (SELECT ok FROM go)
    ON CONFLICT (digest) DO NOTHING
), made AS (
    INSERT INTO podfn_calls (id, function_name, function_digest, args, spec,
                             client_python, client_cloudpickle, owner, function_version,
                             result_format, by_deployer)
    SELECT %(id)s::text, %(function_name)s, %(function_digest)s, %(args)s, %(spec)s,
           %(client_python)s, %(client_cloudpickle)s, %(call_owner)s, %(function_version)s,
           %(result_format)s, %(by_deployer)s
    WHERE (SELECT ok FROM go)
    RETURNING id, pool
)
-- The wake-up names the call's pool ('fresh:' + pool): the controller leaves a call
-- of a warm pool with a live worker to that worker for a moment (controller/loop.py,
-- WARM_QUEUED_GRACE).
SELECT EXISTS (SELECT FROM made) AS created,
       (SELECT pg_notify('podfn_queued', 'fresh:' || pool) FROM made) AS notified;

-- name: get_call
SELECT id, function_name, function_version, owner, state, attempt, user_failures,
       disruptions, reason, spec,
       error_type, error_message, error_traceback, client_python, client_cloudpickle,
       created_at, launched_at, started_at, finished_at, not_before
FROM podfn_calls WHERE id = %(id)s;

-- name: get_attempts
SELECT attempt, state, reason, exit_code, ref, launched_at, started_at, finished_at,
       peak_bytes, cpu_seconds, wall_seconds
FROM podfn_attempts WHERE call_id = %(id)s ORDER BY attempt;

-- name: get_logs
-- The whole text of each stream: the columns the runtime fills when the call
-- ends, or (while it runs, or if it ended without writing them) the current
-- attempt's chunks put together (migration 0007).
SELECT c.id, c.state, c.attempt,
       COALESCE(NULLIF(c.stdout, ''),
                (SELECT string_agg(o.data, '' ORDER BY o.char_offset) FROM podfn_output o
                 WHERE o.call_id = c.id AND o.attempt = c.attempt AND o.stream = 'stdout'),
                '') AS stdout,
       COALESCE(NULLIF(c.stderr, ''),
                (SELECT string_agg(o.data, '' ORDER BY o.char_offset) FROM podfn_output o
                 WHERE o.call_id = c.id AND o.attempt = c.attempt AND o.stream = 'stderr'),
                '') AS stderr
FROM podfn_calls c WHERE c.id = %(id)s;

-- name: output_from
-- An attempt's output chunks that end past `offset`, in order (the first may
-- start before it; the API cuts it). Bounded by `limit` rows per request.
-- The range starts at the last chunk starting at or before `offset` (one
-- backward step on the primary key), so a follower's poll reads only what
-- is new, never the chunks it already has.
SELECT stream, char_offset, data, at FROM podfn_output
WHERE call_id = %(id)s AND attempt = %(attempt)s
  AND char_offset >= COALESCE((SELECT max(char_offset) FROM podfn_output
                               WHERE call_id = %(id)s AND attempt = %(attempt)s
                                 AND char_offset <= %(offset)s), 0)
  AND char_offset + length(data) > %(offset)s
ORDER BY char_offset
LIMIT %(limit)s;

-- name: call_progress
-- Where a call is: for readers following its output or its items.
SELECT id, state, attempt, state IN ('succeeded', 'failed', 'timed_out', 'cancelled') AS final
FROM podfn_calls WHERE id = %(id)s;

-- name: items_from
-- A generator call's items from index `start`, in order, at most `limit` of them.
SELECT item_index, data, at FROM podfn_items
WHERE call_id = %(id)s AND item_index >= %(start)s
ORDER BY item_index
LIMIT %(limit)s;

-- name: finished_calls
-- The finished calls among ids: states and sizes, not the payloads. Only a
-- small pickled result (at most `inline` bytes) is carried along, and only
-- while the results carried add up to at most `budget` bytes (a `map` of
-- small results needs no request per call, and the response stays bounded);
-- any other result is read on its own, in chunks (result_chunk). octet_length
-- reads a stored value's size without loading it.
SELECT c.id, c.function_name, c.state, c.attempt, c.reason, c.result_format,
       s.result_size, octet_length(c.result_json) AS value_size,
       CASE WHEN s.result_size <= %(inline)s AND s.running <= %(budget)s THEN c.result END
           AS result,
       c.error_type, c.error_message, c.error_traceback,
       octet_length(c.error_pickle) AS error_pickle_size, c.created_at, c.started_at,
       c.finished_at
FROM podfn_calls c
JOIN (SELECT id, octet_length(result) AS result_size,
             sum(CASE WHEN octet_length(result) <= %(inline)s THEN octet_length(result)
                      ELSE 0 END) OVER (ORDER BY id) AS running
      FROM podfn_calls
      WHERE id = ANY(%(ids)s) AND state IN ('succeeded', 'failed', 'timed_out', 'cancelled')
     ) s ON s.id = c.id;

-- name: result_chunk
-- `size` bytes of a succeeded call's pickled result from byte `offset` (1-based).
-- The column is stored uncompressed (0004), so Postgres reads only the slice.
SELECT substring(result FROM %(offset)s FOR %(size)s) AS chunk
FROM podfn_calls WHERE id = %(id)s AND state = 'succeeded';

-- name: value_chunk
-- `size` characters of a succeeded call's JSON result (HTTP invokes) from `offset`.
SELECT substring(result_json FROM %(offset)s FOR %(size)s) AS chunk
FROM podfn_calls WHERE id = %(id)s AND state = 'succeeded';

-- name: error_chunk
-- `size` bytes of a failed call's pickled exception from byte `offset` (1-based).
SELECT substring(error_pickle FROM %(offset)s FOR %(size)s) AS chunk
FROM podfn_calls WHERE id = %(id)s AND state = 'failed';

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

-- name: set_attempt_refs
-- The ref (pod or process) of every attempt a controller turn launched, in one round trip.
UPDATE podfn_attempts a SET ref = r.ref
FROM unnest(%(ids)s::text[], %(attempts)s::int[], %(refs)s::text[]) AS r(id, attempt, ref)
WHERE a.call_id = r.id AND a.attempt = r.attempt;

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
-- Only when `ref` names exactly one active token (an id and another token's
-- name could be equal): an ambiguous reference revokes nothing. NOTIFY
-- podfn_tokens empties every API process's token cache (api/auth.py).
WITH revoked AS (
    UPDATE podfn_tokens SET revoked_at = now()
    WHERE (id = %(ref)s OR name = %(ref)s) AND revoked_at IS NULL
      AND (SELECT count(*) FROM podfn_tokens
           WHERE (id = %(ref)s OR name = %(ref)s) AND revoked_at IS NULL) = 1
    RETURNING id, name, scopes, created_at, revoked_at
)
SELECT id, name, scopes, created_at, revoked_at, pg_notify('podfn_tokens', id) AS notified
FROM revoked;

-- name: active_tokens_named
SELECT id, name FROM podfn_tokens
WHERE (id = %(ref)s OR name = %(ref)s) AND revoked_at IS NULL ORDER BY id;

-- name: lock_function_name
SELECT pg_advisory_xact_lock(hashtext('podfn.function:' || %(name)s));

-- name: insert_function_version
INSERT INTO podfn_function_versions (name, version, function_digest, spec, client_python,
                                     client_cloudpickle, deployed_by)
SELECT %(name)s, COALESCE(max(version), 0) + 1, %(function_digest)s, %(spec)s,
       %(client_python)s, %(client_cloudpickle)s, %(deployed_by)s
FROM podfn_function_versions WHERE name = %(name)s
RETURNING name, version, deployed_at;

-- name: set_version_owner
-- Who deployed the version, as the owner of calls (a token id): the deployer's own
-- Python calls of it share the version's pool (migration 0009).
UPDATE podfn_function_versions SET deployed_by_owner = %(owner)s
WHERE name = %(name)s AND version = %(version)s;

-- name: set_live_version
-- The NOTIFY (sent at commit) wakes the controller: the new live version may
-- want standing workers, the old one's are retired (docs/warm-workers.md).
WITH live AS (
    INSERT INTO podfn_functions (name, live_version) VALUES (%(name)s, %(version)s)
    ON CONFLICT (name) DO UPDATE SET live_version = EXCLUDED.live_version, updated_at = now()
    RETURNING name, live_version
)
SELECT name, live_version, pg_notify('podfn_deployed', name)::text AS notified FROM live;

-- name: list_functions
SELECT f.name, f.live_version, v.spec, v.deployed_at, v.deployed_by, f.updated_at,
       (SELECT max(version) FROM podfn_function_versions WHERE name = f.name) AS latest_version
FROM podfn_functions f
JOIN podfn_function_versions v ON v.name = f.name AND v.version = f.live_version
ORDER BY f.name;

-- name: get_function
SELECT f.name, f.live_version, v.version, v.function_digest, v.spec, v.client_python,
       v.client_cloudpickle, v.deployed_at, v.deployed_by, v.deployed_by_owner
FROM podfn_functions f
JOIN podfn_function_versions v ON v.name = f.name AND v.version = f.live_version
WHERE f.name = %(name)s;

-- name: function_versions
SELECT version, spec, deployed_at, deployed_by FROM podfn_function_versions
WHERE name = %(name)s ORDER BY version;

-- name: claim_idempotency_key
-- With the ids the calls will have (made up front): no second statement to record them.
INSERT INTO podfn_idempotency (owner, key, request_hash, call_ids)
VALUES (%(owner)s, %(key)s, %(request_hash)s, %(call_ids)s)
ON CONFLICT (owner, key) DO NOTHING
RETURNING key;

-- name: get_idempotency_key
SELECT request_hash, call_ids FROM podfn_idempotency WHERE owner = %(owner)s AND key = %(key)s;

-- name: call_owners
SELECT id, owner FROM podfn_calls WHERE id = ANY(%(ids)s);

-- name: call_counts
-- For /metrics: calls per state, and how many queued calls are due now (the queue depth).
SELECT state, count(*) AS calls,
       count(*) FILTER (WHERE state = 'queued' AND (not_before IS NULL OR not_before <= now())) AS due
FROM podfn_calls
GROUP BY state;

-- name: cancellable_calls
-- What a bulk cancel with these filters would cancel now (its dry run).
SELECT id, function_name, state FROM podfn_calls
WHERE state IN ('queued', 'launching', 'running')
  AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
  AND (%(function)s::text IS NULL OR function_name = %(function)s::text)
  AND (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(owner)s::text IS NULL OR owner = %(owner)s::text)
ORDER BY created_at, id;

-- name: call_token_owner
-- A nested-call token (pfn_call_...): valid only while its attempt is the
-- call's current one and has not ended. Returns whom it acts for: the call's
-- owner, and that owner's scopes when the owner is a stored token (NULL for
-- the bootstrap token or no-auth mode; a revoked owner yields no row).
SELECT c.id AS call_id, c.owner, t.scopes
FROM podfn_attempts a
JOIN podfn_calls c ON c.id = a.call_id AND c.attempt = a.attempt
LEFT JOIN podfn_tokens t ON t.id = c.owner
WHERE a.token_hash = %(hash)s AND a.finished_at IS NULL
  AND c.state IN ('launching', 'running')
  AND (t.id IS NULL OR t.revoked_at IS NULL)
  AND (c.owner IN ('', 'root') OR t.id IS NOT NULL);

-- name: finished_outcomes
-- Issue 12 (batches and bytes): the finished calls among ids for a binary
-- `wait` (api/results.py), with the bytes of their payloads up to a budget:
-- in finishing order, a call is included while the payload bytes of the calls
-- before it stay under `budget` (so the first is always included, and one
-- response carries at most `budget` plus one payload); the rest wait for the
-- next request. A payload of at most `inline` bytes comes in the row while such
-- payloads add up to at most `inline_budget`; any other is streamed from the
-- table in chunks (result_chunk, error_chunk), so the API never holds it whole.
SELECT c.id, c.function_name, c.state, c.attempt, c.reason, c.result_format,
       s.result_size, octet_length(c.result_json) AS value_size,
       CASE WHEN s.result_size <= %(inline)s AND s.inlined <= %(inline_budget)s
            THEN c.result END AS result,
       c.error_type, c.error_message, c.error_traceback,
       s.error_size AS error_pickle_size,
       CASE WHEN s.error_size <= %(inline)s AND s.inlined <= %(inline_budget)s
            THEN c.error_pickle END AS error_pickle,
       c.created_at, c.started_at, c.finished_at
FROM podfn_calls c
JOIN (SELECT id, finished_at, octet_length(result) AS result_size,
             octet_length(error_pickle) AS error_size,
             coalesce(octet_length(result), 0) + coalesce(octet_length(error_pickle), 0) AS own,
             sum(coalesce(octet_length(result), 0) + coalesce(octet_length(error_pickle), 0))
                 OVER w AS total,
             sum(CASE WHEN coalesce(octet_length(result), 0) <= %(inline)s
                       AND coalesce(octet_length(error_pickle), 0) <= %(inline)s
                      THEN coalesce(octet_length(result), 0)
                           + coalesce(octet_length(error_pickle), 0)
                      ELSE 0 END) OVER w AS inlined
      FROM podfn_calls
      WHERE id = ANY(%(ids)s) AND state IN ('succeeded', 'failed', 'timed_out', 'cancelled')
      WINDOW w AS (ORDER BY finished_at, id)
     ) s ON s.id = c.id
WHERE s.total - s.own < %(budget)s
ORDER BY s.finished_at, s.id;
