-- Standing workers (docs/warm-workers.md): the `min_workers` warm workers the
-- controller keeps for a deployed function's live version, started with no
-- call to run, so the first invoke does not wait for a process or a pod.

-- Whose calls share a worker. Migration 0008 keyed every pool by its owner
-- (the token that submitted the call). An HTTP invoke of a deployed function
-- is different: the API built its arguments from JSON (no pickle from the
-- invoker, so no invoker's code can run), the spec and the payload are the
-- deployed version's, so the only code in the worker is the deployer's, which
-- sees every invoker's arguments anyway. So is a call the deployer itself
-- submits from Python (`by_deployer`: its pickled arguments are the
-- deployer's own code). Those calls share the function version's pool,
-- whoever invoked it; every other call keeps its per-owner pool
-- (docs/security.md). The same expression keys podfn_workers below.
ALTER TABLE podfn_function_versions
    ADD COLUMN deployed_by_owner text;  -- the deploying token's id (owner of its calls)

ALTER TABLE podfn_calls
    ADD COLUMN by_deployer boolean NOT NULL DEFAULT false;

ALTER TABLE podfn_calls DROP COLUMN pool;  -- and its index

ALTER TABLE podfn_calls
    ADD COLUMN pool text GENERATED ALWAYS AS (
        CASE WHEN function_version IS NOT NULL AND (result_format = 'json' OR by_deployer)
             THEN md5(function_digest || ' ' || spec::text || ' deployed ' || function_name
                      || ' ' || function_version::text)
             ELSE md5(function_digest || ' ' || spec::text || ' ' || coalesce(owner, ''))
        END) STORED;

CREATE INDEX podfn_calls_queued_by_pool ON podfn_calls (pool, created_at, id)
    WHERE state = 'queued';

-- One row per standing worker the controller started. The worker holds a
-- secret minted by the controller (only its hash is here) and presents it to
-- podfn_runtime_v1.next_standing for each call. `retired_at`: the controller
-- wants the worker gone (a new version went live, the function went away,
-- fewer `min_workers`); it finishes its call, if any, and exits. A row is
-- deleted when the worker's process is gone, so a stale secret matches nothing.
CREATE TABLE podfn_workers (
    name              text PRIMARY KEY,
    function_name     text NOT NULL,
    function_version  integer NOT NULL,
    function_digest   text NOT NULL,
    spec              jsonb NOT NULL,
    pool              text GENERATED ALWAYS AS (
        md5(function_digest || ' ' || spec::text || ' deployed ' || function_name
            || ' ' || function_version::text)) STORED,
    secret_hash       text NOT NULL UNIQUE CHECK (secret_hash ~ '^[0-9a-f]{64}$'),
    ref               text,
    started_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    retired_at        timestamptz,
    FOREIGN KEY (function_name, function_version)
        REFERENCES podfn_function_versions (name, version)
);

-- The next call for the standing worker `p_worker`, which proves it is that
-- worker with `p_secret`. Under the worker row's lock (two holders of one
-- secret take turns, never two calls at once): the worker must still be
-- wanted (else `retired`), its last attempt, if any, must have ended by the
-- runtime's own write (a worker the controller gave up on, or one with a call
-- in flight, is refused), and its budget (`max_calls_per_worker`, counted in
-- the attempts table) must not be spent (`done`). Then, exactly as
-- podfn_runtime_v1.next does, the oldest eligible queued call of the worker's
-- pool goes queued -> running with a new attempt that holds `p_secret_hash`
-- (every write of the call is signed with that per-attempt secret, so the
-- usual fencing holds). A standing worker also yields when its own pool is
-- empty and a call of another pool has waited for over a second: standing
-- workers only fill capacity nobody else is waiting for.
CREATE FUNCTION podfn_runtime_v1.next_standing(p_worker text, p_secret text,
                                               p_secret_hash text)
