-- A warm worker's claim no longer reads every queued call (issue 12, sixth round).
--
-- podfn_claim_calls (migration 0013) updates the calls it picked by their row
-- addresses, but it also tested `c.state = 'queued'` there, which matches the
-- predicate of podfn_calls_queued_by_age. The session's generic plan, made with
-- a young table's statistics, read the picked rows through that index: a bitmap
-- scan of every queued call of every pool, filtered by address (auto_explain:
-- 286 rows read for 32 claimed). The picked rows are locked
-- by the same transaction (FOR UPDATE SKIP LOCKED, queued), so the test adds
-- nothing; without it the update finds them by address or by key.
--
-- The `yield` check (is a call of another pool older than this claim's?) read
-- podfn_calls_queued_by_age from its oldest entry, calls in backoff included,
-- skipping each whose backoff was not over: with 20,000 calls of another pool
-- in backoff (a ResourceQuota refusal defers calls this way) a claim took ~88 ms
-- instead of ~6 (auto_explain timing each node) and a warm map of 1,000 twice as
-- long (benchmarks/backlog.py; benchmarks/notes.md, sixth round). It now asks
-- two indexes: queued calls not held back, by
-- age (which replaces podfn_calls_queued_by_age; nothing else used it), and
-- queued calls in backoff, by the end of their backoff.
--
-- Its look at its own pool's queue read the same calls in backoff: with
-- statistics taken while the pool had no queued call, the planner read
-- podfn_calls_unfinished by age (another pool's older calls first) rather than
-- podfn_calls_queued_by_pool (auto_explain: 20,087 rows read and dropped to find
-- 32, ~18 ms at every claim). Those statements now ask for the pool's own order
-- (created_at, id), which only the pool's index gives without a sort, and the
-- function plans without sorts where it can. The rest of the function is
-- 0013's, unchanged (CREATE OR REPLACE takes the whole body).

DROP INDEX podfn_calls_queued_by_age;
CREATE INDEX podfn_calls_ready_by_age ON podfn_calls (created_at)
    WHERE state = 'queued' AND not_before IS NULL;
CREATE INDEX podfn_calls_backoff_until ON podfn_calls (not_before)
    WHERE state = 'queued' AND not_before IS NOT NULL;

CREATE OR REPLACE FUNCTION podfn_claim_calls(p_id text, p_attempt integer, p_secret text,
                                  p_secret_hashes text[], p_chained boolean)
RETURNS TABLE (verdict text, ordinal integer, id text, attempt integer, function bytea,
               function_digest text, args bytea, spec jsonb, client_python text,
               client_cloudpickle text, result_format text)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp
    -- Lookups by key, always (0013's header says why); and the pool's queue in its
    -- own order, from podfn_calls_queued_by_pool (this migration's header).
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
    SET enable_sort = off SET enable_incremental_sort = off AS $$
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
        ORDER BY c.created_at, c.id  -- (the pool's index, not another pool's calls)
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
            ORDER BY c.created_at, c.id
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
    -- An older call of another pool that may run now: one not held back (by its
    -- age), or one whose backoff is over (by its backoff's end). Asked in one,
    -- the question read every queued call in backoff older than this claim's.
    IF EXISTS (SELECT 1 FROM podfn_calls o
               WHERE o.state = 'queued' AND o.not_before IS NULL AND o.pool <> cur.pool
                 AND o.created_at < first_created
                 AND o.created_at < now_ts - interval '1 second')
       -- (The calls whose backoff is over, found first and alone: asked together
       -- with the age, the planner read every older queued call by age.)
       OR EXISTS (WITH due AS MATERIALIZED (
                      SELECT o.pool, o.created_at FROM podfn_calls o
                      WHERE o.state = 'queued' AND o.not_before IS NOT NULL
                        AND o.not_before <= now_ts)
                  SELECT 1 FROM due
                  WHERE due.pool <> cur.pool AND due.created_at < first_created
                    AND due.created_at < now_ts - interval '1 second') THEN
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
        -- By the rows' own addresses (locked above, so they stay put). No test of
        -- `state` here: the rows were picked queued and locked by this transaction,
        -- so they still are; and `state = 'queued'` let the planner read them
        -- through podfn_calls_queued_by_age, every queued call of every pool
        -- (this migration's header).
        WHERE c.ctid = ANY(tids) AND c.id = p.id
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
    -- (In the pool's own order, as above: an EXISTS drops its ORDER BY.)
    IF NOT p_chained AND (SELECT count(*) FROM (
                              SELECT 1 FROM podfn_calls q
                              WHERE q.pool = cur.pool AND q.state = 'queued'
                              ORDER BY q.created_at, q.id LIMIT 1) x) > 0 THEN
        PERFORM pg_notify('podfn_warm', w);
    END IF;
END $$;

