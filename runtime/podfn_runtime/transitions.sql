-- The state machine of a call (DESIGN.md, "A call's life").
--
-- Each query below is ONE statement and is the only way its transition
-- happens. Each is guarded by the call's id, its attempt (fencing: a stale
-- attempt matches nothing) and the states it may come from, so a final state
-- never changes and a late or repeated write is a no-op. Each also records
-- the attempt's own outcome in podfn_attempts. Every statement returns a row
-- only when the transition happened.
--
-- Shared by the runtime (inside the call's process or pod) and the
-- controller; the API uses only `cancel`.

-- name: claim_queued
-- Controller: queued -> launching, starting the next attempt.
WITH picked AS (
    SELECT id FROM podfn_calls
    WHERE state = 'queued' AND (not_before IS NULL OR not_before <= clock_timestamp())
    ORDER BY created_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE podfn_calls c
    SET state = 'launching', attempt = c.attempt + 1, launched_at = clock_timestamp(),
        not_before = NULL
    FROM picked
    WHERE c.id = picked.id AND c.state = 'queued'
    RETURNING c.id, c.attempt, c.function_name, c.spec, c.client_python
), recorded AS (
    INSERT INTO podfn_attempts (call_id, attempt) SELECT id, attempt FROM claimed
)
SELECT id, attempt, function_name, spec, client_python FROM claimed;

-- name: claim_attempt
-- Runtime: launching -> running. Returns what the runtime needs to run it.
WITH c AS (
    UPDATE podfn_calls
    SET state = 'running', started_at = clock_timestamp()
    WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'launching'
    RETURNING id, attempt, function_digest, args, spec, client_python, client_cloudpickle,
              result_format
), a AS (
    UPDATE podfn_attempts SET state = 'running', started_at = clock_timestamp()
    FROM c WHERE podfn_attempts.call_id = c.id AND podfn_attempts.attempt = c.attempt
)
SELECT c.id, c.attempt, p.data AS function, c.args, c.spec, c.client_python,
       c.client_cloudpickle, c.result_format
FROM c JOIN podfn_payloads p ON p.digest = c.function_digest;

-- name: succeed
-- Runtime: running -> succeeded, with the result and the captured output.
WITH c AS (
    UPDATE podfn_calls
    SET state = 'succeeded', result = %(result)s, result_json = %(result_json)s,
        stdout = %(stdout)s, stderr = %(stderr)s,
        reason = NULL, finished_at = clock_timestamp()
    WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'running'
    RETURNING id, attempt, state
), a AS (
    UPDATE podfn_attempts SET state = 'succeeded', exit_code = 0, finished_at = clock_timestamp()
    FROM c WHERE podfn_attempts.call_id = c.id AND podfn_attempts.attempt = c.attempt
)
SELECT id, attempt, state, pg_notify('podfn_final', id) FROM c;

-- name: progress
-- Runtime: the output captured so far, while the call runs (not a transition:
-- the state does not change, and only the running attempt may write it).
UPDATE podfn_calls SET stdout = %(stdout)s, stderr = %(stderr)s
WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'running'
RETURNING id;

-- name: fail
-- Runtime or controller: launching/running -> failed, or back to queued with
-- exponential backoff while the user's `retries` last and the failure is
-- `retryable` (the function's own failure, not a wrong version or setup).
WITH d AS (
    SELECT id,
           %(retryable)s AND user_failures < COALESCE((spec->>'retries')::int, 0) AS retry,
           LEAST(COALESCE((spec->>'retry_backoff')::float8, 1.0) * power(2, user_failures),
                 300.0) AS backoff
    FROM podfn_calls WHERE id = %(id)s
), c AS (
    UPDATE podfn_calls c
    SET state = CASE WHEN d.retry THEN 'queued' ELSE 'failed' END,
        user_failures = c.user_failures + d.retry::int,
        not_before = CASE WHEN d.retry
                          THEN clock_timestamp() + make_interval(secs => d.backoff) END,
        finished_at = CASE WHEN d.retry THEN NULL ELSE clock_timestamp() END,
        reason = %(reason)s,
        error_type = %(error_type)s, error_message = %(error_message)s,
        error_traceback = %(error_traceback)s, error_pickle = %(error_pickle)s,
        stdout = COALESCE(%(stdout)s, c.stdout), stderr = COALESCE(%(stderr)s, c.stderr)
    FROM d
    WHERE c.id = d.id AND c.attempt = %(attempt)s AND c.state IN ('launching', 'running')
    RETURNING c.id, c.attempt, c.state
), a AS (
    UPDATE podfn_attempts
    SET state = CASE WHEN c.state = 'queued' THEN 'retrying' ELSE 'failed' END,
        reason = %(reason)s, exit_code = %(exit_code)s, finished_at = clock_timestamp()
    FROM c WHERE podfn_attempts.call_id = c.id AND podfn_attempts.attempt = c.attempt
)
SELECT id, attempt, state,
       CASE WHEN state = 'failed' THEN pg_notify('podfn_final', id)
            ELSE pg_notify('podfn_queued', id) END
FROM c;

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

-- name: attempt_record
-- Runtime, a read: the call's state and the state of one of its attempts.
-- After a lost reply the runtime asks whether its write landed for its own
-- attempt before it concludes the attempt was stale.
SELECT c.id, a.attempt, c.state AS call_state, c.attempt AS call_attempt,
       a.state AS attempt_state
FROM podfn_calls c JOIN podfn_attempts a ON a.call_id = c.id
WHERE c.id = %(id)s AND a.attempt = %(attempt)s;

-- name: claimed_attempt
-- Runtime, a read: what claim_attempt returns, for an attempt whose claim landed.
SELECT c.id, c.attempt, p.data AS function, c.args, c.spec, c.client_python,
       c.client_cloudpickle, c.result_format
FROM podfn_calls c JOIN podfn_payloads p ON p.digest = c.function_digest
WHERE c.id = %(id)s AND c.attempt = %(attempt)s AND c.state = 'running';
