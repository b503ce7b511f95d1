-- The runtime's whole contract with the database (docs/security.md).
--
-- Code inside a call runs with the runtime's credentials, so the runtime
-- role may do nothing but execute the functions of schema podfn_runtime_v1.
-- Each is SECURITY DEFINER (it runs as the owner of the tables), pins its
-- search_path (pg_temp last, so a temporary table cannot shadow ours), and
-- first checks the attempt's secret: sha256(secret) must equal the hash the
-- controller stored when it launched the attempt, the attempt must be the
-- call's current one and must not have ended. A wrong, stale or spent secret
-- matches no row, exactly like a stale attempt.
--
-- The schema is versioned by name: a later release adds podfn_runtime_v2 and
-- keeps v1 until no pod of the previous release can still be running.
-- The grants to the runtime role are made by `podfn migrate` (roles.sql),
-- because the role's name is a setting.

ALTER TABLE podfn_attempts
    ADD COLUMN secret_hash text,        -- sha256(hex) of the attempt's secret for the runtime
    ADD COLUMN token_hash text;         -- sha256(hex) of the call's API token (nested calls)

CREATE UNIQUE INDEX podfn_attempts_token_hash ON podfn_attempts (token_hash)
    WHERE token_hash IS NOT NULL;

-- A payload is named by its digest, so it can never change; nor can the
-- payload a deployed version names.
CREATE FUNCTION podfn_refuse_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    RAISE EXCEPTION '% rows never change (content-addressed, immutable)', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER podfn_payloads_immutable BEFORE UPDATE ON podfn_payloads
    FOR EACH ROW EXECUTE FUNCTION podfn_refuse_change();
CREATE TRIGGER podfn_function_versions_immutable
    BEFORE UPDATE OF function_digest, name, version ON podfn_function_versions
    FOR EACH ROW EXECUTE FUNCTION podfn_refuse_change();

-- The one definition of "an attempt failed": launching/running -> failed, or
-- back to queued with exponential backoff while the user's `retries` last and
-- the failure is `retryable`. Used by the controller (transitions.sql: fail)
-- and by the runtime (podfn_runtime_v1.fail), so the retry rule is written once.
CREATE FUNCTION podfn_fail(
    p_id text, p_attempt integer, p_retryable boolean, p_reason text, p_exit_code integer,
    p_error_type text, p_error_message text, p_error_traceback text, p_error_pickle bytea,
    p_stdout text, p_stderr text
) RETURNS TABLE (id text, attempt integer, state text)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    FOR r IN
        WITH h AS (
            -- The spec's numbers clamped before any arithmetic: a row from an older
            -- version or a corrupted spec (3e9 retries, a backoff of 1.7e308, a
            -- string) must never overflow this statement. Not a number -> the default.
            SELECT c.id, c.user_failures,
                   CASE WHEN jsonb_typeof(c.spec->'retries') = 'number'
                        THEN LEAST(GREATEST((c.spec->>'retries')::numeric, 0), 1000)::int
                        ELSE 0 END AS retries,
                   CASE WHEN jsonb_typeof(c.spec->'retry_backoff') = 'number'
                        THEN LEAST(GREATEST((c.spec->>'retry_backoff')::numeric, 0),
                                   3600)::float8
                        ELSE 1.0 END AS retry_backoff
            FROM podfn_calls c WHERE c.id = p_id
        ), d AS (
            SELECT h.id,
                   p_retryable AND h.user_failures < h.retries AS retry,
                   LEAST(h.retry_backoff * power(2, LEAST(h.user_failures, 30)), 300.0)
                       AS backoff
            FROM h
        ), c AS (
            UPDATE podfn_calls c
            SET state = CASE WHEN d.retry THEN 'queued' ELSE 'failed' END,
                user_failures = c.user_failures + d.retry::int,
                not_before = CASE WHEN d.retry
                                  THEN clock_timestamp() + make_interval(secs => d.backoff) END,
                finished_at = CASE WHEN d.retry THEN NULL ELSE clock_timestamp() END,
                reason = p_reason,
                error_type = p_error_type, error_message = p_error_message,
                error_traceback = p_error_traceback, error_pickle = p_error_pickle,
                stdout = COALESCE(p_stdout, c.stdout), stderr = COALESCE(p_stderr, c.stderr)
            FROM d
            WHERE c.id = d.id AND c.attempt = p_attempt AND c.state IN ('launching', 'running')
            RETURNING c.id, c.attempt, c.state
        ), a AS (
            UPDATE podfn_attempts
            SET state = CASE WHEN c.state = 'queued' THEN 'retrying' ELSE 'failed' END,
                reason = p_reason, exit_code = p_exit_code, finished_at = clock_timestamp()
            FROM c WHERE podfn_attempts.call_id = c.id AND podfn_attempts.attempt = c.attempt
        )
        SELECT c.id, c.attempt, c.state FROM c
    LOOP
        PERFORM pg_notify(CASE WHEN r.state = 'failed' THEN 'podfn_final' ELSE 'podfn_queued' END,
                          r.id);
        id := r.id;
        attempt := r.attempt;
        state := r.state;
        RETURN NEXT;
    END LOOP;
