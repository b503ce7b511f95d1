-- Two mends from the review of issue 12's ninth round (benchmarks/notes.md).
--
-- podfn_record_outcomes (migration 0013) writes a statement's start marks first,
-- stamped clock_timestamp(), then dated each outcome that came without a mark
-- `clock_timestamp() - ran`, read later in the same statement. A short call that
-- ended before the next one started, written with that next one's mark, could
-- so be dated after the mark, and the controller, which follows the attempt a
-- worker started last (warm.sql, worker_attempts), followed the finished one:
-- the running call's timeout was not armed, a cancel did not stop it, and a
-- death of its worker was not charged to it (2 runs in 9 with an 8 MB result
-- holding the recorder). Outcomes are now dated back from the statement's start,
-- strictly before every mark it writes. The rest of the body is 0013's.
--
-- podfn_pools_queued: whether a call of these pools is queued and due, which the
-- controller asks before the late turn it takes for a call announced to a pool
-- with a live warm worker (controller/loop.py, WARM_QUEUED_GRACE). As a plain
-- statement, with statistics taken while another pool had 20,000 calls queued
-- and this one none, Postgres read podfn_calls_unfinished by age and dropped
-- every row of the other pool (9-44 ms per look, every 50 ms). Planned here
-- like podfn_claim_calls, it reads podfn_calls_queued_by_pool, a row per pool.
-- (A call of the pool waiting out a backoff is still read and dropped: that
-- index does not hold not_before.)

CREATE OR REPLACE FUNCTION podfn_record_outcomes(
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
    -- The statement's start: an unmarked outcome is dated back from here, before
    -- any start mark below (the header says why).
    t0 timestamptz := clock_timestamp();
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
    -- or stop): its start is the wall time the runtime measured back from the
    -- statement's start (at least a microsecond: strictly before this statement's
    -- marks), never before its claim (it only tells the call's own run time).
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
                                  THEN greatest(c.launched_at,
                                                t0 - greatest(i.ran, interval '1 microsecond'))
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

CREATE FUNCTION podfn_pools_queued(p_pools text[]) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp
    SET enable_seqscan = off SET enable_sort = off SET enable_incremental_sort = off
    SET enable_hashjoin = off SET enable_mergejoin = off AS $$
SELECT EXISTS (
    SELECT 1 FROM unnest(p_pools) AS p(pool)
    CROSS JOIN LATERAL (
        SELECT 1 FROM podfn_calls c
        WHERE c.state = 'queued' AND c.pool = p.pool
          AND (c.not_before IS NULL OR c.not_before <= clock_timestamp())
        ORDER BY c.created_at, c.id
        LIMIT 1) q)
$$;

REVOKE ALL ON FUNCTION podfn_pools_queued(text[]) FROM PUBLIC;
