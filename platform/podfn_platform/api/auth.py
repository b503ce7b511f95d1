"""Bearer tokens with scopes.

Scopes: `submit` (may send code, i.e. pickles), `invoke` (may invoke
deployed functions with JSON, nothing else), `deploy`, `read`, `admin`
(everything). Tokens are stored as sha256 hashes; the secret is shown once.
A token may always read and cancel the calls it created itself.

`PODFN_API_TOKEN`, when set, is an admin token that lives outside the
database (the bootstrap token of a chart install). Running without auth at
all needs PODFN_INSECURE_NO_AUTH and a loopback address.

A running call holds a token of its own (`pfn_call_...`, minted per attempt
by the controller, stored as a hash on the attempt) so that it can make
nested calls: it acts for the identity that submitted the call, with at most
`submit`, `invoke` and `read` of that identity's scopes, and stops working the
moment the attempt ends (docs/security.md).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, current_app, g, request

from podfn_platform.api.errors import APIError
from podfn_platform.api.waiting import FinishWaiter
from podfn_platform.database import Database

SCOPES = ("submit", "invoke", "deploy", "read", "admin")
NESTED_SCOPES = frozenset({"submit", "invoke", "read"})
CALL_TOKEN_PREFIX = "pfn_call_"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    token_id: str
    name: str
    scopes: frozenset[str]

    def has(self, *scopes: str) -> bool:
        return "admin" in self.scopes or bool(self.scopes.intersection(scopes))


ANONYMOUS = Principal("", "anonymous", frozenset({"admin"}))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh (id, secret) pair; only the hash of the secret is ever stored."""
    return f"tok_{secrets.token_hex(6)}", f"pfn_{secrets.token_urlsafe(32)}"


def create_token(db: Database, name: str, scopes: list[str]) -> tuple[dict[str, Any], str] | None:
    """Store a new token; (its row, its secret), or None if the name is taken."""
    token_id, secret = new_token()
    row = db.one("insert_token", {"id": token_id, "name": name, "hash": hash_secret(secret),
                                  "scopes": sorted(set(scopes))})
    return (row, secret) if row else None


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def authenticate(db: Database, root_token: str | None, no_auth: bool) -> Principal:
    if no_auth:
        # The address the server really listens on (gunicorn: the bound socket's), not
        # PODFN_HOST: `gunicorn --bind 0.0.0.0` must not serve without auth.
        bound = request.environ.get("SERVER_NAME", "")
        if bound.strip("[]") not in LOOPBACK:
            raise APIError(403, "no_auth_off_loopback",
                           f"this server runs without auth (PODFN_INSECURE_NO_AUTH) but listens "
                           f"on {bound!r}, not a loopback address; it serves nothing. Bind to "
                           "127.0.0.1, or turn auth on")
        return ANONYMOUS
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secret:
        found = principal_for(db, root_token, secret)
        if found is not None:
            return found
        raise APIError(401, "unauthorized",
                       "this token was not recognised (was the platform restarted with a new "
                       "data directory?): `podfn dev` writes its current token to your profile; "
                       "else check PODFN_TOKEN, or ask an admin for one (`podfn token create`); "
                       "a revoked token is not recognised either")
    raise APIError(401, "unauthorized",
                   "a valid bearer token is required: set PODFN_TOKEN (podfn dev writes one to "
                   "your profile; an admin creates more with `podfn token create`)")


def principal_for(db: Database, root_token: str | None, secret: str) -> Principal | None:
    """Who `secret` is (a bearer token, or the dashboard's signed-in cookie), or None."""
    if root_token and hmac.compare_digest(secret.encode(), root_token.encode()):
        return Principal("root", "root", frozenset({"admin"}))
    nested = _call_token(db, secret) if secret.startswith(CALL_TOKEN_PREFIX) else None
    if nested is not None:
        return nested
    cache: TokenCache | None = current_app.extensions.get("podfn.token_cache")
    if cache is None:
        return _stored_token(db, hash_secret(secret))
    return cache.lookup(db, hash_secret(secret))