RETURNS TABLE (verdict text, id text, attempt integer, function bytea, function_digest text,
               args bytea, spec jsonb, client_python text, client_cloudpickle text,
               result_format text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    wk record;
    pick_id text;
    pick_created timestamptz;
    last_state text;
    have_pick boolean;
    budget numeric;
    served bigint;
BEGIN
    SELECT w.name, w.pool, w.spec, w.ref, w.retired_at INTO wk
    FROM podfn_workers w
    WHERE w.name = p_worker AND p_secret IS NOT NULL
      AND w.secret_hash = encode(sha256(convert_to(p_secret, 'UTF8')), 'hex')
    FOR UPDATE;
    IF NOT FOUND OR p_secret_hash IS NULL OR p_secret_hash !~ '^[0-9a-f]{64}$' THEN
        verdict := 'refused';
        RETURN NEXT;
        RETURN;
    END IF;
    IF wk.retired_at IS NOT NULL THEN
        verdict := 'retired';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT a.state INTO last_state FROM podfn_attempts a
    WHERE a.worker = wk.name ORDER BY a.launched_at DESC, a.attempt DESC LIMIT 1;
    IF FOUND AND last_state NOT IN ('succeeded', 'failed', 'retrying') THEN
        verdict := 'refused';
        RETURN NEXT;
        RETURN;
    END IF;
    budget := CASE WHEN NOT wk.spec ? 'max_calls_per_worker' THEN 1
                   WHEN jsonb_typeof(wk.spec->'max_calls_per_worker') = 'null' THEN NULL
                   WHEN jsonb_typeof(wk.spec->'max_calls_per_worker') = 'number'
                       THEN (wk.spec->>'max_calls_per_worker')::numeric
                   ELSE 1 END;
    IF budget IS NOT NULL THEN
        SELECT count(*) INTO served FROM podfn_attempts a WHERE a.worker = wk.name;
        IF served >= budget THEN
            verdict := 'done';
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    SELECT c.id, c.created_at INTO pick_id, pick_created FROM podfn_calls c
    WHERE c.pool = wk.pool AND c.state = 'queued'
      AND (c.not_before IS NULL OR c.not_before <= clock_timestamp())
    ORDER BY c.created_at, c.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    have_pick := FOUND;
    IF EXISTS (SELECT 1 FROM podfn_calls o
               WHERE o.state = 'queued' AND o.pool <> wk.pool
                 AND (o.not_before IS NULL OR o.not_before <= clock_timestamp())
                 AND (NOT have_pick OR o.created_at < pick_created)
                 AND o.created_at < clock_timestamp() - interval '1 second') THEN
        verdict := 'yield';
        RETURN NEXT;
        RETURN;
    END IF;
    IF NOT have_pick THEN
        verdict := 'empty';
        RETURN NEXT;
        RETURN;
    END IF;
    RETURN QUERY
    WITH c AS (
        UPDATE podfn_calls c
        SET state = 'running', attempt = c.attempt + 1, launched_at = clock_timestamp(),
            started_at = clock_timestamp(), not_before = NULL
        WHERE c.id = pick_id AND c.state = 'queued'
        RETURNING c.id, c.attempt, c.function_digest, c.args, c.spec, c.client_python,
                  c.client_cloudpickle, c.result_format
    ), a AS (
        -- handed_on from the start: a standing worker asks with its own secret,
        -- so the attempt's secret never claims a call through `next` (code of
        -- the call, which can read it, cannot split the worker in two).
        INSERT INTO podfn_attempts (call_id, attempt, state, ref, worker, secret_hash,
                                    started_at, handed_on)
        SELECT c.id, c.attempt, 'running', wk.ref, wk.name, p_secret_hash, clock_timestamp(),
               true
        FROM c
    )
    SELECT 'claimed', c.id, c.attempt, p.data, c.function_digest, c.args, c.spec,
           c.client_python, c.client_cloudpickle, c.result_format
    FROM c JOIN podfn_payloads p ON p.digest = c.function_digest;
    PERFORM pg_notify('podfn_warm', wk.name);
END $$;

REVOKE ALL ON FUNCTION podfn_runtime_v1.next_standing(text, text, text) FROM PUBLIC;
