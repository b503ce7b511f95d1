-- The warm path in fewer round trips (issue 12, docs/benchmarks.md).
--
-- 1. `next` (migration 0008) woke the controller (NOTIFY podfn_warm) on every
--    claim, and each wake is a controller turn of several statements: on a
--    two-core machine that turn competed with the call it was about. It now
--    wakes it only when the claimed call has a `timeout` to arm, or when an
--    idle worker took a call and more of its pool wait (the controller may add
--    workers); otherwise the next turn (a cancel, a submission, the periodic
--    sweep) catches up. The body moves to podfn_next_call, which the runtime
--    role cannot execute, so `succeed_next` can say the worker came straight
--    from a call.
-- 2. `succeed_next`: what a runtime sent as three statements after a call
--    (usage, succeed, then next for a warm worker) in one, so one round trip
--    records the outcome and claims the pool's next call. Each part is the
--    existing protocol function, with its own secret check and guards: the
--    outcome first (it spends the secret for writes), then `next`, which the
--    spent secret still unlocks exactly once. A null p_secret_hash asks for
--    no next call (a cold runtime). No row back: the attempt was stale.

CREATE FUNCTION podfn_next_call(p_id text, p_attempt integer, p_secret text,
                                p_secret_hash text, p_chained boolean)
RETURNS TABLE (verdict text, id text, attempt integer, function bytea, function_digest text,
               args bytea, spec jsonb, client_python text, client_cloudpickle text,
               result_format text)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    cur record;
    pick record;
    w text;
    budget numeric;
    served bigint;
BEGIN
    SELECT a.call_id, a.attempt, a.ref, a.worker, c.pool, c.spec INTO cur
    FROM podfn_attempts a JOIN podfn_calls c ON c.id = a.call_id
    WHERE a.call_id = p_id AND a.attempt = p_attempt
      AND a.state IN ('succeeded', 'failed', 'retrying') AND NOT a.handed_on
      AND a.secret_hash IS NOT NULL AND p_secret IS NOT NULL
      AND a.secret_hash = encode(sha256(convert_to(p_secret, 'UTF8')), 'hex')
    FOR UPDATE OF a;
    IF NOT FOUND OR p_secret_hash IS NULL OR p_secret_hash !~ '^[0-9a-f]{64}$' THEN
        verdict := 'refused';
        RETURN NEXT;
        RETURN;
    END IF;
    w := coalesce(cur.worker, cur.call_id || '/' || cur.attempt);
    budget := CASE WHEN NOT cur.spec ? 'max_calls_per_worker' THEN 1
                   WHEN jsonb_typeof(cur.spec->'max_calls_per_worker') = 'null' THEN NULL
                   WHEN jsonb_typeof(cur.spec->'max_calls_per_worker') = 'number'
                       THEN (cur.spec->>'max_calls_per_worker')::numeric
                   ELSE 1 END;
    IF budget IS NOT NULL THEN
        SELECT 1 + count(*) INTO served FROM podfn_attempts a WHERE a.worker = w;
        IF served >= budget THEN
            verdict := 'done';
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    SELECT c.id, c.created_at INTO pick FROM podfn_calls c
    WHERE c.pool = cur.pool AND c.state = 'queued'
      AND (c.not_before IS NULL OR c.not_before <= clock_timestamp())
    ORDER BY c.created_at, c.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        verdict := 'empty';
        RETURN NEXT;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM podfn_calls o
               WHERE o.state = 'queued' AND o.pool <> cur.pool
                 AND (o.not_before IS NULL OR o.not_before <= clock_timestamp())
                 AND o.created_at < pick.created_at
                 AND o.created_at < clock_timestamp() - interval '1 second') THEN
        verdict := 'yield';
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE podfn_attempts a SET handed_on = true
    WHERE a.call_id = cur.call_id AND a.attempt = cur.attempt;
    RETURN QUERY
    WITH c AS (
        UPDATE podfn_calls c
        SET state = 'running', attempt = c.attempt + 1, launched_at = clock_timestamp(),
            started_at = clock_timestamp(), not_before = NULL
        WHERE c.id = pick.id AND c.state = 'queued'
        RETURNING c.id, c.attempt, c.function_digest, c.args, c.spec, c.client_python,
                  c.client_cloudpickle, c.result_format
    ), a AS (
        INSERT INTO podfn_attempts (call_id, attempt, state, ref, worker, secret_hash,
                                    started_at)
        SELECT c.id, c.attempt, 'running', cur.ref, w, p_secret_hash, clock_timestamp()
        FROM c
    )
    SELECT 'claimed', c.id, c.attempt, p.data, c.function_digest, c.args, c.spec,
           c.client_python, c.client_cloudpickle, c.result_format
    FROM c JOIN podfn_payloads p ON p.digest = c.function_digest;
    -- Wake the controller only when it has something to do with this claim: arm
    -- the call's `timeout`, or, when an idle worker woke up to calls, size the
    -- pool while more of them are queued. A worker going from call to call
    -- (p_chained) changes nothing the controller sizes by, and submissions
    -- wake it anyway. A cancel wakes it too (podfn_cancelled) and every turn
    -- re-reads which attempt each worker runs.
    IF EXISTS (SELECT 1 FROM podfn_calls c
               WHERE c.id = pick.id AND jsonb_typeof(c.spec->'timeout') = 'number')
       OR (NOT p_chained AND EXISTS (SELECT 1 FROM podfn_calls q
                                     WHERE q.pool = cur.pool AND q.state = 'queued')) THEN
        PERFORM pg_notify('podfn_warm', w);
    END IF;
