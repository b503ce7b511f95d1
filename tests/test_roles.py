"""The database roles, asserted from Postgres' own catalog (docs/security.md)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from attempts import UNARMED, Runtime
from podfn.errors import ConfigurationError
from podfn.settings import Settings
from podfn_platform import migrations, roles
from podfn_platform.database import Database
from podfn_platform.roles import Roles
from podfn_platform.submission import NewCalls, record_calls, store_payload

PROTOCOL = "podfn_runtime_v1"
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


def scalar(database_url: str, statement: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(statement, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def rows(database_url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]


def test_runtime_role_has_no_privilege_on_any_table_or_sequence(database_url: str,
                                                                 db_roles: Roles) -> None:
    found = rows(database_url, """
        SELECT n.nspname, c.relname, c.relkind FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%'
          AND c.relkind IN ('r', 'v', 'm', 'p', 'f', 'S')
          AND CASE WHEN c.relkind = 'S'
                   THEN has_sequence_privilege(%s, c.oid, 'USAGE, SELECT, UPDATE')
                   ELSE has_table_privilege(%s, c.oid,
                        'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') END
    """, (list(SYSTEM_SCHEMAS), db_roles.runtime, db_roles.runtime))
    assert found == []
    tables = scalar(database_url, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'podfn%%'")
    assert tables >= 8  # type: ignore[operator]  # the check above looked at real tables


def test_runtime_role_has_no_schema_privilege_but_calling_its_protocol(
        database_url: str, db_roles: Roles) -> None:
    found = rows(database_url, """
        SELECT nspname, has_schema_privilege(%s, oid, 'USAGE'), has_schema_privilege(%s, oid, 'CREATE')
        FROM pg_namespace WHERE nspname <> ALL(%s) AND nspname NOT LIKE 'pg_temp%%'
          AND nspname NOT LIKE 'pg_toast%%'
    """, (db_roles.runtime, db_roles.runtime, list(SYSTEM_SCHEMAS)))
    privileges = {name: (usage, create) for name, usage, create in found}
    assert privileges.pop(PROTOCOL) == (True, False)
    assert privileges.pop("public") == (False, False)
    assert all(p == (False, False) for p in privileges.values()), privileges
    assert scalar(database_url, "SELECT has_database_privilege(%s, current_database(), 'CREATE')",
                  (db_roles.runtime,)) is False


def test_runtime_role_owns_nothing_and_is_no_superuser(database_url: str, db_roles: Roles) -> None:
    assert scalar(database_url, "SELECT count(*) FROM pg_class WHERE relowner = %s::regrole",
                  (db_roles.runtime,)) == 0
    assert scalar(database_url, "SELECT count(*) FROM pg_proc WHERE proowner = %s::regrole",
                  (db_roles.runtime,)) == 0
    [(superuser, createrole, createdb, bypassrls)] = rows(
        database_url, "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
                      "WHERE rolname = %s", (db_roles.runtime,))
    assert not any((superuser, createrole, createdb, bypassrls))
    assert rows(database_url, "SELECT roleid::regrole::text FROM pg_auth_members "
                              "WHERE member = %s::regrole", (db_roles.runtime,)) == []


def test_runtime_role_may_execute_only_the_protocol(database_url: str, db_roles: Roles) -> None:
    executable = rows(database_url, """
        SELECT n.nspname || '.' || p.proname FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname <> ALL(%s) AND has_function_privilege(%s, p.oid, 'EXECUTE')
        ORDER BY 1
    """, (list(SYSTEM_SCHEMAS), db_roles.runtime))
    assert [name for (name,) in executable] == [
        f"{PROTOCOL}.append_output", f"{PROTOCOL}.attempt_holds", f"{PROTOCOL}.claim",
        f"{PROTOCOL}.claimed", f"{PROTOCOL}.fail", f"{PROTOCOL}.next", f"{PROTOCOL}.next_many",
        f"{PROTOCOL}.next_standing", f"{PROTOCOL}.record", f"{PROTOCOL}.succeed",
        f"{PROTOCOL}.succeed_many", f"{PROTOCOL}.succeed_next", f"{PROTOCOL}.usage",
        f"{PROTOCOL}.yield_item"]


def test_protocol_functions_are_pinned_security_definers_not_granted_to_public(
        database_url: str) -> None:
    found = rows(database_url, """
        SELECT p.proname, p.prosecdef, p.proconfig, p.proacl::text[]
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = %s
    """, (PROTOCOL,))
    assert len(found) == 14
    for name, secdef, config, acl in found:
        assert secdef, f"{name} is not SECURITY DEFINER"
        assert config == ["search_path=pg_catalog, public, pg_temp"], name
        assert acl is not None and not any(entry.startswith("=") for entry in acl), (
            f"{name} is executable by PUBLIC: {acl}")


def test_platform_role_can_run_the_platform(database_url: str, db_roles: Roles) -> None:
    """API and controller queries work as the platform role (no owner, no superuser)."""
    url = make_conninfo(database_url, user=db_roles.platform)
    with Database(url, name="podfn-test-platform") as db:
        with db.transaction() as tx:
            [call_id] = record_calls(
                tx, NewCalls("f", store_payload(tx, b"f"), {}, "3.11", "3.1"), [b"a"])
        [claimed] = db.all("claim_queued", {"limit": 1, **UNARMED})
        assert claimed["id"] == call_id
        row = db.one("fail", {"id": call_id, "attempt": 1, "retryable": False, "reason": "r",
                              "exit_code": 1, "error_type": None, "error_message": None,
                              "error_traceback": None, "error_pickle": None, "stdout": None,
                              "stderr": None})
        assert row is not None and row["state"] == "failed"
    assert scalar(database_url, "SELECT rolsuper FROM pg_roles WHERE rolname = %s",
                  (db_roles.platform,)) is False


def test_payloads_never_change(database_url: str, db: Database) -> None:
    with db.transaction() as tx:
        digest = store_payload(tx, b"code")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="never change"), \
            psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE podfn_payloads SET data = 'evil' WHERE digest = %s", (digest,))


def test_ensure_is_idempotent_and_refuses_missing_roles_when_not_managing(
        database_url: str, db: Database, db_roles: Roles) -> None:
    roles.ensure(db, db_roles)
    roles.ensure(db, db_roles)
    missing = Roles(f"podfn_missing_{uuid.uuid4().hex[:8]}", db_roles.runtime, manage=False)
    with pytest.raises(ConfigurationError, match=f"{missing.platform}.*PODFN_MANAGE_ROLES"):
        roles.ensure(db, missing)
    assert scalar(database_url, "SELECT count(*) FROM pg_roles WHERE rolname = %s",
                  (missing.platform,)) == 0


def test_runtime_url_is_the_platforms_database_as_the_runtime_role() -> None:
    settings = Settings(database_url="postgresql://owner:pw@db.example:5432/podfn",
                        runtime_role="rt", runtime_role_password="s3cret")
    parts = conninfo_to_dict(roles.runtime_database_url(settings))
    assert parts == {"user": "rt", "password": "s3cret", "host": "db.example", "port": "5432",
                     "dbname": "podfn"}
    plain = Settings(database_url="postgresql://owner:pw@db.example/podfn", runtime_role="rt")
    assert "password" not in conninfo_to_dict(roles.runtime_database_url(plain))
    given = Settings(database_url="postgresql://a@b/c", runtime_database_url="postgresql://r@b/c")
    assert roles.runtime_database_url(given) == "postgresql://r@b/c"


def test_migrate_works_for_a_non_superuser_owner_as_on_managed_postgres(postgres_url: str) -> None:
    """The owner of podfn's database holds CREATEROLE but is no superuser (RDS, Cloud SQL)."""
    suffix = uuid.uuid4().hex[:8]
    owner, dbname = f"podfn_owner_{suffix}", f"podfn_managed_{suffix}"
    made = Roles(f"podfn_platform_m{suffix}", f"podfn_runtime_m{suffix}")
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{owner}" LOGIN CREATEROLE NOSUPERUSER')
        admin.execute(f'CREATE DATABASE "{dbname}" OWNER "{owner}"')
    url = make_conninfo(postgres_url, dbname=dbname, user=owner)
    try:
        with Database(url, name="podfn-test-managed") as db:
            migrations.apply(db)
            roles.ensure(db, made)
            roles.ensure(db, made)  # and again, as every upgrade does
            with db.transaction() as tx:
                [call_id] = record_calls(
                    tx, NewCalls("f", store_payload(tx, b"f"), {}, "3.11", "3.1"), [b"a"])
            db.all("claim_queued", {"limit": 1, **UNARMED})
            runtime = Runtime(db, make_conninfo(url, user=made.runtime))
            assert runtime.claim(call_id, 1) is not None
            assert runtime.succeed(call_id, 1, b"done") is not None
        assert scalar(make_conninfo(postgres_url, dbname=dbname),
                      "SELECT has_table_privilege(%s, 'public.podfn_calls', 'SELECT')",
                      (made.runtime,)) is False
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            for role in (made.runtime, made.platform, owner):
                admin.execute(f'DROP ROLE IF EXISTS "{role}"')
