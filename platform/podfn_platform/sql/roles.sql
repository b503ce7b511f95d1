-- The database roles of docs/security.md, created and granted by `podfn migrate`
-- (podfn_platform/roles.py). Role names are settings, so the statements that
-- name a role carry {platform} / {runtime} placeholders that roles.py fills
-- with quoted identifiers ({password} with a quoted literal). Every statement
-- is idempotent: running migrate again changes nothing.

-- name: role_exists
SELECT rolname FROM pg_roles WHERE rolname = %(role)s;

-- name: create_role
-- Owns nothing, inherits nothing, can create nothing outside what is granted below.
CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;

-- name: set_password
ALTER ROLE {role} PASSWORD {password};

-- name: lock_down_public
-- Nobody may create objects in (or, by default, even look into) the public
-- schema of podfn's database but its owner and the roles granted below.
-- On a managed Postgres where the migrating user does not own the schema this
-- is a no-op with a warning; docs/security.md lists it for the operator.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE USAGE ON SCHEMA public FROM PUBLIC;

-- name: grant_platform
-- API and controller: read and write podfn's tables, nothing else.
GRANT USAGE ON SCHEMA public TO {platform};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {platform};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {platform};
GRANT EXECUTE ON FUNCTION podfn_fail(text, integer, boolean, text, integer, text, text, text,
                                     bytea, text, text) TO {platform};
GRANT EXECUTE ON FUNCTION podfn_pools_queued(text[]) TO {platform};

-- name: grant_runtime
-- The runtime: the protocol's functions and nothing else (no table, sequence
-- or other schema privilege; USAGE on its own schema is what calling needs).
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {runtime};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {runtime};
REVOKE ALL ON SCHEMA public FROM {runtime};
GRANT USAGE ON SCHEMA podfn_runtime_v1 TO {runtime};
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA podfn_runtime_v1 TO {runtime};