END $$;


REVOKE ALL ON FUNCTION podfn_next_call(text, integer, text, text, boolean) FROM PUBLIC;

-- The protocol function: its contract is migration 0008's.
CREATE OR REPLACE FUNCTION podfn_runtime_v1.next(p_id text, p_attempt integer, p_secret text,
                                                 p_secret_hash text)
RETURNS TABLE (verdict text, id text, attempt integer, function bytea, function_digest text,
               args bytea, spec jsonb, client_python text, client_cloudpickle text,
               result_format text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
SELECT * FROM podfn_next_call(p_id, p_attempt, p_secret, p_secret_hash, false)
$$;

CREATE FUNCTION podfn_runtime_v1.succeed_next(p_id text, p_attempt integer, p_secret text,
                                              p_result bytea, p_result_json text,
                                              p_stdout text, p_stderr text,
                                              p_peak_bytes bigint, p_cpu_seconds float8,
                                              p_wall_seconds float8, p_secret_hash text)
RETURNS TABLE (state text, verdict text, id text, attempt integer, function bytea,
               function_digest text, args bytea, spec jsonb, client_python text,
               client_cloudpickle text, result_format text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    done record;
    n record;
BEGIN
    PERFORM podfn_runtime_v1.usage(p_id, p_attempt, p_secret, p_peak_bytes, p_cpu_seconds,
                                   p_wall_seconds);
    SELECT s.state INTO done
    FROM podfn_runtime_v1.succeed(p_id, p_attempt, p_secret, p_result, p_result_json,
                                  p_stdout, p_stderr) s;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    state := done.state;
    IF p_secret_hash IS NOT NULL THEN
        SELECT * INTO n FROM podfn_next_call(p_id, p_attempt, p_secret, p_secret_hash, true);
        verdict := n.verdict;
        id := n.id;
        attempt := n.attempt;
        function := n.function;
        function_digest := n.function_digest;
        args := n.args;
        spec := n.spec;
        client_python := n.client_python;
        client_cloudpickle := n.client_cloudpickle;
        result_format := n.result_format;
    END IF;
    RETURN NEXT;
END $$;

REVOKE ALL ON FUNCTION podfn_runtime_v1.succeed_next(text, integer, text, bytea, text, text, text,
                                                     bigint, float8, float8, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION podfn_runtime_v1.next(text, integer, text, text) FROM PUBLIC;
