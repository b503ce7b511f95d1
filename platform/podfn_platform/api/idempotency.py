"""`Idempotency-Key`: the same key and body give the original calls, once.

The key is claimed in the same transaction that records the calls. A
concurrent duplicate blocks on the key's unique index until the first
commits, then finds it: exactly one set of calls is ever created. The same
key with a different body is refused (422). Keys are per token.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import request

from podfn_platform.api.auth import principal
from podfn_platform.api.errors import APIError
from podfn_platform.database import Database, Transaction

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


def create_once(db: Database, request_hash: str,
                create: Callable[[Transaction], list[str]]) -> tuple[list[str], bool]:
    """(call ids, replayed): run `create` unless this key already made calls."""
    idem = key()
    with db.transaction() as tx:
        if idem is None:
            return create(tx), False
        owner = principal().token_id
        params = {"owner": owner, "key": idem, "request_hash": request_hash}
        if tx.one("claim_idempotency_key", params) is None:
            existing = tx.one("get_idempotency_key", params)
            assert existing is not None
            if existing["request_hash"] != request_hash:
                raise APIError(409, "idempotency_key_reused",
                               "this Idempotency-Key was used with a different request; use a "
                               "new key for a new request", field="Idempotency-Key")
            return list(existing["call_ids"]), True
        ids = create(tx)
        tx.all("set_idempotency_calls", {**params, "call_ids": ids})
        return ids, False
