"""Remote functions that attack the platform from inside a call (docs/security.md).

Each function tries something the runtime role or the call's token must not
be able to do and reports, per attempt, what happened: "refused: ..." when
the platform said no, "ALLOWED: ..." when it did not. Tests assert that
every entry is refused and that the function's own result was recorded.
They run through the real runtime, on the local launcher and on the
Kubernetes stand-in.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import psycopg

from podfn import remote

TABLES = ("podfn_calls", "podfn_attempts", "podfn_payloads", "podfn_tokens", "podfn_functions",
          "podfn_function_versions", "podfn_idempotency", "podfn_controller_state",
          "podfn_migrations", "podfn_output", "podfn_items")


def _sql(url: str, statement: str, params: Any = None, *, before: str = "") -> str:
    """Run one statement (after `before`, on the same connection); what came of it."""
    try:
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            if before:
                conn.execute(before)
            cur = conn.execute(statement, params)
            rows = cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        return f"refused: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    if rows in ([], [(None,)], [(False,)]):
        return f"refused: no effect ({rows})"
    return f"ALLOWED: {rows!r}"[:300]


def _protocol(url: str, function: str, call_id: str, attempt: int, secret: str) -> str:
    statements = {
        "claim": "SELECT id FROM podfn_runtime_v1.claim(%s, %s, %s)",
        "succeed": "SELECT id FROM podfn_runtime_v1.succeed(%s, %s, %s, 'pwned', NULL, '', '')",
        "fail": "SELECT id FROM podfn_runtime_v1.fail(%s, %s, %s, false, 'pwned', NULL, NULL, "
                "NULL, NULL, NULL, NULL)",
        # The two reads a runtime makes after a lost reply: another call's state or
        # payload must stay out of reach.
        "record": "SELECT call_state FROM podfn_runtime_v1.record(%s, %s, %s)",
        "claimed": "SELECT args FROM podfn_runtime_v1.claimed(%s, %s, %s)",
        "usage": "SELECT podfn_runtime_v1.usage(%s, %s, %s, 666, 666, 666)",
        # Migration 0007: appending output and storing generator items.
        "append_output": "SELECT podfn_runtime_v1.append_output(%s, %s, %s, 'stdout', 0, "
                         "'pwned')",
        "yield_item": "SELECT podfn_runtime_v1.yield_item(%s, %s, %s, 0, 'pwned')",
        # Migration 0011: usage, succeed and next in one round trip.
        "succeed_next": "SELECT state FROM podfn_runtime_v1.succeed_next(%s, %s, %s, 'pwned', "
                        "NULL, '', '', 666, 666, 666, repeat('0', 64))",
        # Migration 0012: a warm worker's batched claims, marks and outcomes.
        "next_many": "SELECT id FROM podfn_runtime_v1.next_many(%s, %s, %s, "
                     "ARRAY[repeat('0', 64)]) WHERE verdict = 'claimed'",
        "succeed_many": "WITH p(i, a, s) AS (SELECT %s::text, %s::int, %s::text) "
                        "SELECT f.state FROM p, podfn_runtime_v1.succeed_many("
                        "ARRAY[p.i], ARRAY[p.a], ARRAY[p.s], ARRAY['pwned'::bytea], "
                        "ARRAY[NULL::text], ARRAY[''], ARRAY[''], ARRAY[666::bigint], "
                        "ARRAY[666::float8], ARRAY[666::float8], ARRAY[p.i], ARRAY[p.a], "
                        "ARRAY[p.s], ARRAY[repeat('0', 64)]) f "
                        "WHERE f.kind = 'succeeded' OR f.verdict = 'claimed'",
    }
    return _sql(url, statements[function], (call_id, attempt, secret))


@remote
def attack(victim_id: str, forbidden: list[str]) -> dict[str, str]:
    """Everything a call's code might try against other calls and the platform."""
    env = dict(os.environ)
    url = env["PODFN_RUNTIME_DATABASE_URL"]
    me, attempt, secret = env["PODFN_CALL_ID"], int(env["PODFN_ATTEMPT"]), env["PODFN_ATTEMPT_SECRET"]
    tried: dict[str, str] = {}
    # 1. Whatever credentials the environment holds, against every table.
    for table in TABLES:
        tried[f"select {table}"] = _sql(url, f"SELECT count(*) FROM public.{table}")
    tried["update another call"] = _sql(
        url, "UPDATE public.podfn_calls SET state = 'succeeded', result = 'x' WHERE id = %s RETURNING id",
        (victim_id,))
    tried["insert a token"] = _sql(
        url, "INSERT INTO public.podfn_tokens (id, name, hash, scopes) "
             "VALUES ('tok_x', 'x', 'x', '{admin}') RETURNING id")
    tried["rewrite a payload"] = _sql(url, "UPDATE public.podfn_payloads SET data = 'x' RETURNING digest")
    tried["insert a payload"] = _sql(
        url, "INSERT INTO public.podfn_payloads (digest, data) VALUES ('x', 'x') RETURNING digest")
    tried["copy from program"] = _sql(url, "COPY (SELECT 1) TO PROGRAM 'true'")
    tried["copy from program into temp"] = _sql(url, "COPY t FROM PROGRAM 'id'",
                                                before="CREATE TEMP TABLE t (x text)")
    tried["read a server file"] = _sql(url, "SELECT pg_read_file('PG_VERSION')")
    tried["create in public"] = _sql(url, "CREATE TABLE public.podfn_evil (x int)")
    tried["create a schema"] = _sql(url, "CREATE SCHEMA podfn_evil")
    tried["shadow a table with a temp one"] = _sql(
        url, "SELECT id FROM podfn_runtime_v1.claim(%s, %s, %s)", (victim_id, 1, secret),
        before="CREATE TEMP TABLE podfn_attempts (call_id text, attempt int, secret_hash text, "
               "finished_at timestamptz)")
    # 2. The runtime protocol with another call's id, a stale attempt, a wrong secret.
    for function in ("claim", "succeed", "fail", "usage", "record", "claimed",
                     "append_output", "yield_item", "succeed_next", "next_many",
                     "succeed_many"):
        tried[f"{function} another call with my secret"] = _protocol(
            url, function, victim_id, 1, secret)
        tried[f"{function} my call at a stale attempt"] = _protocol(
            url, function, me, attempt - 1, secret)
        tried[f"{function} my call with a wrong secret"] = _protocol(
            url, function, me, attempt, secret[:-2] + "xx")
    # 3. Operator tokens or the platform's URL in the environment.
    for value in forbidden:
        holders = [k for k, v in env.items() if value and value in v]
        tried[f"find {value[:12]}... in the environment"] = (
            f"ALLOWED: in {holders}" if holders else "refused: not there")
    # 4. The call's own API token beyond what it may do.
    api, token = env.get("PODFN_URL"), env.get("PODFN_TOKEN", "")
    if api:
        headers = {"Authorization": f"Bearer {token}"}
        made = httpx.post(f"{api}/v1/tokens", json={"name": "evil", "scopes": ["admin"]},
                          headers=headers, timeout=10)
        tried["mint an admin token"] = (f"refused: {made.status_code}" if made.status_code >= 400
                                        else f"ALLOWED: {made.status_code}")
        listed = httpx.get(f"{api}/v1/tokens", headers=headers, timeout=10)
        tried["list tokens"] = (f"refused: {listed.status_code}" if listed.status_code >= 400
                                else f"ALLOWED: {listed.status_code}")
    return tried


