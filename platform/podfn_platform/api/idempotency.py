"""`Idempotency-Key`: the same key and body give the original calls, once.

The key is claimed in the same transaction (for a single call, the same
statement) that records the calls. A concurrent duplicate blocks on the key's
unique index until the first commits, then finds it: exactly one set of calls
is ever created. The same key with a different body is refused (409). Keys are
per token.
"""

from __future__ import annotations

import re

from flask import request

from podfn_platform.api.auth import principal
from podfn_platform.api.errors import APIError
from podfn_platform.database import Database, Row
from podfn_platform.submission import (
    NewCalls,
    Payload,
    record_alone,
    record_calls,
    store_payload,
)

MAX_KEY = 200
KEY = re.compile(rf"[!-~]{{1,{MAX_KEY}}}")  # the pattern /openapi.json gives


def key() -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not KEY.fullmatch(value):
        raise APIError(400, "invalid_header", f"Idempotency-Key must be 1 to {MAX_KEY} visible "
                       "ASCII characters (no spaces), e.g. a UUID", field="Idempotency-Key")
    return value


def create_once(db: Database, request_hash: str, calls: NewCalls, args: list[Payload],
                ids: list[str], *, function: Payload | None = None) -> tuple[list[str], bool]:
    """(call ids, replayed): record one call per element of `args`, with `ids` (and store
    `function` by content, if given), unless this key already made calls: then theirs.

    A single call is one statement (submission.record_alone); a batch is one
    transaction that claims the key with the ids it is about to record.
    """
    idem = key()
    owner = principal().token_id
    params = {"owner": owner, "key": idem, "request_hash": request_hash}
    if len(args) == 1:
        if record_alone(db, calls, args[0], ids[0], function=function, key=idem,
                        key_owner=owner, request_hash=request_hash):
            return ids, False
        assert idem is not None  # without a key the call is always made
        return _replay(db.one("get_idempotency_key", params), request_hash), True
    with db.transaction() as tx:
        if idem is not None and tx.one("claim_idempotency_key",
                                       {**params, "call_ids": ids}) is None:
            return _replay(tx.one("get_idempotency_key", params), request_hash), True
        if function is not None:  # (calls.function_digest is its digest: api/calls.py)
            store_payload(tx, function, calls.function_digest)
        return record_calls(tx, calls, args, ids), False


def _replay(existing: Row | None, request_hash: str) -> list[str]:
    """The calls a key already made, if it was for the same request."""
    assert existing is not None
    if existing["request_hash"] != request_hash:
        raise APIError(409, "idempotency_key_reused",
                       "this Idempotency-Key was used with a different request; use a "
                       "new key for a new request", field="Idempotency-Key")
    return list(existing["call_ids"])
