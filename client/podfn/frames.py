"""Binary framing for payloads on the data path: a JSON header beside raw bytes, no base64.

A body in this framing (media type `application/x-podfn-frames`) is a sequence
of frames, each an unsigned 64-bit big-endian length followed by that many
bytes. Frame 0 is a UTF-8 JSON object (for `POST /v1/calls/wait`: `{"calls":
[...]}`); its fields name the frames that follow by index (`result_frame`,
`error.pickle_frame`), and those frames come in increasing order, each once.
A submission sent this way (`POST /v1/calls`, api/forms.py) has `{"meta":
{...}, "parts": [...]}` in frame 0, naming each following frame's part.
A frame may be empty. docs/api-contract.md describes it for other clients.

Why not base64 inside JSON: it made every payload a third larger on the wire
and cost an encode, a JSON parse of megabytes of text and a decode; why not
multipart/mixed: its boundary must be searched for in every byte of the
payloads, while a length prefix lets both ends copy a payload straight into
place. The lengths are known before the bytes are sent (Postgres gives a
stored value's size without reading it), so the API streams a frame from the
table in chunks without holding it whole.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from typing import Any

MEDIA_TYPE = "application/x-podfn-frames"
LENGTH = struct.Struct(">Q")
PREFIX_BYTES = LENGTH.size


class FramingError(ValueError):
    """A body that is not a complete sequence of frames (cut short, or not framed)."""


def prefix(length: int) -> bytes:
    """The length prefix of a frame of `length` bytes."""
    return LENGTH.pack(length)


def encode(header: dict[str, Any], payloads: Iterable[bytes]) -> Iterator[bytes]:
    """A whole framed body in pieces: the JSON header, then each payload."""
    head = json.dumps(header).encode()
    yield prefix(len(head)) + head
    for payload in payloads:
        yield prefix(len(payload))
        if payload:
            yield payload


def decode(pieces: Iterable[bytes]) -> list[bytearray]:
    """The frames of a body that arrives in `pieces` of any size.

    Each frame is filled in place in a buffer of its announced length, so a
    payload is copied once on its way from the socket to the unpickler.
    """
    frames: list[bytearray] = []
    pending = bytearray()  # a length prefix split across pieces
    current: bytearray | None = None
    view: memoryview | None = None
    filled = 0
    for piece in pieces:
        data = memoryview(piece)
        while data:
            if current is None:
                need = PREFIX_BYTES - len(pending)
                pending += data[:need]
                data = data[need:]
                if len(pending) < PREFIX_BYTES:
                    break
                (length,) = LENGTH.unpack(pending)
                pending.clear()
                current, filled = bytearray(length), 0
                view = memoryview(current)
                if length == 0:
                    frames.append(current)
                    current = view = None
                continue
            assert view is not None
            take = min(len(data), len(current) - filled)
            view[filled:filled + take] = data[:take]
            filled += take
            data = data[take:]
            if filled == len(current):
                view.release()
                frames.append(current)
                current = view = None
    if current is not None or pending:
        raise FramingError(f"the framed body ends inside frame {len(frames)}")
    if not frames:
        raise FramingError("the framed body is empty (no JSON header)")
    return frames


def header(frames: list[bytearray]) -> dict[str, Any]:
    """Frame 0 as the JSON object it holds."""
    try:
        value = json.loads(bytes(frames[0]))
    except ValueError as exc:
        raise FramingError(f"frame 0 is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise FramingError("frame 0 is not a JSON object")
    return value
