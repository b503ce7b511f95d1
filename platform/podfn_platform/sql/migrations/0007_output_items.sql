-- A call's output as appended chunks, and the items a generator yields.
--
-- Output: while a call runs, the runtime appends what file descriptors 1 and
-- 2 received, in chunks, about every half second. `char_offset` counts
-- characters of the attempt's combined output (stdout and stderr interleaved
-- in the order the runtime read them), so one offset is enough to follow
-- both. Appending is idempotent on (call, attempt, offset): a write retried
-- after a lost reply changes nothing. Readers ask for the chunks from an
-- offset; nobody rewrites what was written, so following costs what was
-- printed, once. The old stdout/stderr columns are still filled when the call
-- ends (with the tail of each stream), for readers of the whole text.
CREATE TABLE podfn_output (
    call_id text NOT NULL REFERENCES podfn_calls (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    stream text NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    char_offset bigint NOT NULL CHECK (char_offset >= 0),
    data text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (call_id, attempt, char_offset)
);

-- Items: what a generator function yields, pickled, one row each, in order.
-- Keyed by (call, index) across attempts: a retried attempt that yields the
-- same items again changes nothing already read, so readers never see an
-- item twice.
CREATE TABLE podfn_items (
    call_id text NOT NULL REFERENCES podfn_calls (id) ON DELETE CASCADE,
    item_index integer NOT NULL CHECK (item_index >= 0),
    attempt integer NOT NULL,
    data bytea NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (call_id, item_index)
);

-- Appends one chunk of the running call's output. True when the attempt still
-- holds the call (the chunk is stored, or was already); false for a stale
-- attempt, a call that is no longer running, or a chunk past the cap: the
-- runtime stops storing at 2 Mi characters (and adds a marker), and code in
-- the call that has the secret cannot store more than that, nor past it.
CREATE FUNCTION podfn_runtime_v1.append_output(p_id text, p_attempt integer, p_secret text,
                                               p_stream text, p_offset bigint, p_data text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF p_stream IS NULL OR p_stream NOT IN ('stdout', 'stderr') OR p_offset IS NULL
       OR p_offset < 0 OR p_data IS NULL OR p_offset + length(p_data) > 2097152 + 1024 THEN
        RETURN false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM podfn_calls c
                   WHERE c.id = p_id AND c.attempt = p_attempt AND c.state = 'running')
       OR NOT podfn_runtime_v1.attempt_holds(p_id, p_attempt, p_secret) THEN
        RETURN false;
    END IF;
    INSERT INTO podfn_output (call_id, attempt, stream, char_offset, data)
    VALUES (p_id, p_attempt, p_stream, p_offset, p_data)
    ON CONFLICT DO NOTHING;
    PERFORM pg_notify('podfn_output', p_id);
    RETURN true;
END $$;

-- Stores the item a generator yielded at `p_index`; idempotent by index.
CREATE FUNCTION podfn_runtime_v1.yield_item(p_id text, p_attempt integer, p_secret text,
                                            p_index integer, p_data bytea)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF p_index IS NULL OR p_index < 0 OR p_data IS NULL THEN
        RETURN false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM podfn_calls c
                   WHERE c.id = p_id AND c.attempt = p_attempt AND c.state = 'running')
       OR NOT podfn_runtime_v1.attempt_holds(p_id, p_attempt, p_secret) THEN
        RETURN false;
    END IF;
    INSERT INTO podfn_items (call_id, item_index, attempt, data)
    VALUES (p_id, p_index, p_attempt, p_data)
    ON CONFLICT DO NOTHING;
    PERFORM pg_notify('podfn_output', p_id);
    RETURN true;
END $$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA podfn_runtime_v1 FROM PUBLIC;
