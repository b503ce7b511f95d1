"""Recording new calls: the one place that writes them, for every way in.

A direct submit, a call of a deployed function from Python, and an HTTP
invoke all end here: payloads stored once by content, one row per call, one
NOTIFY for the controller, all in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from podfn_platform.database import Transaction, jsonb

# A payload as the API read it: bytes, or a request frame filled in place (api/forms.py).
Payload = bytes | bytearray


def digest(data: Payload) -> str:
    return hashlib.sha256(data).hexdigest()


def store_payload(tx: Transaction, data: Payload) -> str:
    key = digest(data)
    tx.all("insert_payload", {"digest": key, "data": data})
    return key


@dataclass(frozen=True)
class NewCalls:
    function_name: str
    function_digest: str
    spec: dict[str, Any]
    client_python: str
    client_cloudpickle: str
    owner: str | None = None
    function_version: int | None = None
    result_format: str = "pickle"
    # Submitted by the token that deployed the version: its pickled arguments are the
    # deployer's own code, so the call may share the version's pool (migration 0009).
    by_deployer: bool = False


def record_calls(tx: Transaction, calls: NewCalls, args: Sequence[Payload]) -> list[str]:
    """One queued call per element of `args`; their ids, in order."""
    rows: list[dict[str, Any]] = [{"id": uuid.uuid4().hex, "args": blob, "function_name": calls.function_name,
             "function_digest": calls.function_digest, "spec": jsonb(calls.spec),
             "client_python": calls.client_python, "client_cloudpickle": calls.client_cloudpickle,
             "owner": calls.owner, "function_version": calls.function_version,
             "result_format": calls.result_format, "by_deployer": calls.by_deployer}
            for blob in args]
    tx.many("insert_call", rows)
    tx.all("notify_queued")
    return [r["id"] for r in rows]
