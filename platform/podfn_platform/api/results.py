"""A finished call's outcome as an HTTP response, streamed out of Postgres in chunks.

A result may be as large as PODFN_MAX_RESULT_BYTES (64 MiB by default).
Loading it whole, and base64-encoding it into JSON, made one API worker grow
by twenty times a result's size; so a result is never loaded whole here: each
chunk is one short query (substring over the stored value) written to the
socket before the next is read, and the API's memory stays bounded by the
chunk size whatever the result's size. The bytes stay opaque: nothing here
unpickles them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Response

from podfn import frames
from podfn_platform.api import context
from podfn_platform.api.errors import APIError
from podfn_platform.database import Database, Row

CHUNK_BYTES = 1024 * 1024
# A payload up to this size comes in the row of the query that finds its finished call
# (a framed `wait`): one statement, where a 1 MB argument's result (1 MiB and its pickle
# framing) took three as chunks. Larger chunks made no measurable difference to a 100 MB
# read and quintupled an API worker's peak while it streamed one (+4 -> +20 MiB).
INLINE_BYTES = 2 * 1024 * 1024
OCTETS = "application/octet-stream"


def chunks(db: Database, query: str, call_id: str, size: int | None) -> Iterator[bytes]:
    """The stored value `query` reads, CHUNK_BYTES at a time (all of it: `size` bytes)."""
    offset = 1
    while size is None or offset <= size:
        row = db.one(query, {"id": call_id, "offset": offset, "size": CHUNK_BYTES}, binary=True)
        piece = row["chunk"] if row else None
        if not piece:
            return
        yield piece.encode() if isinstance(piece, str) else bytes(piece)
        offset += len(piece)


def _headers(row: Row) -> dict[str, str]:
    return {"X-Podfn-Call-Id": row["id"], "X-Podfn-State": row["state"]}


def outcome_response(row: Row, summary: dict[str, Any]) -> Response:
    """200: the pickled result (octet-stream), or JSON with the `value` of an HTTP invoke,
    or, for a call that ended without a result, JSON with its state and error (`summary`)."""
    db = context.db()
    if row["state"] == "succeeded" and row.get("result_format") == "json":
        head = json.dumps(summary)
        assert head.endswith("}")

        def body() -> Iterator[bytes]:
            yield (head[:-1] + ', "value": ').encode()
            yield from chunks(db, "value_chunk", row["id"], None)
            yield b"}"

        return Response(body(), mimetype="application/json", headers=_headers(row))
    if row["state"] == "succeeded":
        size = row.get("result_size")
        if size is None:
            raise APIError(404, "no_result", f"call {row['id']} stored no result")
        return Response(chunks(db, "result_chunk", row["id"], size), mimetype=OCTETS,
                        headers={**_headers(row), "Content-Length": str(size)})
    return Response(json.dumps(summary), mimetype="application/json", headers=_headers(row))


def error_response(row: Row) -> Response:
    """200: the failed call's pickled exception (octet-stream)."""
    size = row.get("error_pickle_size")
    if row["state"] != "failed" or size is None:
        raise APIError(404, "no_error_pickle",
                       f"call {row['id']} ({row['state']}) has no pickled exception; "
                       "its state, reason and traceback are in GET /v1/calls/{id}")
    return Response(chunks(context.db(), "error_chunk", row["id"], size), mimetype=OCTETS,
                    headers={**_headers(row), "Content-Length": str(size)})


# Issue 12 (batches and bytes): many finished calls and their payloads in one framed
# response (podfn/frames.py), for `POST /v1/calls/wait` with Accept: MEDIA_TYPE.

FRAMES = frames.MEDIA_TYPE
# Payload bytes one framed `wait` carries (plus at most one payload): the calls
# past it are left for the client's next request. A client may ask for less.
FRAMES_BUDGET_BYTES = 64 * 1024 * 1024
# A framed response up to this size, its payloads all in their rows, is sent as one
# piece (issue 12, eighth round): a trivial call's outcome was three writes.
WHOLE_BYTES = 64 * 1024


def frames_response(rows: list[Row], summaries: list[dict[str, Any]], *,
                    header: dict[str, Any] | None = None, key: str = "calls") -> Response:
    """200: the finished calls as the JSON header (the `wait` summaries, with
    `result_frame` and `error.pickle_frame` naming their payloads), then each payload
    as a frame: one already in the row as it is, any other streamed from its column
    CHUNK_BYTES at a time. The body's length is known up front (Content-Length), so a
    response cut short (a payload deleted meanwhile, the API stopping) is seen as such
    by the client, which asks again. `header` holds more fields for frame 0, beside the
    summaries under `key` (a submission's own `calls` and `finished`)."""
    db = context.db()
    payloads: list[tuple[str, str, int, bytes | None]] = []
    for row, out in zip(rows, summaries, strict=True):
        if row["state"] == "succeeded" and out.get("result_format") == "pickle" \
                and row.get("result_size") is not None:
            payloads.append(("result_chunk", row["id"], row["result_size"], row.get("result")))
            out["result_frame"] = len(payloads)
        if row["state"] == "failed" and row.get("error_pickle_size") is not None \
                and "error" in out:
            payloads.append(("error_chunk", row["id"], row["error_pickle_size"],
                             row.get("error_pickle")))
            out["error"]["pickle_frame"] = len(payloads)
    head = json.dumps({**(header or {}), key: summaries}).encode()
    length = frames.PREFIX_BYTES * (1 + len(payloads)) + len(head) \
        + sum(size for _q, _i, size, _b in payloads)

    inlined = [inline for *_, inline in payloads if inline is not None]
    if length <= WHOLE_BYTES and len(inlined) == len(payloads):
        # One write, and one read for the client, rather than one per frame.
        whole = bytearray(frames.prefix(len(head)) + head)
        for inline in inlined:
            whole += frames.prefix(len(inline)) + inline
        return Response(bytes(whole), mimetype=FRAMES)

    def body() -> Iterator[bytes]:
        yield frames.prefix(len(head)) + head
        for query, call_id, size, inline in payloads:
            yield frames.prefix(size)
            if inline is not None:
                yield bytes(inline)
                continue
            sent = 0
            for piece in chunks(db, query, call_id, size):
                sent += len(piece)
                yield piece
            if sent != size:  # cut the response short: the client sees it and asks again
                raise RuntimeError(f"call {call_id}: {query} gave {sent} of {size} bytes")

    return Response(body(), mimetype=FRAMES, headers={"Content-Length": str(length)})
