-- A warm worker's claims and records, cheaper in the backend (issue 12, fourth
-- round). Same functions, same signatures and answers as migration 0012:
--
-- `podfn_claim_calls` counted the pool's queue up to want * 64 rows (a heap
--    visit each: `not_before` is not in the index) at every claim, to size the
--    worker's share; it now asks whether anything is queued (2 rows), and counts
--    only as far as the share can reach (want * (busy workers + 1)), which gives
--    the same share.
-- `podfn_runtime_v1.succeed_many` answers its `succeeded` rows in the order of
--    the outcomes given (0012's order was the plan's).
-- Both read podfn_attempts whole at every statement once a table had grown past
--    what it held when a session first ran them: PL/pgSQL keeps a statement's
--    generic plan for the session, and a plan made while podfn_attempts was a
--    few pages hash-joined the outcomes (and the start marks) against a scan of
--    the whole table. In a warm map every record statement then read every
--    attempt ever made (12,000 attempts: ~700 buffers, twice per statement), so
--    each map on a fresh stack ran slower than the one before it. Every
--    statement here looks rows up by key, so these functions plan with sequential
--    scans, hash and merge joins disabled (succeed_many's body moves to
--    podfn_record_outcomes, which carries the settings, so the protocol function
--    keeps its pinned configuration).
-- The claim read in proportion to the pool's queue at every claim (so a map of N
-- calls cost O(N^2) in all): it now updates the calls it picked by their row
-- addresses, and the `yield` check has an index of queued calls by age.
--
-- Not done: writing attempt_holds' checks into succeed_many's statement (a
-- function call per outcome saved) let the planner, with statistics of a young
-- table cached in the session's plan, read podfn_attempts whole at every record.

-- Queued calls by age, whatever their pool: a claim asks whether a call of another
-- pool has waited longer than the pool's next one (`yield`). With only
-- podfn_calls_queued_by_pool (pool first) that question read every queued call.
CREATE INDEX podfn_calls_queued_by_age ON podfn_calls (created_at) WHERE state = 'queued';

-- The attempt each warm worker started last, which the controller asks at every
-- turn (warm.sql, worker_attempts): it ordered all of a worker's attempts by
-- their start to take the newest, so a turn read every call the worker had ever
-- run (2,900 rows per worker after a map of 12,000 on four workers).
CREATE INDEX podfn_attempts_started_by_worker
    ON podfn_attempts (worker, started_at DESC, attempt DESC)
    WHERE worker IS NOT NULL AND started_at IS NOT NULL;

CREATE OR REPLACE FUNCTION podfn_claim_calls(p_id text, p_attempt integer, p_secret text,
                                  p_secret_hashes text[], p_chained boolean)
RETURNS TABLE (verdict text, ordinal integer, id text, attempt integer, function bytea,
               function_digest text, args bytea, spec jsonb, client_python text,
               client_cloudpickle text, result_format text)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp
    -- Lookups by key, always (the header says why).
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
#variable_conflict use_column
DECLARE
    cur record;
    w text;
    budget numeric;
    served bigint;
    want integer;
    queued bigint;
    busy bigint;
    picks text[];
    tids tid[];
    first_created timestamptz;
    now_ts timestamptz := clock_timestamp();