def _through(proxy: Any, name: str, params: dict[str, Any]) -> str:
    """One request through the local forkserver's supervisor (podfn_runtime/proxy.py)."""
    from podfn_runtime.proxy import ProxyError, ProxyUnavailable

    try:
        row = proxy.execute(name, params, False)
    except (ProxyError, ProxyUnavailable) as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    if row is None or row.get("written") is False:
        return f"refused: no effect ({row})"
    return f"ALLOWED: {row!r}"[:300]


@remote
def attack_supervisor(victim_id: str) -> dict[str, str]:
    """A cold call on the local forkserver reaches Postgres through the supervisor's
    socket: use that socket for what its own connection could not do either."""
    import gc
    import socket

    from podfn_runtime.proxy import ProxyConnection

    [proxy] = [o for o in gc.get_objects() if isinstance(o, ProxyConnection) and not o.closed]
    me, attempt = os.environ["PODFN_CALL_ID"], int(os.environ["PODFN_ATTEMPT"])
    secret = os.environ["PODFN_ATTEMPT_SECRET"]
    mine = {"id": me, "attempt": attempt, "secret": secret}
    tried = {}
    for name in ("claim", "claimed", "record", "usage", "append_output", "yield_item",
                 "succeed", "fail", "succeed_next"):
        tried[f"{name} another call"] = _through(proxy, name, {**mine, "id": victim_id})
        tried[f"{name} my call at another attempt"] = _through(
            proxy, name, {**mine, "attempt": attempt + 1})
    tried["attempt given as true"] = _through(proxy, "record", {**mine, "attempt": True})
    tried["my call with a wrong secret"] = _through(
        proxy, "record", {**mine, "secret": secret[:-2] + "xx"})
    tried["a warm worker's next"] = _through(proxy, "next", {**mine, "secret_hash": "0" * 64})
    tried["a standing worker's next"] = _through(
        proxy, "next_standing", {**mine, "worker": "w", "worker_secret": "s",
                                 "secret_hash": "0" * 64})
    tried["succeed_next taking the next call"] = _through(
        proxy, "succeed_next", {**mine, "result": b"x", "result_json": None, "stdout": "",
                                "stderr": "", "peak_bytes": 1, "cpu_seconds": 1.0,
                                "wall_seconds": 1.0, "secret_hash": "0" * 64})
    tried["a statement that is not the protocol's"] = _through(
        proxy, "SELECT count(*) FROM public.podfn_calls", mine)
    tried["an array parameter"] = _through(proxy, "record", {**mine, "secret": [secret]})
    # Last: garbage on the socket. The supervisor hangs up on us, and the runtime still
    # records this call's own result (by connecting itself).
    raw = socket.socket(fileno=os.dup(proxy.fileno()))
    raw.sendall(b"\x00\x00\x00\x05{]]]]")
    raw.settimeout(10)
    got = raw.recv(100)
    raw.close()
    tried["garbage"] = "refused: hung up" if got == b"" else f"ALLOWED: {got!r}"
    return tried