def _stored_token(db: Database, hashed: str) -> Principal | None:
    row = db.one("token_by_hash", {"hash": hashed})
    if row is not None:
        return Principal(row["id"], row["name"], frozenset(row["scopes"]))
    return None


# How long a stored token's identity is remembered per API process (see TokenCache).
TOKEN_CACHE_SECONDS = 5.0
_TOKEN_CACHE_ENTRIES = 10_000


class TokenCache:
    """Who a stored token is, by the hash of its secret, remembered for a few seconds:
    a request with a token from the database costs no round trip for it (issue 12).

    Revocation stays immediate: `revoke_token` sends NOTIFY podfn_tokens, which the
    listener of every API process hears (api/waiting.py), and the cache is emptied;
    the revoking process empties its own at once. A lookup that began before that
    is not stored (the generation counter), and while the listener is down the
    cache is neither read nor filled (it is emptied when the connection is lost
    and again when it returns). What a revocation without the NOTIFY could leave
    (an API from before it revoking during a rolling update) lasts at most
    TOKEN_CACHE_SECONDS. Unknown secrets are never remembered (a token just made
    works at once), nor are a running call's own tokens (they end with the attempt).
    """

    def __init__(self, live: Callable[[], bool], ttl: float = TOKEN_CACHE_SECONDS) -> None:
        self._live = live
        self._ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._generation = 0

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._generation += 1

    def lookup(self, db: Database, hashed: str) -> Principal | None:
        if not self._live():
            return _stored_token(db, hashed)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(hashed)
            generation = self._generation
        if hit is not None and hit[0] > now:
            return hit[1]
        found = _stored_token(db, hashed)
        if found is not None:
            with self._lock:
                if self._generation == generation:
                    if len(self._entries) >= _TOKEN_CACHE_ENTRIES:
                        self._entries.clear()
                    self._entries[hashed] = (now + self._ttl, found)
        return found


def _call_token(db: Database, secret: str) -> Principal | None:
    """The identity a running call's own token acts for, or None once its attempt ended."""
    row = db.one("call_token_owner", {"hash": hash_secret(secret)})
    if row is None:
        return None
    owner_scopes = frozenset({"admin"}) if row["owner"] in ("", "root") else frozenset(row["scopes"])
    scopes = NESTED_SCOPES if "admin" in owner_scopes else owner_scopes & NESTED_SCOPES
    if not scopes:
        return None
    return Principal(row["owner"], f"call {row['call_id']}", scopes)


def principal() -> Principal:
    return g.podfn_principal  # type: ignore[no-any-return]


def forbidden(scopes: tuple[str, ...]) -> APIError:
    wanted = " or ".join(scopes)
    return APIError(403, "forbidden",
                    f"this token ({principal().name}) lacks the {wanted} scope; ask an admin for "
                    f"one: podfn token create --scope {scopes[0]} --name NAME")


def requires(*scopes: str) -> Callable[[F], F]:
    """Allow the view to tokens holding any of `scopes` (admin holds all)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not principal().has(*scopes):
                raise forbidden(scopes)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def check_calls_readable(db: Database, ids: list[str]) -> None:
    """Reading calls needs `read`, unless every one of them was made with this token."""
    who = principal()
    if who.has("read"):
        return
    owners = db.all("call_owners", {"ids": ids})
    if any(row["owner"] != who.token_id for row in owners):
        raise forbidden(("read",))


def install(app: Flask, db: Database, *, root_token: str | None, no_auth: bool,
            waiter: FinishWaiter | None = None) -> None:
    if waiter is not None:
        cache = app.extensions["podfn.token_cache"] = TokenCache(waiter.listening)
        waiter.on_tokens_changed(cache.clear)

    @app.before_request
    def _authenticate() -> None:
        if request.path.startswith("/v1/"):
            g.podfn_principal = authenticate(db, root_token, no_auth)

    app.extensions["podfn.no_auth"] = no_auth
    app.extensions["podfn.root_token"] = root_token  # the dashboard signs in with it too