BEGIN
    SELECT a.call_id, a.attempt, a.ref, a.worker, c.pool, c.spec INTO cur
    FROM podfn_attempts a JOIN podfn_calls c ON c.id = a.call_id
    WHERE a.call_id = p_id AND a.attempt = p_attempt
      AND a.state IN ('succeeded', 'failed', 'retrying') AND NOT a.handed_on
      AND a.secret_hash IS NOT NULL AND p_secret IS NOT NULL
      AND a.secret_hash = encode(sha256(convert_to(p_secret, 'UTF8')), 'hex')
    FOR UPDATE OF a;
    IF NOT FOUND OR p_secret_hashes IS NULL OR cardinality(p_secret_hashes) = 0
       OR EXISTS (SELECT 1 FROM unnest(p_secret_hashes) h
                  WHERE h IS NULL OR h !~ '^[0-9a-f]{64}$') THEN
        verdict := 'refused';
        RETURN NEXT;
        RETURN;
    END IF;
    w := coalesce(cur.worker, cur.call_id || '/' || cur.attempt);
    want := least(cardinality(p_secret_hashes), 64);
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
        want := least(want, budget - served);
    END IF;
    -- Anything queued at all? (An idle worker asks this at every wake-up.)
    SELECT count(*) INTO queued FROM (
        SELECT 1 FROM podfn_calls c
        WHERE c.pool = cur.pool AND c.state = 'queued'
          AND (c.not_before IS NULL OR c.not_before <= now_ts)
        LIMIT 2) q;
    IF queued = 0 THEN
        verdict := 'empty';
        RETURN NEXT;
        RETURN;
    END IF;
    IF want > 1 AND queued > 1 THEN
        -- Its share of the queue: what is queued over the pool's busy workers (this
        -- one included), at least one call. (A worker's first call, launched by the controller, names no worker.)
        SELECT count(DISTINCT coalesce(a.worker, a.call_id || '/' || a.attempt)) INTO busy
        FROM podfn_calls c JOIN podfn_attempts a ON a.call_id = c.id AND a.attempt = c.attempt
        WHERE c.pool = cur.pool AND c.state IN ('launching', 'running')
          AND coalesce(a.worker, a.call_id || '/' || a.attempt) <> w;
        -- Counted only as far as the share can go: want * (busy + 1) queued calls
        -- give the whole of `want` (0012 counted up to want * 64, the whole queue of
        -- a map, a heap visit each, at every claim).
        SELECT count(*) INTO queued FROM (
            SELECT 1 FROM podfn_calls c
            WHERE c.pool = cur.pool AND c.state = 'queued'
              AND (c.not_before IS NULL OR c.not_before <= now_ts)
            LIMIT want * (busy + 1)) q;
        want := least(want, greatest(1, queued / (busy + 1)));
    END IF;
    SELECT array_agg(q.id ORDER BY q.created_at, q.id), array_agg(q.ctid), min(q.created_at)
    INTO picks, tids, first_created
    FROM (SELECT c.id, c.ctid, c.created_at FROM podfn_calls c
          WHERE c.pool = cur.pool AND c.state = 'queued'
            AND (c.not_before IS NULL OR c.not_before <= now_ts)
          ORDER BY c.created_at, c.id
          LIMIT want
          FOR UPDATE SKIP LOCKED) q;
    IF picks IS NULL THEN
        verdict := 'empty';
        RETURN NEXT;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM podfn_calls o
               WHERE o.state = 'queued' AND o.pool <> cur.pool
                 AND (o.not_before IS NULL OR o.not_before <= now_ts)
                 AND o.created_at < first_created
                 AND o.created_at < now_ts - interval '1 second') THEN
        verdict := 'yield';
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE podfn_attempts a SET handed_on = true
    WHERE a.call_id = cur.call_id AND a.attempt = cur.attempt;
    RETURN QUERY
    WITH p AS (
        SELECT u.id, u.n::integer AS n FROM unnest(picks) WITH ORDINALITY AS u(id, n)
    ), c AS (
        UPDATE podfn_calls c
        SET state = 'running', attempt = c.attempt + 1, launched_at = now_ts,
            started_at = NULL, not_before = NULL
        FROM p
        -- By the rows' own addresses (locked above, so they stay put): joined on
        -- `id` alone, the planner read every queued call of the pool (a bitmap
        -- scan of podfn_calls_queued_by_pool) to find these few, at every claim.
        WHERE c.ctid = ANY(tids) AND c.id = p.id AND c.state = 'queued'
        RETURNING p.n, c.id, c.attempt, c.function_digest, c.args, c.spec, c.client_python,
                  c.client_cloudpickle, c.result_format
    ), a AS (
        -- Held (started_at NULL) until the worker marks them started. Only the first
        -- may hand on.
        INSERT INTO podfn_attempts (call_id, attempt, state, ref, worker, secret_hash,
                                    launched_at, started_at, handed_on)
        SELECT c.id, c.attempt, 'running', cur.ref, w, p_secret_hashes[c.n], now_ts, NULL,
               c.n <> 1
        FROM c
    )
    SELECT 'claimed', c.n, c.id, c.attempt, CASE WHEN c.n = 1 THEN pl.data END,
           c.function_digest, c.args, c.spec, c.client_python, c.client_cloudpickle,
           c.result_format
    FROM c JOIN podfn_payloads pl ON pl.digest = c.function_digest
    ORDER BY c.n;
    -- As podfn_next_call: wake the controller only when it has something to do
    -- (size the pool when an idle worker woke up to calls while more wait; a
    -- timeout is armed at the start mark, succeed_many).
    IF NOT p_chained AND EXISTS (SELECT 1 FROM podfn_calls q
                                 WHERE q.pool = cur.pool AND q.state = 'queued') THEN
        PERFORM pg_notify('podfn_warm', w);
    END IF;
