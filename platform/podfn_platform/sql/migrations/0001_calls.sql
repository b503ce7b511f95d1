-- Calls, their attempts, and the payloads they carry.
--
-- A call moves through the states of DESIGN.md. Every transition is a single
-- UPDATE guarded by the states it may come from (see ../queries.sql); the
-- CHECK constraints below are the last line of defence, not the mechanism.

CREATE TABLE podfn_payloads (
    digest      text PRIMARY KEY,          -- sha256 of data, hex
    data        bytea NOT NULL,            -- opaque: the API never unpickles it
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE podfn_calls (
    id                  text PRIMARY KEY,
    function_name       text NOT NULL,
    function_digest     text NOT NULL REFERENCES podfn_payloads (digest),
    args                bytea NOT NULL,    -- opaque cloudpickle of (args, kwargs)
    spec                jsonb NOT NULL,    -- resources, env, image, timeout, retries, ...
    state               text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'launching', 'running',
                         'succeeded', 'failed', 'timed_out', 'cancelled')),
    attempt             integer NOT NULL DEFAULT 0,  -- the attempt launched last
    user_failures       integer NOT NULL DEFAULT 0,  -- retries spent
    disruptions         integer NOT NULL DEFAULT 0,  -- platform retries spent
    not_before          timestamptz,                 -- retry backoff
    reason              text,                        -- why it is in its state, for people
    result              bytea,
    error_type          text,
    error_message       text,
    error_traceback     text,
    error_pickle        bytea,
    stdout              text NOT NULL DEFAULT '',
    stderr              text NOT NULL DEFAULT '',
    client_python       text NOT NULL,
    client_cloudpickle  text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    launched_at         timestamptz,
    started_at          timestamptz,
    finished_at         timestamptz,
    CHECK ((state IN ('succeeded', 'failed', 'timed_out', 'cancelled')) = (finished_at IS NOT NULL))
);

CREATE INDEX podfn_calls_unfinished ON podfn_calls (created_at)
    WHERE state IN ('queued', 'launching', 'running');
CREATE INDEX podfn_calls_by_function ON podfn_calls (function_name, created_at);

CREATE TABLE podfn_attempts (
    call_id      text NOT NULL REFERENCES podfn_calls (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    state        text NOT NULL DEFAULT 'launching'
        CHECK (state IN ('launching', 'running', 'succeeded', 'failed',
                         'timed_out', 'cancelled', 'disrupted', 'retrying',
                         'deferred')),
    reason       text,
    exit_code    integer,
    ref          text,                -- the process id or pod name that ran it
    launched_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (call_id, attempt)
);

-- Small durable facts the controller keeps (e.g. the watcher's resourceVersion).
CREATE TABLE podfn_controller_state (
    key         text PRIMARY KEY,
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
