-- The state machine of a call, as the controller and the API drive it
-- (docs/design.md, "A call's life").
--
-- Each query below is ONE statement and is the only way its transition
-- happens. Each is guarded by the call's id, its attempt (fencing: a stale
-- attempt matches nothing) and the states it may come from, so a final state
-- never changes and a late or repeated write is a no-op. Each also records
-- the attempt's own outcome in podfn_attempts. Every statement returns a row
-- only when the transition happened.
--
-- The runtime's transitions (claim, succeed, fail) are the SECURITY DEFINER
-- functions of migration 0003 (schema podfn_runtime_v1);
-- `fail` here and there share one definition, the SQL function podfn_fail.

-- name: claim_queued
-- Controller: queued -> launching, starting the next attempt, claimed and
-- armed in one round trip: the controller mints credentials for as many calls
-- as it has room for and passes their hashes; the n-th claimed row (`slot`)
-- gets the n-th pair, so no runtime can ever see its attempt unarmed (with
-- empty hash arrays the attempts are born unarmed: arm_attempts arms them).
-- Calls of the pools named in %(skip_pools)s (an empty array: none) are left
-- for an idle warm worker of that pool to take (podfn_runtime_v1.next,
-- docs/warm-workers.md). A warm call (max_calls_per_worker other than 1)
-- starts a worker, so each warm pool gets at most its room: `pool_rooms` for
-- the `pools` that have workers, `pool_workers` for the others (NULL: no
-- cap). The cap looks at the oldest 4 x `limit` queued calls (the rest wait
-- for the next turn) so that a turn never ranks a whole queue.
WITH oldest AS (
    SELECT id, created_at, pool,
           coalesce(spec->'max_calls_per_worker', '1'::jsonb) <> '1'::jsonb AS warm
    FROM podfn_calls
    WHERE state = 'queued' AND (not_before IS NULL OR not_before <= clock_timestamp())
      AND pool <> ALL(%(skip_pools)s::text[])
    ORDER BY created_at, id
    LIMIT 4 * %(limit)s
), allowed AS (
    SELECT o.id
    FROM (SELECT oldest.*, row_number() OVER (PARTITION BY pool, warm
                                              ORDER BY created_at, id) AS nth
          FROM oldest) o
    LEFT JOIN unnest(%(pools)s::text[], %(pool_rooms)s::int[]) AS r(pool, room)
           ON r.pool = o.pool
    WHERE NOT o.warm OR o.nth <= coalesce(r.room, %(pool_workers)s::int, o.nth)
), picked AS (
    SELECT id FROM podfn_calls
    WHERE id IN (SELECT id FROM allowed) AND state = 'queued'
    ORDER BY created_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE podfn_calls c
    SET state = 'launching', attempt = c.attempt + 1, launched_at = clock_timestamp(),
        not_before = NULL
    FROM picked
    WHERE c.id = picked.id AND c.state = 'queued'
    RETURNING c.id, c.attempt, c.function_name, c.spec, c.client_python, c.pool
), numbered AS (
    SELECT claimed.*, row_number() OVER (ORDER BY id)::int AS slot FROM claimed
), recorded AS (
    INSERT INTO podfn_attempts (call_id, attempt, secret_hash, token_hash)
    SELECT id, attempt, (%(secret_hashes)s::text[])[slot], (%(token_hashes)s::text[])[slot]
    FROM numbered
)
SELECT id, attempt, function_name, spec, client_python, pool, slot FROM numbered ORDER BY slot;

-- name: fail
-- Controller: launching/running -> failed, or back to queued with
-- exponential backoff while the user's `retries` last and the failure is
-- `retryable` (the function's own failure, not a wrong version or setup).
SELECT id, attempt, state
FROM podfn_fail(%(id)s, %(attempt)s, %(retryable)s, %(reason)s, %(exit_code)s,
                %(error_type)s, %(error_message)s, %(error_traceback)s, %(error_pickle)s,
                %(stdout)s, %(stderr)s);

-- name: arm_attempts
-- Controller: store the hashes of each just-claimed attempt's secret (for the
-- runtime protocol) and API token (for nested calls), before it is launched.
-- Only hashes are stored; the secrets reach the attempt and nowhere else.
UPDATE podfn_attempts a
SET secret_hash = x.secret_hash, token_hash = x.token_hash
FROM unnest(%(ids)s::text[], %(attempts)s::int[], %(secret_hashes)s::text[],
            %(token_hashes)s::text[]) AS x(call_id, attempt, secret_hash, token_hash)
WHERE a.call_id = x.call_id AND a.attempt = x.attempt AND a.finished_at IS NULL
  AND a.secret_hash IS NULL;

