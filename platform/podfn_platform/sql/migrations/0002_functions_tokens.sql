-- Deployed functions (versioned), access tokens with scopes, idempotency keys,
-- and JSON results for calls made through the HTTP invoke endpoint.

CREATE TABLE podfn_tokens (
    id            text PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    hash          text NOT NULL UNIQUE,          -- sha256 of the secret, hex; never the secret
    scopes        text[] NOT NULL
        CHECK (scopes <@ ARRAY['submit', 'invoke', 'deploy', 'read', 'admin']
               AND cardinality(scopes) > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE TABLE podfn_function_versions (
    name                text NOT NULL,
    version             integer NOT NULL CHECK (version > 0),
    function_digest     text NOT NULL REFERENCES podfn_payloads (digest),
    spec                jsonb NOT NULL,
    client_python       text NOT NULL,
    client_cloudpickle  text NOT NULL,
    deployed_at         timestamptz NOT NULL DEFAULT now(),
    deployed_by         text,                    -- token name
    PRIMARY KEY (name, version)
);

CREATE TABLE podfn_functions (
    name          text PRIMARY KEY,
    live_version  integer NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (name, live_version) REFERENCES podfn_function_versions (name, version)
);

CREATE TABLE podfn_idempotency (
    owner         text NOT NULL,                 -- token id ('' without auth)
    key           text NOT NULL,
    request_hash  text NOT NULL,
    call_ids      text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key)
);

ALTER TABLE podfn_calls
    ADD COLUMN owner text,                       -- the token id that created the call
    ADD COLUMN function_version integer,         -- for calls of a deployed function
    ADD COLUMN result_format text NOT NULL DEFAULT 'pickle'
        CHECK (result_format IN ('pickle', 'json')),
    ADD COLUMN result_json text;
