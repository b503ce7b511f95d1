-- What each attempt really used (issue 14): the runtime measures its own peak
-- memory, CPU seconds and wall time and reports them through the runtime
-- protocol just before its outcome (after the outcome the attempt's secret no
-- longer works). NULL when an attempt never reported (killed, lost, older
-- runtime). The dashboard and `podfn functions --usage` compare these with
-- the hints.

ALTER TABLE podfn_attempts
    ADD COLUMN peak_bytes bigint,         -- peak resident memory of the runtime + its children
    ADD COLUMN cpu_seconds float8,        -- user + system CPU, children included
    ADD COLUMN wall_seconds float8;       -- from claim to outcome, as the runtime saw it

-- The dashboard and the usage API read calls by finish time (outcomes of the
-- last hour/day, per-minute plots), by function and finish time (usage of a
-- function's recent calls) and newest first (the Calls page).
CREATE INDEX podfn_calls_finished ON podfn_calls (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX podfn_calls_finished_by_function ON podfn_calls (function_name, finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX podfn_calls_created ON podfn_calls (created_at DESC, id);

-- Record the attempt's usage (not a transition: the state does not change).
-- Same secret check as every other protocol function, and the numbers are
-- clamped to sane ranges, since code inside the call could send anything.
CREATE FUNCTION podfn_runtime_v1.usage(p_id text, p_attempt integer, p_secret text,
                                       p_peak_bytes bigint, p_cpu_seconds float8,
                                       p_wall_seconds float8)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
WITH a AS (
    UPDATE podfn_attempts a
    SET peak_bytes = LEAST(GREATEST(p_peak_bytes, 0), 9007199254740991),
        cpu_seconds = CASE WHEN p_cpu_seconds = p_cpu_seconds  -- not NaN
                           THEN LEAST(GREATEST(p_cpu_seconds, 0), 1e9) END,
        wall_seconds = CASE WHEN p_wall_seconds = p_wall_seconds
                            THEN LEAST(GREATEST(p_wall_seconds, 0), 1e9) END
    WHERE a.call_id = p_id AND a.attempt = p_attempt AND a.state = 'running'
      AND podfn_runtime_v1.attempt_holds(p_id, p_attempt, p_secret)
    RETURNING a.call_id
)
SELECT EXISTS (SELECT 1 FROM a)
$$;

REVOKE ALL ON FUNCTION podfn_runtime_v1.usage(text, integer, text, bigint, float8, float8)
    FROM PUBLIC;