END $$;

REVOKE ALL ON FUNCTION podfn_fail(text, integer, boolean, text, integer, text, text, text,
                                  bytea, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION podfn_refuse_change() FROM PUBLIC;

CREATE SCHEMA podfn_runtime_v1;
REVOKE ALL ON SCHEMA podfn_runtime_v1 FROM PUBLIC;

-- True when `p_secret` is the live secret of the call's current attempt.
CREATE FUNCTION podfn_runtime_v1.attempt_holds(p_id text, p_attempt integer, p_secret text)
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
SELECT EXISTS (
    SELECT 1 FROM podfn_attempts a JOIN podfn_calls c ON c.id = a.call_id
    WHERE a.call_id = p_id AND a.attempt = p_attempt AND c.attempt = p_attempt
      AND a.finished_at IS NULL AND a.secret_hash IS NOT NULL
      AND p_secret IS NOT NULL
      AND a.secret_hash = encode(sha256(convert_to(p_secret, 'UTF8')), 'hex'))
$$;

-- launching -> running; what the runtime needs to run the call.
CREATE FUNCTION podfn_runtime_v1.claim(p_id text, p_attempt integer, p_secret text)
RETURNS TABLE (id text, attempt integer, function bytea, function_digest text, args bytea,
               spec jsonb, client_python text, client_cloudpickle text, result_format text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
WITH c AS (
    UPDATE podfn_calls c
    SET state = 'running', started_at = clock_timestamp()
    WHERE c.id = p_id AND c.attempt = p_attempt AND c.state = 'launching'
      AND podfn_runtime_v1.attempt_holds(p_id, p_attempt, p_secret)
    RETURNING c.id, c.attempt, c.function_digest, c.args, c.spec, c.client_python,
              c.client_cloudpickle, c.result_format
), a AS (
    UPDATE podfn_attempts SET state = 'running', started_at = clock_timestamp()
    FROM c WHERE podfn_attempts.call_id = c.id AND podfn_attempts.attempt = c.attempt
)
SELECT c.id, c.attempt, p.data, c.function_digest, c.args, c.spec, c.client_python,
       c.client_cloudpickle, c.result_format
FROM c JOIN podfn_payloads p ON p.digest = c.function_digest
$$;

-- The output captured so far, while the call runs (not a transition).
CREATE FUNCTION podfn_runtime_v1.progress(p_id text, p_attempt integer, p_secret text,
                                          p_stdout text, p_stderr text)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
WITH c AS (
    UPDATE podfn_calls c SET stdout = p_stdout, stderr = p_stderr
    WHERE c.id = p_id AND c.attempt = p_attempt AND c.state = 'running'
      AND podfn_runtime_v1.attempt_holds(p_id, p_attempt, p_secret)
    RETURNING c.id
)
SELECT EXISTS (SELECT 1 FROM c)
$$;

-- running -> succeeded, with the result and the captured output.
CREATE FUNCTION podfn_runtime_v1.succeed(p_id text, p_attempt integer, p_secret text,
                                         p_result bytea, p_result_json text,
                                         p_stdout text, p_stderr text)
RETURNS TABLE (id text, attempt integer, state text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    IF NOT podfn_runtime_v1.attempt_holds(p_id, p_attempt, p_secret) THEN
        RETURN;
    END IF;
    FOR r IN
        WITH c AS (
            UPDATE podfn_calls c
            SET state = 'succeeded', result = p_result, result_json = p_result_json,
                stdout = p_stdout, stderr = p_stderr, reason = NULL,
                finished_at = clock_timestamp()
            WHERE c.id = p_id AND c.attempt = p_attempt AND c.state = 'running'
            RETURNING c.id, c.attempt, c.state
        ), a AS (
            UPDATE podfn_attempts SET state = 'succeeded', exit_code = 0,
                finished_at = clock_timestamp()
            FROM c WHERE podfn_attempts.call_id = c.id AND podfn_attempts.attempt = c.attempt
        )
        SELECT c.id, c.attempt, c.state FROM c
    LOOP
        PERFORM pg_notify('podfn_final', r.id);
        id := r.id;
        attempt := r.attempt;
        state := r.state;
        RETURN NEXT;
    END LOOP;
END $$;

-- running -> failed (or queued again, per podfn_fail's retry rule).
CREATE FUNCTION podfn_runtime_v1.fail(p_id text, p_attempt integer, p_secret text,
                                      p_retryable boolean, p_reason text,
                                      p_error_type text, p_error_message text,
                                      p_error_traceback text, p_error_pickle bytea,
                                      p_stdout text, p_stderr text)
RETURNS TABLE (id text, attempt integer, state text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF NOT podfn_runtime_v1.attempt_holds(p_id, p_attempt, p_secret) THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT f.id, f.attempt, f.state
        FROM podfn_fail(p_id, p_attempt, p_retryable, p_reason, NULL, p_error_type,
                        p_error_message, p_error_traceback, p_error_pickle,
                        p_stdout, p_stderr) f;
END $$;

-- After a lost reply (the connection dropped mid-write), the runtime asks
-- whether its own write landed before it concludes its attempt was stale.
-- Its secret still identifies the attempt once the attempt has ended; the
-- answer is only that attempt's state and its call's.
CREATE FUNCTION podfn_runtime_v1.record(p_id text, p_attempt integer, p_secret text)
RETURNS TABLE (id text, attempt integer, call_state text, attempt_state text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
SELECT c.id, a.attempt, c.state, a.state
FROM podfn_attempts a JOIN podfn_calls c ON c.id = a.call_id
WHERE a.call_id = p_id AND a.attempt = p_attempt
  AND a.secret_hash IS NOT NULL AND p_secret IS NOT NULL
  AND a.secret_hash = encode(sha256(convert_to(p_secret, 'UTF8')), 'hex')
$$;

-- What `claim` returned, for an attempt whose claim landed but whose reply was lost.
CREATE FUNCTION podfn_runtime_v1.claimed(p_id text, p_attempt integer, p_secret text)
RETURNS TABLE (id text, attempt integer, function bytea, function_digest text, args bytea,
               spec jsonb, client_python text, client_cloudpickle text, result_format text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
SELECT c.id, c.attempt, p.data, c.function_digest, c.args, c.spec, c.client_python,
       c.client_cloudpickle, c.result_format
FROM podfn_calls c JOIN podfn_payloads p ON p.digest = c.function_digest
WHERE c.id = p_id AND c.attempt = p_attempt AND c.state = 'running'
  AND podfn_runtime_v1.attempt_holds(p_id, p_attempt, p_secret)
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA podfn_runtime_v1 FROM PUBLIC;
