"""`Call`: a handle on one submitted call, usable from any process that has its id."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, overload

from podfn import serialization
from podfn.errors import (
    CallCancelled,
    CallFailed,
    CallTimeout,
    RemoteTraceback,
    ResultTimeout,
    logs_hint,
)
from podfn.http import APIClient, AsyncAPIClient
from podfn.settings import Settings
from podfn.streaming import LogLine, follow_items, follow_lines

FINAL_STATES = frozenset({"succeeded", "failed", "timed_out", "cancelled"})
# One long-poll asks the server to hold at most this long; result() loops.
_POLL_SECONDS = 30.0
# What `.remote(x)`'s submission asks the API to wait in the same request (issue 12):
# as long as one long-poll, then `result()` takes over.
FIRST_WAIT_SECONDS = _POLL_SECONDS

_clients: dict[tuple[str, str | None], APIClient] = {}
_clients_lock = threading.Lock()


def default_client() -> APIClient:
    """The API client for the current settings (shared, thread-safe)."""
    url, token = Settings.current().platform()
    with _clients_lock:
        client = _clients.get((url, token))
        if client is None:
            client = _clients[(url, token)] = APIClient(url, token)
        return client


def close_default_clients() -> None:
    """Close the shared API clients (tests, or a process that is done with the platform)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


@dataclass(frozen=True)
class Logs:
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return self.stdout + self.stderr


def outcome(call: dict[str, Any], client: APIClient | None) -> Any:
    """The value of a finished call (as `wait` describes it), or raise what it ended with.

    A result or error `wait` did not carry along is fetched from the API with
    `client` (the asyncio path fetches first, with `AsyncAPIClient.complete`, and
    passes no client).
    """
    state, call_id, reason = call["state"], call["id"], call.get("reason")
    if state == "succeeded":
        if "value" in call:  # an HTTP invoke's JSON result
            return call["value"]
        if call.get("result_format") == "json":
            return _needs(client, call_id).result_value(call_id)
        blob = call.get("result")
        if blob is None:
            blob = _needs(client, call_id).result_bytes(call_id)
        return serialization.loads(blob)
    if state == "cancelled":
        raise CallCancelled(f"call {call_id} was cancelled", call_id=call_id, state=state,
                            reason=reason)
    if state == "timed_out":
        raise CallTimeout(f"call {call_id} timed out: {reason}; {logs_hint(call_id)}",
                          call_id=call_id, state=state, reason=reason)
    error = call.get("error") or {}
    remote_tb = error.get("traceback") or ""
    pickled = error.get("pickle")
    if pickled is None and error.get("pickle_size") is not None:
        pickled = _needs(client, call_id).error_bytes(call_id)
    if pickled is not None:
        try:
            exc = serialization.loads(pickled)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            exc.add_note(f"podfn: raised in call {call_id}; {logs_hint(call_id)}")
            raise exc from RemoteTraceback(remote_tb, call_id=call_id)
    message = f"call {call_id} failed: {reason or 'no reason recorded'}; {logs_hint(call_id)}"
    if remote_tb:
        message += "\n\nRemote traceback:\n" + remote_tb.rstrip()
    raise CallFailed(message, call_id=call_id, state=state, reason=reason)


def _needs(client: APIClient | None, call_id: str) -> APIClient:
    if client is None:
        raise AssertionError(f"call {call_id}: its result was not fetched before outcome()")
    return client


class Call:
    """A submitted call. `Call.from_id(id)` rebuilds one anywhere."""

    def __init__(self, call_id: str, *, client: APIClient | None = None) -> None:
        self.id = call_id
        self._client = client

    @classmethod
    def from_id(cls, call_id: str, *, client: APIClient | None = None) -> Call:
        return cls(call_id, client=client)

    @property
    def client(self) -> APIClient:
        return self._client or default_client()

    def __repr__(self) -> str:
        return f"Call({self.id!r})"

    def info(self) -> dict[str, Any]:
        """Everything the platform knows of the call, except its payloads."""
        return self.client.get_call(self.id)

    def status(self) -> str:
        """The call's state: queued, launching, running, succeeded, failed, ..."""
        return str(self.info()["state"])

    @property
    def result(self) -> _Result:
        """Wait for the call and return its value (or raise what it raised).

        `call.result(timeout=None)` waits in this thread; `await call.result.aio()`
        waits in the running event loop. `timeout` bounds the wait only
        (ResultTimeout); the call goes on.
        """
        return _Result(self)

    def _timed_out(self, timeout: float | None) -> ResultTimeout:
        return ResultTimeout(f"call {self.id} did not finish within {timeout} s; it is still "
                             "running: call .result() again or .cancel() it")

    def cancel(self) -> str:
        """Cancel the call if it has not finished; its state afterwards."""
        return str(self.client.cancel(self.id)["state"])

    @overload
    def logs(self, follow: Literal[False] = False) -> Logs: ...
    @overload
    def logs(self, follow: Literal[True]) -> Iterator[LogLine]: ...

    def logs(self, follow: bool = False) -> Logs | Iterator[LogLine]:
        """What the call wrote to stdout and stderr (the whole text of each), or with
        `follow=True` an iterator of its lines (`LogLine`) as they are written, ending
        when the call does."""
        if follow:
            return follow_lines(self.client, self.id)
        body = self.client.logs(self.id)
        return Logs(stdout=body["stdout"], stderr=body["stderr"])

    def items(self) -> Iterator[Any]:
        """A generator call's items, in order, each as soon as it is stored; then, if the
        call failed, its exception (what `result()` raises)."""
        yield from follow_items(self.client, self.id)
        self.result()


class _Result:
    """`call.result(...)` and `await call.result.aio(...)`: one wait loop, two ways to sleep."""

    def __init__(self, call: Call) -> None:
        self._call = call

    def __call__(self, timeout: float | None = None) -> Any:
        call = self._call
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            finished = call.client.wait([call.id], _next_poll(deadline))
            if finished:
                return outcome(finished[0], call.client)
            if deadline is not None and time.monotonic() >= deadline:
                raise call._timed_out(timeout)

    async def aio(self, timeout: float | None = None, *,
                  client: AsyncAPIClient | None = None) -> Any:
        """The same wait in an event loop (on httpx's AsyncClient)."""
        call = self._call
        if client is None:
            async with AsyncAPIClient.like(call.client) as own:
                return await self.aio(timeout, client=own)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            finished = await client.wait([call.id], _next_poll(deadline))
            if finished:
                return outcome(await client.complete(finished[0]), None)
            if deadline is not None and time.monotonic() >= deadline:
                raise call._timed_out(timeout)


def _next_poll(deadline: float | None) -> float:
    remaining = _POLL_SECONDS if deadline is None else deadline - time.monotonic()
    return max(0.0, min(remaining, _POLL_SECONDS))
