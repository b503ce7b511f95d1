"""The database roles that separate user code from the platform (docs/security.md).

Two roles besides whoever owns the schema (the user that runs `podfn migrate`):

- the platform role, for the API and the controller: read and write podfn's
  tables;
- the runtime role, for code inside a call: no table, sequence or schema
  privilege at all, only EXECUTE on the runtime protocol's SECURITY DEFINER
  functions, each of which demands the attempt's own secret.

`podfn migrate` creates both (unless PODFN_MANAGE_ROLES=0: the operator has
created them) and grants what each needs, idempotently. Role names are
settings, so concurrent installations (or test sessions) on one Postgres
cluster never share a role.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from podfn.errors import ConfigurationError, DatabaseError
from podfn.settings import Settings
from podfn_platform.database import Database, Session
from podfn_runtime import queries

log = logging.getLogger("podfn.roles")

_DUPLICATE = {"42710", "23505"}  # duplicate_object; unique_violation when two create at once


@dataclass(frozen=True)
class Roles:
    platform: str
    runtime: str
    platform_password: str | None = None
    runtime_password: str | None = None
    manage: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Roles:
        return cls(settings.platform_role, settings.runtime_role,
                   settings.platform_role_password, settings.runtime_role_password,
                   settings.manage_roles)


def _statements() -> dict[str, str]:
    return queries.load("podfn_platform.sql", "roles.sql")


def ensure(db: Database, roles: Roles) -> None:
    """Create the roles (when managed), set their passwords, and grant what each may do."""
    sql = _statements()
    with db.session("podfn-roles") as session:
        for role, password in ((roles.platform, roles.platform_password),
                               (roles.runtime, roles.runtime_password)):
            exists = bool(session.execute(sql["role_exists"], {"role": role}))
            if not exists and not roles.manage:
                raise ConfigurationError(
                    f"database role {role!r} does not exist and PODFN_MANAGE_ROLES is off: "
                    "create it as docs/security.md says (or let `podfn migrate` create it)")
            if not exists:
                _create(session, sql["create_role"], role)
            if password and roles.manage:
                session.execute_with_names(sql["set_password"], identifiers={"role": role},
                                           literals={"password": password})
        if roles.manage:
            session.execute_with_names(sql["lock_down_public"], identifiers={})
        session.execute_with_names(sql["grant_platform"], identifiers={"platform": roles.platform})
        session.execute_with_names(sql["grant_runtime"], identifiers={"runtime": roles.runtime})


def _create(session: Session, statement: str, role: str) -> None:
    try:
        session.execute_with_names(statement, identifiers={"role": role})
        log.info("created database role %s", role)
    except DatabaseError as exc:
        if exc.sqlstate not in _DUPLICATE:  # created meanwhile by a concurrent migrate
            raise


def runtime_database_url(settings: Settings) -> str:
    """The URL the runtime connects with: PODFN_RUNTIME_DATABASE_URL, else the platform's
    database with the runtime role's name and password in place of the platform's."""
    if settings.runtime_database_url:
        return settings.runtime_database_url
    return as_role(settings.require_database_url(), settings.runtime_role,
                   settings.runtime_role_password)


def as_role(url: str, role: str, password: str | None) -> str:
    """`url`'s database as `role`. Built from the parts, so nothing of the original
    credentials (password, passfile, service file, client key) carries over."""
    parts = conninfo_to_dict(url)
    for secret in ("password", "passfile", "service", "sslkey", "sslcert", "sslpassword"):
        parts.pop(secret, None)
    parts["user"] = role
    if password:
        parts["password"] = password
    return make_conninfo("", **parts)
