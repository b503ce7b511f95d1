"""The byte parts of the multipart submissions clients send, and how the document names them.

The `meta` part is read by api/contract.py (`form_meta`) through its model in
api/schemas.py, like any JSON body; the byte parts are pickles made by the
client, read as bytes and stored as bytes, never loaded here.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import IO, Any

import flask
from flask import request
from pydantic import BaseModel

from podfn_platform.api import schemas
from podfn_platform.api.errors import APIError

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


def _bytes(part: Any) -> bytes:
    stream = part.stream
    if isinstance(stream, io.BytesIO):
        return stream.getvalue()  # the buffer's own bytes, not a copy
    data: bytes = part.read()
    return data


def spec(value: BaseModel | None) -> dict[str, Any]:
    """The hints as sent (podfn.spec fills defaults and checks them)."""
    return value.model_dump(exclude_unset=True) if value is not None else {}


def function_part() -> bytes:
    part = request.files.get("function")
    if part is None:
        raise APIError(400, "missing_field", "the file part 'function' (the pickled function) "
                       "is required", field="function")
    return _bytes(part)


def args_parts() -> list[bytes]:
    parts = request.files.getlist("args")
    if not parts:
        raise APIError(400, "missing_field", "at least one file part 'args' (pickled (args, "
                       "kwargs)) is required", field="args")
    if len(parts) > MAX_CALLS_PER_REQUEST:
        raise APIError(422, "too_many_calls", f"at most {MAX_CALLS_PER_REQUEST} calls per "
                       "request", field="args")
    return [_bytes(p) for p in parts]


def fingerprint(*pieces: Any) -> str:
    """A hash of a request's meaning (not its bytes: multipart boundaries differ)."""
    h = hashlib.sha256()
    for piece in pieces:
        data = piece if isinstance(piece, bytes) else json.dumps(piece, sort_keys=True).encode()
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()
