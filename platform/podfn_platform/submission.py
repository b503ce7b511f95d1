"""Recording new calls: the one place that writes them, for every way in.

A direct submit, a call of a deployed function from Python, and an HTTP
invoke all end here: payloads stored once by content, one row per call, one
NOTIFY for the controller, all in the caller's transaction, or, for a single
call, in one statement (`record_alone`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from podfn_platform.database import Database, Transaction, jsonb

# A payload as the API read it: bytes, or a request frame filled in place (api/forms.py).
Payload = bytes | bytearray


def digest(data: Payload) -> str:
    return hashlib.sha256(data).hexdigest()


def store_payload(tx: Transaction, data: Payload, key: str | None = None) -> str:
    """Store `data` under its content address, `key` when the caller has it already (a
    framed body's payload is hashed while it is read: api/forms.py); that address."""
    key = digest(data) if key is None else key
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


def new_ids(count: int) -> list[str]:
    """Ids for calls about to be recorded: known before they are, so that a request can
    wait for them before they exist (api/waiting.py) and claim an Idempotency-Key with
    them in one statement."""
    return [uuid.uuid4().hex for _ in range(count)]


def _columns(calls: NewCalls) -> dict[str, Any]:
    return {"function_name": calls.function_name, "function_digest": calls.function_digest,
            "spec": jsonb(calls.spec), "client_python": calls.client_python,
            "client_cloudpickle": calls.client_cloudpickle, "function_version":
            calls.function_version, "result_format": calls.result_format,
            "by_deployer": calls.by_deployer}


def record_calls(tx: Transaction, calls: NewCalls, args: Sequence[Payload],
                 ids: Sequence[str] | None = None) -> list[str]:
    """One queued call per element of `args` (with `ids`, if given); their ids, in order."""
    ids = list(ids) if ids is not None else new_ids(len(args))
    common = {**_columns(calls), "owner": calls.owner}
    rows: list[dict[str, Any]] = [{**common, "id": call_id, "args": blob}
                                  for call_id, blob in zip(ids, args, strict=True)]
    tx.many("insert_call", rows)
    tx.all("notify_queued")
    return ids


def record_alone(db: Database, calls: NewCalls, arg: Payload, call_id: str, *,
                 function: Payload | None, key: str | None, key_owner: str,
                 request_hash: str) -> bool:
    """One call as one statement of its own (`submit_one`): the Idempotency-Key `key` (of
    `key_owner`) claimed, `function` stored by content, the call recorded, the
    controller woken. False, with nothing written, if the key was taken."""
    row = db.one("submit_one", {
        **_columns(calls), "call_owner": calls.owner, "id": call_id, "args": arg,
        "function": function, "key": key, "owner": key_owner, "request_hash": request_hash})
    return bool(row and row["created"])
