"""`Call`: a handle on one submitted call, usable from any process that has its id."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from podfn import serialization
from podfn.errors import (
    CallCancelled,
    CallFailed,
    CallTimeout,
    RemoteTraceback,
    ResultTimeout,
)
from podfn.http import APIClient
from podfn.settings import Settings

FINAL_STATES = frozenset({"succeeded", "failed", "timed_out", "cancelled"})
# One long-poll asks the server to hold at most this long; result() loops.
_POLL_SECONDS = 30.0

_clients: dict[tuple[str, str | None], APIClient] = {}
_clients_lock = threading.Lock()


def default_client() -> APIClient:
    """The API client for the current settings (shared, thread-safe)."""
    url, token = Settings.from_env().platform()
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


def outcome(call: dict[str, Any], client: APIClient) -> Any:
    """The value of a finished call (as `wait` describes it), or raise what it ended with.

    A result `wait` did not carry along is fetched from the API with `client`.
    """
    state, call_id, reason = call["state"], call["id"], call.get("reason")
    if state == "succeeded":
        if "value" in call:  # an HTTP invoke's JSON result
            return call["value"]
        if call.get("result_format") == "json":
            return client.result_value(call_id)
        blob = call.get("result")
        return serialization.loads(blob if blob is not None else client.result_bytes(call_id))
    if state == "cancelled":
        raise CallCancelled(f"call {call_id} was cancelled", call_id=call_id, state=state,
                            reason=reason)
    if state == "timed_out":
        raise CallTimeout(f"call {call_id} timed out: {reason}", call_id=call_id, state=state,
                          reason=reason)
    error = call.get("error") or {}
    remote_tb = error.get("traceback") or ""
    if error.get("pickle_size") is not None:
        try:
            exc = serialization.loads(client.error_bytes(call_id))
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            raise exc from RemoteTraceback(remote_tb)
    message = f"call {call_id} failed: {reason or 'no reason recorded'}"
    if remote_tb:
        message += "\n\nRemote traceback:\n" + remote_tb.rstrip()
    raise CallFailed(message, call_id=call_id, state=state, reason=reason)


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

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the call and return its value (or raise what it raised).

        `timeout` bounds the wait only (ResultTimeout); the call goes on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = _POLL_SECONDS if deadline is None else deadline - time.monotonic()
            finished = self.client.wait([self.id], max(0.0, min(remaining, _POLL_SECONDS)))
            if finished:
                return outcome(finished[0], self.client)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"call {self.id} did not finish within {timeout} s; "
                                    "it is still running: call .result() again or .cancel() it")

    def cancel(self) -> str:
        """Cancel the call if it has not finished; its state afterwards."""
        return str(self.client.cancel(self.id)["state"])

    def logs(self) -> Logs:
        body = self.client.logs(self.id)
        return Logs(stdout=body["stdout"], stderr=body["stderr"])