-- name: disrupt
-- Controller: launching/running -> queued after a failure the user did not
-- cause (the process vanished, the controller restarted, a pod was evicted).
-- Does not spend the user's retries; past the platform's limit -> failed.
WITH c AS (
    UPDATE podfn_calls c
    SET state = CASE WHEN c.disruptions < %(max_disruptions)s THEN 'queued' ELSE 'failed' END,
        disruptions = c.disruptions + 1,
        finished_at = CASE WHEN c.disruptions < %(max_disruptions)s
                           THEN NULL ELSE clock_timestamp() END,
        reason = CASE WHEN c.disruptions < %(max_disruptions)s THEN %(reason)s
                      ELSE %(reason)s || ' (platform retries exhausted after '
                           || c.disruptions + 1 || ' disruptions)' END
    WHERE c.id = %(id)s AND c.attempt = %(attempt)s AND c.state IN ('launching', 'running')
    RETURNING c.id, c.attempt, c.state
), a AS (
    UPDATE podfn_attempts SET state = 'disrupted', reason = %(reason)s,
        exit_code = %(exit_code)s, finished_at = clock_timestamp()
    FROM c WHERE podfn_attempts.call_id = c.id AND podfn_attempts.attempt = c.attempt
)
SELECT id, attempt, state,
       CASE WHEN state = 'failed' THEN pg_notify('podfn_final', id)
            ELSE pg_notify('podfn_queued', id) END
FROM c;

-- name: defer
-- Controller: launching -> queued, not started, to be tried again after
-- `delay` seconds (the cluster refused the pod for now, e.g. quota). Spends
-- neither the user's retries nor the platform's.
WITH c AS (
    UPDATE podfn_calls
    SET state = 'queued', reason = %(reason)s,
        not_before = clock_timestamp() + make_interval(secs => %(delay)s)
    WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'launching'
    RETURNING id, attempt, state
), a AS (
    UPDATE podfn_attempts SET state = 'deferred', reason = %(reason)s,
        finished_at = clock_timestamp()
    FROM c WHERE podfn_attempts.call_id = c.id AND podfn_attempts.attempt = c.attempt
)
SELECT id, attempt, state, pg_notify('podfn_queued', id) FROM c;

-- name: time_out
-- Controller: launching/running -> timed_out. The deadline wins over retries.
WITH c AS (
    UPDATE podfn_calls
    SET state = 'timed_out', reason = %(reason)s, finished_at = clock_timestamp()
    WHERE id = %(id)s AND attempt = %(attempt)s AND state IN ('launching', 'running')
    RETURNING id, attempt, state
), a AS (
    UPDATE podfn_attempts SET state = 'timed_out', reason = %(reason)s,
        finished_at = clock_timestamp()
    FROM c WHERE podfn_attempts.call_id = c.id AND podfn_attempts.attempt = c.attempt
)
SELECT id, attempt, state, pg_notify('podfn_final', id) FROM c;

-- name: cancel
-- API: any non-final state -> cancelled. The controller hears podfn_cancelled
-- and stops the attempt's process or pod.
WITH c AS (
    UPDATE podfn_calls
    SET state = 'cancelled', reason = %(reason)s, finished_at = clock_timestamp(),
        not_before = NULL
    WHERE id = %(id)s AND state IN ('queued', 'launching', 'running')
    RETURNING id, attempt, state
), a AS (
    UPDATE podfn_attempts SET state = 'cancelled', reason = %(reason)s,
        finished_at = clock_timestamp()
    FROM c WHERE podfn_attempts.call_id = c.id AND podfn_attempts.attempt = c.attempt
        AND podfn_attempts.finished_at IS NULL
)
SELECT id, attempt, state, pg_notify('podfn_final', id), pg_notify('podfn_cancelled', id)
FROM c;

-- name: cancel_many
-- API (bulk cancel): every matching call in a non-final state -> cancelled, in
-- one statement. `ids` NULL means "any id"; each other filter NULL means "any".
-- `owner` is set for tokens that may cancel only their own calls.
WITH c AS (
    UPDATE podfn_calls
    SET state = 'cancelled', reason = %(reason)s, finished_at = clock_timestamp(),
        not_before = NULL
    WHERE state IN ('queued', 'launching', 'running')
      AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
      AND (%(function)s::text IS NULL OR function_name = %(function)s::text)
      AND (%(state)s::text IS NULL OR state = %(state)s::text)
      AND (%(owner)s::text IS NULL OR owner = %(owner)s::text)
    RETURNING id, attempt, state
), a AS (
    UPDATE podfn_attempts SET state = 'cancelled', reason = %(reason)s,
        finished_at = clock_timestamp()
    FROM c WHERE podfn_attempts.call_id = c.id AND podfn_attempts.attempt = c.attempt
        AND podfn_attempts.finished_at IS NULL
)
SELECT id, attempt, state, pg_notify('podfn_final', id), pg_notify('podfn_cancelled', id)
FROM c;
