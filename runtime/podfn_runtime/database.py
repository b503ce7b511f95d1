"""The runtime's one connection to Postgres, every statement it sends, and how it
rides out database trouble.

The runtime writes results straight to Postgres (no queue, no callback to
the API), but it connects as the runtime role, which may only execute the
runtime protocol's functions (protocol.sql): each checks the attempt's
secret, so the code of a call can touch its own call and nothing else, and
a stale attempt's write changes nothing. The connection keeps no session
state and never prepares statements server-side, so it works through
PgBouncer in transaction pooling mode.

A lost connection, a restarting server or a terminated backend is the
platform's fault, never the user's: each statement is retried on a fresh
connection, with exponential backoff and jitter, for up to `retry_seconds`
(counted from the first failure of that statement). Past that the runtime
gives up with `DatabaseUnavailable`, which `main` turns into the exit code the
launchers read as a disruption (requeued, the user's `retries` untouched).

Retrying a write whose reply was lost is safe because every protocol function
is guarded: the second try matches nothing. That "nothing" must not be read
as "stale": after a connection failure the runtime asks Postgres whether the
write landed for *this* attempt (`record`, which its secret still unlocks
after the attempt ended) and, if it did, carries on as if the first reply had
arrived.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from podfn_runtime.proxy import ProxyConnection, ProxyError, ProxyUnavailable
from podfn_runtime.queries import protocol

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("podfn.runtime")

DEFAULT_RETRY_SECONDS = 60.0
# Backoff between tries: doubles from FIRST_BACKOFF up to MAX_BACKOFF, each
# sleep drawn uniformly from [half, all] of it so runtimes cut off together
# do not reconnect together.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
CONNECT_TIMEOUT = 10  # seconds; libpq's own limit for one connection attempt



def _transient() -> tuple[type[Exception], ...]:
    """Errors that mean "the connection or the server is in trouble", worth a new
    connection. Anything else (a constraint, a bad value) would fail again.

    psycopg is imported when the runtime first connects, not before: a cold call on
    the local forkserver never connects (its supervisor does, proxy.py), and the
    forkserver's children are cheaper to fork from an image without it."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return (ProxyUnavailable,)
    return (psycopg.OperationalError, psycopg.InterfaceError, ProxyUnavailable)


def _final() -> tuple[type[Exception], ...]:
    psycopg = sys.modules.get("psycopg")
    return (ProxyError,) if psycopg is None else (psycopg.Error, ProxyError)

# For each transition, the attempt states (podfn_attempts.state) that say it
# already happened for this attempt.
_LANDED = {
    "claim": ("running",),
    "succeed": ("succeeded",),
    "succeed_next": ("succeeded",),
    "fail": ("failed", "retrying"),
}


# Statements whose rows carry payloads: their results are fetched in binary, so a
# claimed call's arguments arrive as their bytes, not as hex text twice their size
# (a raw 100 MB SELECT: 3x faster; 1 MB: 5x). The other statements return a few
# small columns, which gain nothing from it.
_PAYLOAD_READS = frozenset({"claim", "claimed", "next", "next_many", "succeed_many"})


# The most CPU or wall seconds Postgres stores (the protocol's functions clamp to it).
_MAX_SECONDS = 1e9


def _finite(values: list[float]) -> list[float | None]:
    """JSON has no NaN or infinity: NaN goes as NULL, an infinity as the bound Postgres
    would clamp it to, so a warm success stores what the one-call path's `usage`
    (migration 0006) stores for the same numbers."""
    return [None if v is None or math.isnan(v)
            else v if math.isfinite(v) else (_MAX_SECONDS if v > 0 else 0.0)
            for v in values]


