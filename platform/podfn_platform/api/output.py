"""Reading a call's output and a generator's items from an offset, long-polling for more.

The runtime appends output chunks and items as the call produces them
(migration 0007); a reader names where it is (`offset` in the attempt's
combined output, `start` among the items) and gets what follows, at once if
there is some, else when some arrives (the runtime's `pg_notify` on
`podfn_output` wakes the waiter) or the call ends, or after `wait` seconds.
So following a call costs what it printed, once. Items stay opaque bytes
(raw frames when the client asks for application/x-podfn-frames, else base64
in JSON): this process never unpickles them.
"""

from __future__ import annotations

import base64
from typing import Any

from flask import request

from podfn_platform.api import context
from podfn_platform.api.errors import APIError
from podfn_platform.database import Row

# Rows per response; a follower asks again for the rest at once.
CHUNKS_PER_RESPONSE = 256
ITEMS_PER_RESPONSE = 100


MAX_INT = 2**31 - 1  # Postgres integer: a larger number could not be looked up


def _int_arg(name: str, default: int | None = None) -> int | None:
    value = request.args.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise APIError(400, "invalid_field", f"{name} must be a whole number, not {value!r}",
                       field=name) from None
    if not 0 <= number <= MAX_INT:
        raise APIError(400, "invalid_field", f"{name} must be between 0 and {MAX_INT}",
                       field=name)
    return number


def _wait_arg() -> float:
    from podfn_platform.api.calls import wait_seconds

    value = request.args.get("wait")
    return 0.0 if value is None or value == "" else wait_seconds(value)


def _progress(call_id: str) -> Row:
    row = context.db().one("call_progress", {"id": call_id})
    if row is None:
        raise APIError(404, "not_found", f"no call with id {call_id!r}")
    return row


def _waited(call_id: str, seconds: float, fetch: Any) -> Any:
    """`fetch()`'s answer, waiting up to `seconds` while it is None (nothing new)."""
    found = fetch()
    if found is not None or seconds <= 0:
        return found
    answers = context.waiter().wait([call_id], seconds, lambda: [a] if (a := fetch()) else [])
    return answers[0] if answers else fetch()


def follow_logs(call_id: str) -> dict[str, Any]:
    """GET .../logs?offset=N[&attempt=A][&wait=S]: the chunks from offset N."""
    offset = _int_arg("offset", 0)
    assert offset is not None
    asked_attempt = _int_arg("attempt")
    seconds = _wait_arg()
    db = context.db()

    def fetch() -> dict[str, Any] | None:
        call = _progress(call_id)
        attempt = asked_attempt if asked_attempt is not None else call["attempt"]
        rows = db.all("output_from", {"id": call_id, "attempt": attempt, "offset": offset,
                                      "limit": CHUNKS_PER_RESPONSE})
        moved_on = attempt != call["attempt"]  # retried: this attempt writes no more
        if not rows and not call["final"] and not moved_on:
            return None
        chunks = []
        end = offset
        for r in rows:
            data = r["data"][max(0, offset - r["char_offset"]):]
            start = max(offset, r["char_offset"])
            chunks.append({"stream": r["stream"], "offset": start, "data": data,
                           "at": context.iso(r["at"])})
            end = start + len(data)
        return {"id": call_id, "state": call["state"], "attempt": attempt,
                "current_attempt": call["attempt"], "chunks": chunks, "next_offset": end,
                # Nothing more will come for this attempt: the call ended (or moved on)
                # and this response holds the last of what was stored.
                "done": bool((call["final"] or moved_on) and len(rows) < CHUNKS_PER_RESPONSE)}

    found = _waited(call_id, seconds, fetch)
    if found is None:  # the wait ran out with nothing new
        call = _progress(call_id)
        attempt = asked_attempt if asked_attempt is not None else call["attempt"]
        found = {"id": call_id, "state": call["state"], "attempt": attempt,
                 "current_attempt": call["attempt"], "chunks": [], "next_offset": offset,
                 "done": False}
    return dict(found)


def read_items(call_id: str) -> dict[str, Any]:
    """GET .../items?start=N[&wait=S]: a generator call's items from index N, each
    `data` as bytes (the view puts them in frames, or in base64 for JSON)."""
    start = _int_arg("start", 0)
    assert start is not None
    seconds = _wait_arg()
    db = context.db()

    def fetch() -> dict[str, Any] | None:
        call = _progress(call_id)
        rows = db.all("items_from", {"id": call_id, "start": start, "limit": ITEMS_PER_RESPONSE},
                      binary=True)
        if not rows and not call["final"]:
            return None
        items = [{"index": r["item_index"], "data": bytes(r["data"]),
                  "at": context.iso(r["at"])} for r in rows]
        return {"id": call_id, "state": call["state"], "items": items,
                "next": start + len(items),
                "done": bool(call["final"] and len(rows) < ITEMS_PER_RESPONSE)}

    found = _waited(call_id, seconds, fetch)
    if found is None:
        call = _progress(call_id)
        found = {"id": call_id, "state": call["state"], "items": [], "next": start,
                 "done": False}
    return dict(found)


def items_json(found: dict[str, Any]) -> dict[str, Any]:
    """`read_items`' answer for JSON: each item's pickle in base64."""
    return {**found, "items": [{**item, "data": base64.b64encode(item["data"]).decode()}
                               for item in found["items"]]}


def items_frames(found: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    """`read_items`' answer as a framed header (each item's `data_frame`) and its frames."""
    items = [{k: v for k, v in item.items() if k != "data"} | {"data_frame": n}
             for n, item in enumerate(found["items"], start=1)]
    return {**found, "items": items}, [item["data"] for item in found["items"]]