END $$;

-- succeed_many's body (0012's, answering in the order given), run under the
-- planner settings above; succeed_many calls it.
CREATE FUNCTION podfn_record_outcomes(
    p_ids text[], p_attempts integer[], p_secrets text[], p_results bytea[],
    p_results_json text[], p_stdouts text[], p_stderrs text[], p_peak_bytes bigint[],
    p_cpu_seconds float8[], p_wall_seconds float8[],
    p_start_ids text[], p_start_attempts integer[], p_start_secrets text[],
    p_next_id text, p_next_attempt integer, p_next_secret text, p_next_hashes text[])
RETURNS TABLE (kind text, state text, verdict text, ordinal integer, id text, attempt integer,
               function bytea, function_digest text, args bytea, spec jsonb,
               client_python text, client_cloudpickle text, result_format text)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp
    -- Lookups by key, always (the header says why).
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
#variable_conflict use_column
DECLARE
    r record;
    marked_worker text;
    marked_state text;
    last integer := coalesce(cardinality(p_ids), 0);
BEGIN
    -- Start marks first: a call started and finished since the last statement has
    -- both here, and its clock starts before its outcome lands. A held call that
    -- was cancelled is marked too, unless its outcome is here (the worker is past
    -- it): the controller then stops the worker that runs it, as for any cancel.
    -- One statement per mark (a trivial map's record statements carry one mark at
    -- most), each an update by key: 0012's join of the marks against
    -- podfn_attempts was planned, with a young table's statistics, as a scan of
    -- every attempt a worker ever made.
    FOR r IN
        SELECT s.id AS s_id, s.attempt AS s_attempt, s.secret AS s_secret
        FROM unnest(p_start_ids, p_start_attempts, p_start_secrets) AS s(id, attempt, secret)
        WHERE s.secret IS NOT NULL
    LOOP
        UPDATE podfn_attempts a SET started_at = clock_timestamp()
        WHERE a.call_id = r.s_id AND a.attempt = r.s_attempt AND a.started_at IS NULL
          AND a.worker IS NOT NULL AND a.secret_hash IS NOT NULL
          AND a.secret_hash = encode(sha256(convert_to(r.s_secret, 'UTF8')), 'hex')
          AND (a.finished_at IS NULL
               OR (a.state = 'cancelled' AND NOT (r.s_id = ANY(coalesce(p_ids, '{}')))))
        RETURNING a.worker, a.state INTO marked_worker, marked_state;
        CONTINUE WHEN NOT FOUND;
        UPDATE podfn_calls c SET started_at = clock_timestamp()
        WHERE c.id = r.s_id AND c.attempt = r.s_attempt AND c.state = 'running';
        IF marked_state = 'cancelled'
           OR EXISTS (SELECT 1 FROM podfn_calls x
                      WHERE x.id = r.s_id AND jsonb_typeof(x.spec->'timeout') = 'number') THEN
            PERFORM pg_notify('podfn_warm', marked_worker);  -- (one per worker: NOTIFY folds)
        END IF;
    END LOOP;
    -- The outcomes: `succeed` and `usage` for each, set-wise, each guarded by its
    -- own attempt's live secret. A held call that started and ended since the last
    -- statement comes without its start mark (nothing ran it by then to time out
    -- or stop): its start is the wall time the runtime measured back from now, never
    -- before its claim (it only tells the call's own run time).
    FOR r IN
        WITH i AS (
            SELECT i.*, h.started_at AS marked_at,
                   make_interval(secs => CASE WHEN i.wall_seconds = i.wall_seconds
                                              THEN LEAST(GREATEST(i.wall_seconds, 0), 1e6)
                                              ELSE 0 END) AS ran
            FROM unnest(p_ids, p_attempts, p_secrets, p_results, p_results_json, p_stdouts,
                        p_stderrs, p_peak_bytes, p_cpu_seconds, p_wall_seconds)
                WITH ORDINALITY
                AS i(id, attempt, secret, result, result_json, stdout, stderr, peak_bytes,
                     cpu_seconds, wall_seconds, n)
            JOIN podfn_attempts h ON h.call_id = i.id AND h.attempt = i.attempt
            WHERE podfn_runtime_v1.attempt_holds(i.id, i.attempt, i.secret)
        ), c AS (
            UPDATE podfn_calls c
            SET state = 'succeeded', result = i.result, result_json = i.result_json,
                stdout = i.stdout, stderr = i.stderr, reason = NULL,
                started_at = CASE WHEN i.marked_at IS NULL
                                  THEN greatest(c.launched_at, clock_timestamp() - i.ran)
                                  ELSE c.started_at END,
                finished_at = clock_timestamp()
            FROM i
            WHERE c.id = i.id AND c.attempt = i.attempt AND c.state = 'running'
            RETURNING c.id, c.attempt, c.state, c.started_at, i.n
        ), a AS (
            UPDATE podfn_attempts a
            SET state = 'succeeded', exit_code = 0, finished_at = clock_timestamp(),
                started_at = coalesce(a.started_at, c.started_at),
                peak_bytes = LEAST(GREATEST(i.peak_bytes, 0), 9007199254740991),
                cpu_seconds = CASE WHEN i.cpu_seconds = i.cpu_seconds
                                   THEN LEAST(GREATEST(i.cpu_seconds, 0), 1e9) END,
                wall_seconds = CASE WHEN i.wall_seconds = i.wall_seconds
                                    THEN LEAST(GREATEST(i.wall_seconds, 0), 1e9) END
            FROM c JOIN i ON i.id = c.id AND i.attempt = c.attempt
            WHERE a.call_id = c.id AND a.attempt = c.attempt
        )
        SELECT c.id, c.attempt, c.state FROM c ORDER BY c.n  -- in the order given
    LOOP
        PERFORM pg_notify('podfn_final', r.id);
        kind := 'succeeded';
        state := r.state;
        id := r.id;
        attempt := r.attempt;
        RETURN NEXT;
    END LOOP;
    IF p_next_hashes IS NOT NULL THEN
        RETURN QUERY
        SELECT 'next', NULL::text, n.verdict, n.ordinal, n.id, n.attempt, n.function,
               n.function_digest, n.args, n.spec, n.client_python, n.client_cloudpickle,
               n.result_format
        FROM podfn_claim_calls(p_next_id, p_next_attempt, p_next_secret, p_next_hashes,
                               last > 0) n;
    END IF;
END $$;

REVOKE ALL ON FUNCTION podfn_record_outcomes(text[], integer[], text[], bytea[], text[], text[],
                                             text[], bigint[], float8[], float8[], text[],
                                             integer[], text[], text, integer, text, text[])
    FROM PUBLIC;

-- The protocol function keeps its signature, its answer and its pinned search_path
-- (tests/test_roles.py); it hands over to the function above.
CREATE OR REPLACE FUNCTION podfn_runtime_v1.succeed_many(
    p_ids text[], p_attempts integer[], p_secrets text[], p_results bytea[],
    p_results_json text[], p_stdouts text[], p_stderrs text[], p_peak_bytes bigint[],
    p_cpu_seconds float8[], p_wall_seconds float8[],
    p_start_ids text[], p_start_attempts integer[], p_start_secrets text[],
    p_next_id text, p_next_attempt integer, p_next_secret text, p_next_hashes text[])
RETURNS TABLE (kind text, state text, verdict text, ordinal integer, id text, attempt integer,
               function bytea, function_digest text, args bytea, spec jsonb,
               client_python text, client_cloudpickle text, result_format text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
SELECT * FROM podfn_record_outcomes(p_ids, p_attempts, p_secrets, p_results, p_results_json,
                                    p_stdouts, p_stderrs, p_peak_bytes, p_cpu_seconds,
                                    p_wall_seconds, p_start_ids, p_start_attempts,
                                    p_start_secrets, p_next_id, p_next_attempt, p_next_secret,
                                    p_next_hashes)
$$;