def _text(value: Any) -> Any:
    """A string without NUL (U+FFFD for each), others as they are: Postgres' JSON has no
    NUL, and its error would quote the batch around it, secrets included."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def _pack(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters a statement of protocol.sql takes, from the lists a caller gives.

    `succeed_many` and `next_many` take their arrays as one JSON document, and
    `succeed_many` its pickled results as one binary parameter (an [offset, length]
    of it per outcome, or null): psycopg dumps a list element by element in Python
    (~30 us per outcome at a batch of 10, against ~2 us for this), and the statement
    unpacks them in Postgres (protocol.sql)."""
    if name == "next_many":
        return {**params, "secret_hashes": json.dumps(params["secret_hashes"])}
    if name != "succeed_many":
        return params
    places: list[list[int] | None] = []
    blobs: list[bytes] = []
    offset = 0
    for result in params["results"]:
        if result is None:
            places.append(None)
            continue
        places.append([offset, len(result)])
        blobs.append(result)
        offset += len(result)
    batch = {key: params[key] for key in (
        "ids", "attempts", "secrets", "results_json", "stdouts", "stderrs", "peak_bytes",
        "start_ids", "start_attempts", "start_secrets", "next_id", "next_attempt",
        "next_secret", "next_hashes")}
    batch["results"] = places
    batch["cpu_seconds"] = _finite(params["cpu_seconds"])
    batch["wall_seconds"] = _finite(params["wall_seconds"])
    document = json.dumps(batch, ensure_ascii=False)
    if "\\u0000" in document:  # a NUL somewhere (rare): the strings without it
        document = json.dumps({key: _text(value) for key, value in batch.items()},
                              ensure_ascii=False)
    return {"batch": document, "results": b"".join(blobs)}


class RuntimeDatabaseError(Exception):
    """The runtime could not write to Postgres, and retrying would not help."""


class DatabaseUnavailable(RuntimeDatabaseError):
    """Postgres stayed unreachable for the whole retry budget: a disruption, not the user's failure."""


def connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    """One connection as the runtime uses it (no retries)."""
    from psycopg.rows import dict_row

    from podfn_runtime.sending import PayloadConnection  # large payloads sent whole

    return PayloadConnection.connect(url, autocommit=True, row_factory=dict_row,
                                     application_name="podfn-runtime",
                                     connect_timeout=CONNECT_TIMEOUT, prepare_threshold=None)