@remote
def leak_credentials() -> dict[str, Any]:
    """Hand this attempt's secret and token out, to be replayed once the attempt has ended."""
    return {"call_id": os.environ["PODFN_CALL_ID"], "attempt": int(os.environ["PODFN_ATTEMPT"]),
            "secret": os.environ["PODFN_ATTEMPT_SECRET"], "token": os.environ.get("PODFN_TOKEN"),
            "url": os.environ["PODFN_RUNTIME_DATABASE_URL"]}


@remote
def replay(leaked: dict[str, Any]) -> dict[str, str]:
    """Use another (ended) attempt's secret against its call."""
    url = os.environ["PODFN_RUNTIME_DATABASE_URL"]
    return {f"{function} with a spent secret": _protocol(url, function, leaked["call_id"],
                                                         leaked["attempt"], leaked["secret"])
            for function in ("claim", "succeed", "fail", "usage", "claimed",
                             "append_output", "yield_item", "succeed_next", "succeed_many")}


@remote
def wait_for(path: str) -> str:
    """A victim: runs until `path` exists, then returns its own result."""
    import time

    while not os.path.exists(path):
        time.sleep(0.02)
    return "the victim's own result"


@remote
def add(a: int, b: int) -> int:
    return a + b


@remote
def nested(a: int) -> int:
    """Calls another function from inside a call, with the call's own token."""
    return int(add.remote(a, 1)) * 10


@remote(name="hostile-try-submit")
def try_submit() -> str:
    """Deployed and invoked by an invoke-only token: its own token may not send code."""
    from podfn.errors import NotAuthorized

    try:
        add.remote(1, 2)
    except NotAuthorized as exc:
        return f"refused: {exc}"
    return "ALLOWED: submitted code"
