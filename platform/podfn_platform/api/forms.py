"""The byte parts of the submissions clients send, and how the document names them.

A submission comes as multipart/form-data (the `meta` JSON part and the byte
parts) or, from the Python client, as a framed body (podfn/frames.py, media
type `application/x-podfn-frames`): frame 0 is `{"meta": {...}, "parts":
["function", "args", ...]}`, naming each following frame's field. Why frames:
werkzeug's multipart parser searches every byte of a payload for the boundary
in Python (a quarter of a 1 MB submission's time in the API, a second for 100
MB); a length prefix lets the body be read straight into place. The `meta` is
read by api/contract.py (`form_meta`) through its model in api/schemas.py,
like any JSON body; the byte parts are pickles made by the client, read as
bytes and stored as bytes, never loaded here.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import IO, Any

import flask
from flask import current_app, g, request
from pydantic import BaseModel
from werkzeug.exceptions import RequestEntityTooLarge

from podfn import frames
from podfn_platform.api import inputs, schemas
from podfn_platform.api.errors import APIError
from podfn_platform.submission import Payload

MAX_CALLS_PER_REQUEST = schemas.MAX_CALLS_PER_REQUEST

BINARY = {"type": "string", "format": "binary"}
FUNCTION_PART = {**BINARY, "description": "the cloudpickled function (never unpickled by the API)"}
ARGS_PART = {"type": "array", "minItems": 1, "maxItems": MAX_CALLS_PER_REQUEST, "items": BINARY,
             "description": "one cloudpickled (args, kwargs) per call"}
SUBMIT_FORM = {"meta": schemas.SubmitMeta, "function": FUNCTION_PART, "args": ARGS_PART}
DEPLOY_FORM = {"meta": schemas.DeployMeta, "function": FUNCTION_PART}
DEPLOYED_CALLS_FORM = {"meta": schemas.DeployedCallsMeta, "args": ARGS_PART}
IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
               "schema": {"type": "string", "minLength": 1, "maxLength": 200,
                          "pattern": r"^[!-~]+$"},
               "description": "the same key with the same body returns the original calls"}
SUBMIT_WAIT = {"name": "wait", "in": "query", "required": False,
               "schema": {"type": "number", "minimum": 0},
               "description": "seconds to wait (capped by the server) for one of the calls to "
                              "finish: the answer then lists in `finished` those that did, as "
                              "`POST /v1/calls/wait` would (with Accept: "
                              "application/x-podfn-frames, as frames)"}
WAIT = {"name": "wait", "in": "query", "required": False,
        "schema": {"type": "number", "minimum": 0},
        "description": "seconds to wait for the call to finish (capped by the server)"}


PART_FIELDS = ("function", "args")
# A framed body is read in steps of this size, each straight into its frame: gunicorn
# copies each step a few times in its buffers, which stay in the CPU's cache at this
# size (a 100 MB body over a socket pair: ~30 ms in 256 KiB steps, ~90 ms in 1 MiB ones).
READ_STEP = 256 * 1024


class Request(flask.Request):
    """The API's request: file parts are parsed into memory, not spooled to disk.

    Werkzeug writes a part of a body over 500 KB to a temporary file, which the
    view then reads whole anyway (a payload is stored as one bytea): a disk
    write and read of every large argument for nothing. The body is bounded by
    PODFN_MAX_REQUEST_BYTES either way, and `args_parts` takes the buffer's bytes
    without another copy.
    """

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None,
                         content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()


def is_framed() -> bool:
    return request.mimetype == frames.MEDIA_TYPE


def _frame_error(message: str) -> APIError:
    return APIError(400, "malformed_frames", f"the framed body {message} (see "
                    "docs/api-contract.md, \"Framed bodies\")", field="body")


def _read_frame(stream: IO[bytes], length: int, index: int, *,
                hashed: bool = False) -> bytearray:
    """`length` bytes of the body in a buffer of their own, read into it in place;
    `hashed`: and their sha256 taken step by step as they arrive (`_sha256`)."""
    buffer = bytearray(length)
    view = memoryview(buffer)
    h = hashlib.sha256() if hashed else None
    filled = 0
    while filled < length:
        got = stream.readinto(view[filled:filled + READ_STEP])  # type: ignore[attr-defined]
        if not got:
            view.release()
            raise _frame_error(f"ends inside frame {index}")
        if h is not None:
            h.update(view[filled:filled + got])
        filled += got
    view.release()
    if h is not None:
        digests: dict[int, tuple[bytearray, bytes]] = g.setdefault("podfn_digests", {})
        digests[id(buffer)] = (buffer, h.digest())
    return buffer


def framed() -> tuple[dict[str, Any], dict[str, list[Payload]]]:
    """A framed submission read whole (once per request): its `meta` and its byte parts
    by field.

    Each frame's announced length is checked against what the body can still
    hold before a buffer is made for it: a short body with a huge length
    prefix is a 400 (or a 413 past PODFN_MAX_REQUEST_BYTES), never a large
    allocation.
    """
    cached: tuple[dict[str, Any], dict[str, list[Payload]]] | None = g.get("podfn_framed")
    if cached is not None:
        return cached
    stream = request.stream
    limit: int = request.content_length if request.content_length is not None \
        else current_app.config["MAX_CONTENT_LENGTH"]
    left = limit
    found: list[bytearray] = []
    parts: list[str] | None = None
    while parts is None or len(found) <= len(parts):
        index = len(found)
        if left < frames.PREFIX_BYTES:
            if parts is None:
                raise _frame_error("has no JSON header (frame 0)")
            raise _frame_error(f"ends before frame {index} of the {len(parts)} its header names")
        (length,) = frames.LENGTH.unpack(_read_frame(stream, frames.PREFIX_BYTES, index))
        left -= frames.PREFIX_BYTES
        if length > left:
            if request.content_length is None:
                raise RequestEntityTooLarge()
            raise _frame_error(f"announces {length} bytes for frame {index} but has {left} left")
        found.append(_read_frame(stream, length, index, hashed=parts is not None))
        left -= length
        if parts is None:
            head = inputs.loads(bytes(found[0]), "frame 0")
            if not isinstance(head, dict) or not isinstance(head.get("meta"), dict) \
                    or not isinstance(head.get("parts"), list) \
                    or not all(p in PART_FIELDS for p in head["parts"]):
                raise _frame_error("needs frame 0 to be a JSON object with `meta` (an object) "
                                   f"and `parts` (a list of {' or '.join(PART_FIELDS)})")
            parts = head["parts"]
            if len(parts) > MAX_CALLS_PER_REQUEST + 1:
                raise APIError(422, "too_many_calls", f"at most {MAX_CALLS_PER_REQUEST} calls "
                               "per request", field="args")
    if request.content_length is not None and left:
        raise _frame_error(f"has {left} bytes past its last frame")
    by_field: dict[str, list[Payload]] = {field: [] for field in PART_FIELDS}
    for field, payload in zip(parts, found[1:], strict=True):
        by_field[field].append(payload)
    g.podfn_framed = result = (head["meta"], by_field)
    return result


def meta_json() -> Any:
    """The `meta` of a framed submission, as decoded JSON (checked by api/inputs.py)."""
    return framed()[0]


def _bytes(part: Any) -> bytes:
    stream = part.stream
    if isinstance(stream, io.BytesIO):
        return stream.getvalue()  # the buffer's own bytes, not a copy
    data: bytes = part.read()
    return data


def spec(value: BaseModel | None) -> dict[str, Any]:
    """The hints as sent (podfn.spec fills defaults and checks them)."""
    return value.model_dump(exclude_unset=True) if value is not None else {}


def function_part() -> Payload:
    if is_framed():
        sent = framed()[1]["function"]
        if len(sent) != 1:
            raise APIError(400, "missing_field", "exactly one frame of the part 'function' (the "
                           f"pickled function) is required, not {len(sent)}", field="function")
        return sent[0]
    part = request.files.get("function")
    if part is None:
        raise APIError(400, "missing_field", "the file part 'function' (the pickled function) "
                       "is required", field="function")
    return _bytes(part)


def args_parts() -> list[Payload]:
    parts: list[Any] = framed()[1]["args"] if is_framed() else request.files.getlist("args")
    if not parts:
        raise APIError(400, "missing_field", "at least one file part 'args' (pickled (args, "
                       "kwargs)) is required", field="args")
    if len(parts) > MAX_CALLS_PER_REQUEST:
        raise APIError(422, "too_many_calls", f"at most {MAX_CALLS_PER_REQUEST} calls per "
                       "request", field="args")
    return [p if isinstance(p, bytearray) else _bytes(p) for p in parts]


def _sha256(data: bytes | bytearray) -> bytes:
    """sha256 of `data`; for a frame of this request's framed body, the one taken while
    it was read (issue 12, fourth round: a 100 MB argument was hashed again whole,
    ~0.1 s, after its bytes had gone through the CPU's cache once already)."""
    known: dict[int, tuple[bytearray, bytes]] | None = \
        g.get("podfn_digests") if flask.has_request_context() else None
    entry = known.get(id(data)) if known else None
    if entry is not None and entry[0] is data:
        return entry[1]
    return hashlib.sha256(data).digest()


def payload_digest(data: Payload) -> str:
    """A payload's content address (submission.digest), from `_sha256`."""
    return _sha256(data).hex()


def fingerprint(*pieces: Any) -> str:
    """A hash of a request's meaning (not its bytes: multipart boundaries differ)."""
    h = hashlib.sha256()
    for piece in pieces:
        data = piece if isinstance(piece, (bytes, bytearray)) \
            else json.dumps(piece, sort_keys=True).encode()
        h.update(_sha256(data))
    return h.hexdigest()