class RuntimeDatabase:
    def __init__(self, url: str, secret: str, *,
                 retry_seconds: float = DEFAULT_RETRY_SECONDS,
                 connection: psycopg.Connection[dict[str, Any]] | None = None,
                 proxy: ProxyConnection | None = None) -> None:
        self._url = url
        self._secret = secret
        self._retry_seconds = retry_seconds
        self._queries = protocol()
        self._lock = threading.Lock()  # the output flusher, recorder and SIGTERM writer share it
        # `connection`: made ahead by the local forkserver's spare child, for this URL.
        self._conn: psycopg.Connection[dict[str, Any]] | None = connection
        # `proxy`: the local forkserver's supervisor runs the statements (proxy.py);
        # if it goes away, the runtime connects by itself.
        self._proxy = proxy
        self._retrying(lambda _tries: None, "connect")

    def _connect(self) -> None:
        if self._proxy is not None and not self._proxy.closed:
            return
        self._proxy = None
        if self._conn is not None and not self._conn.closed:
            return
        self._conn = connect(self._url)

    def _execute(self, name: str, params: dict[str, Any], *,
                 binary: bool = False) -> dict[str, Any] | None:
        if self._proxy is not None:
            return self._proxy.execute(name, params, binary)
        assert self._conn is not None
        return self._conn.execute(self._queries[name], params, binary=binary).fetchone()

    def _drop(self) -> None:
        if self._proxy is not None:
            return  # a proxy that is gone closed itself; one in trouble is asked again
        if self._conn is not None:
            with contextlib.suppress(*_final()):
                self._conn.close()
            self._conn = None

    def _retrying(self, action: Any, what: str, *, retry: bool = True) -> Any:
        """`action()` under the lock, retried on transient errors for the retry budget."""
        deadline: float | None = None
        backoff = FIRST_BACKOFF
        tries = 0
        while True:
            tries += 1
            with self._lock:
                try:
                    self._connect()
                    return action(tries)
                except _transient() as exc:
                    self._drop()
                    error: Exception = exc
                except _final() as exc:
                    raise RuntimeDatabaseError(f"{what} failed: {exc}") from exc
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + self._retry_seconds
            if not retry or now >= deadline:
                raise DatabaseUnavailable(
                    f"{what} failed: the database was unreachable for "
                    f"{self._retry_seconds:g} s ({tries} tries); last error: {error}") from error
            log.warning("%s failed (%s); trying again", what, str(error).strip() or type(error))
            time.sleep(min(random.uniform(backoff / 2, backoff), max(0.0, deadline - now)))
            backoff = min(backoff * 2, MAX_BACKOFF)

    def use_secret(self, secret: str) -> None:
        """Sign from now on with `secret` (a warm worker's next attempt, worker.py).
        Not under the connection's lock: a statement signs with the secret it read
        when it was made, and a warm worker's recorder thread may hold the lock for a
        whole statement while the worker starts its next call."""
        self._secret = secret

    def transition(self, name: str, **params: Any) -> dict[str, Any] | None:
        """Call one protocol function with this attempt's secret (unless `secret=` is
        given); its row, or None if it did not apply."""
        return self._transition(name, params, retry=True)

    def try_once(self, name: str, **params: Any) -> dict[str, Any] | None:
        """`transition` without retries, for writes the next one supersedes (usage, output)."""
        return self._transition(name, params, retry=False)

    def _transition(self, name: str, params: dict[str, Any], *,
                    retry: bool) -> dict[str, Any] | None:
        params = {"secret": self._secret, **params}

        def run(tries: int) -> dict[str, Any] | None:
            row = self._execute(name, params, binary=name in _PAYLOAD_READS)
            if row is not None and "written" in row:  # append_output, yield_item
                return row if row["written"] else None
            if row is None and tries > 1 and name in _LANDED:
                return self._landed(name, params)
            return row

        result: dict[str, Any] | None = self._retrying(run, name, retry=retry)
        return result

    def rows(self, name: str, **params: Any) -> list[dict[str, Any]]:
        """Call a protocol function that answers several rows (a warm worker's
        `next_many`, `succeed_many`), retried like `transition`. After a lost reply to
        `succeed_many`, each outcome missing from the answer is looked up with `record`
        (its secret is in `secrets`), so one that had landed is not taken for stale."""
        packed = _pack(name, {"secret": self._secret, **params})

        def run(tries: int) -> list[dict[str, Any]]:
            assert self._conn is not None
            found = self._conn.execute(self._queries[name], packed,
                                       binary=name in _PAYLOAD_READS).fetchall()
            if tries > 1 and name == "succeed_many":
                found += self._landed_many(params, found)
            return found

        result: list[dict[str, Any]] = self._retrying(run, name)
        return result

    def _landed_many(self, params: dict[str, Any],
                     found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self._conn is not None
        seen = {(row["id"], row["attempt"]) for row in found if row["kind"] == "succeeded"}
        landed = []
        for call_id, attempt, secret in zip(params["ids"], params["attempts"],
                                            params["secrets"], strict=True):
            if (call_id, attempt) in seen:
                continue
            record = self._conn.execute(self._queries["record"], {
                "id": call_id, "attempt": attempt, "secret": secret}).fetchone()
            if record is not None and record["attempt_state"] == "succeeded":
                log.info("the outcome of call %s attempt %s had landed before the connection "
                         "was lost", call_id, attempt)
                landed.append({"kind": "succeeded", "id": call_id, "attempt": attempt,
                               "state": record["call_state"]})
        return landed

    def _landed(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """After a lost reply: what the transition returned, if it did land for this attempt."""
        key = {"id": params["id"], "attempt": params["attempt"], "secret": params["secret"]}
        record = self._execute("record", key)
        if record is None or record["attempt_state"] not in _LANDED[name]:
            return None
        log.info("%s of call %s attempt %s had landed before the connection was lost",
                 name, params["id"], params["attempt"])
        if name == "claim":
            return self._execute("claimed", key, binary=True)
        return {"id": record["id"], "attempt": record["attempt"], "state": record["call_state"]}

    def close(self) -> None:
        with self._lock:
            if self._proxy is not None:
                self._proxy.close()
                self._proxy = None
            self._drop()
