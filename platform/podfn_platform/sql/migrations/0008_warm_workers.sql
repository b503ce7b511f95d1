-- Warm workers (docs/warm-workers.md): a runtime that finished a call claims
-- the next queued call of its own pool straight from Postgres.
--
-- A pool is "the same function payload, the same spec, the same owner": a
-- worker only ever runs calls that would have got an identical pod, and one
-- tenant's worker never runs another tenant's call. The key is a generated
-- column so it is computed once, by Postgres, the same way for every row.

ALTER TABLE podfn_calls
    ADD COLUMN pool text GENERATED ALWAYS AS (
        md5(function_digest || ' ' || spec::text || ' ' || coalesce(owner, ''))) STORED;

CREATE INDEX podfn_calls_queued_by_pool ON podfn_calls (pool, created_at, id)
    WHERE state = 'queued';

-- An attempt started by a warm worker names the worker: "<call id>/<attempt>"
-- of the attempt the controller launched it for (its first). The controller
-- maps a worker's exit to the attempt it was running through this column.
-- `handed_on`: the worker used this attempt's secret to claim its next call;
-- a secret hands on once, so a worker cannot split into two.
ALTER TABLE podfn_attempts
    ADD COLUMN worker text,
    ADD COLUMN handed_on boolean NOT NULL DEFAULT false;

CREATE INDEX podfn_attempts_by_worker ON podfn_attempts (worker, launched_at)
    WHERE worker IS NOT NULL;

-- The next call for the worker that holds `p_secret`, the secret of the
-- attempt it ran last (p_id, p_attempt). One statement's worth of work under
-- row locks: the worker's last attempt must have ended by the runtime's own
-- write (succeeded, failed, retrying: not disrupted, timed out or cancelled,
-- which mean the controller has given up on the worker) and not yet handed
-- on; the call's spec must allow another call in this worker
-- (`max_calls_per_worker`, null = no limit). Then the oldest eligible queued
-- call of the same pool goes queued -> running at attempt + 1 with a new
-- attempt row holding the worker's ref, its name and `p_secret_hash`
-- (sha256 hex of a secret the runtime made and keeps). The verdict says
-- what happened:
--   claimed  the call's payload follows;
--   empty    nothing queued in the pool now (wait and ask again);
--   yield    a call of another pool has waited longer than this pool's
--            next one for over a second: the worker should exit and give its
--            place to the controller, so warm pools never starve cold calls;
--   done     the worker has run its `max_calls_per_worker`;
--   refused  the secret does not hold a live worker's last attempt.
CREATE FUNCTION podfn_runtime_v1.next(p_id text, p_attempt integer, p_secret text,
                                      p_secret_hash text)
RETURNS TABLE (verdict text, id text, attempt integer, function bytea, function_digest text,
               args bytea, spec jsonb, client_python text, client_cloudpickle text,
               result_format text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
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
    -- The controller tracks which attempt each worker runs (timeouts, cancels).
    PERFORM pg_notify('podfn_warm', w);
END $$;

REVOKE ALL ON FUNCTION podfn_runtime_v1.next(text, integer, text, text) FROM PUBLIC;
