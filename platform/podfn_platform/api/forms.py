"""Reading the multipart submissions clients send: a JSON `meta` part and opaque byte parts.

The byte parts are pickles made by the client; they are read as bytes and
stored as bytes, never loaded here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import request

from podfn_platform.api import inputs
from podfn_platform.api.errors import APIError

MAX_CALLS_PER_REQUEST = 10_000


def meta() -> dict[str, Any]:
    raw = request.form.get("meta")
    if raw is None:
        raise APIError(400, "missing_field", "the form field 'meta' (JSON) is required",
                       field="meta")
    value = inputs.loads(raw, "meta")
    if not isinstance(value, dict):
        raise APIError(400, "malformed_json", "'meta' must be a JSON object", field="meta")
    return value


def name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise APIError(422, "invalid_field", f"{field} must be a non-empty string of at most 256 "
                       "characters", field=f"meta.{field}")
    return inputs.text(value, f"meta.{field}")


def client_versions(meta: dict[str, Any]) -> tuple[str, str]:
    client = meta.get("client")
    if not (isinstance(client, dict) and isinstance(client.get("python"), str)
            and isinstance(client.get("cloudpickle"), str)):
        raise APIError(422, "invalid_field", "client must be {'python': VERSION, "
                       "'cloudpickle': VERSION}", field="meta.client")
    return client["python"], client["cloudpickle"]


def function_part() -> bytes:
    part = request.files.get("function")
    if part is None:
        raise APIError(400, "missing_field", "the file part 'function' (the pickled function) "
                       "is required", field="function")
    data: bytes = part.read()
    return data


def args_parts() -> list[bytes]:
    parts = request.files.getlist("args")
    if not parts:
        raise APIError(400, "missing_field", "at least one file part 'args' (pickled (args, "
                       "kwargs)) is required", field="args")
    if len(parts) > MAX_CALLS_PER_REQUEST:
        raise APIError(422, "too_many_calls", f"at most {MAX_CALLS_PER_REQUEST} calls per "
                       "request", field="args")
    return [p.read() for p in parts]


def fingerprint(*pieces: Any) -> str:
    """A hash of a request's meaning (not its bytes: multipart boundaries differ)."""
    h = hashlib.sha256()
    for piece in pieces:
        data = piece if isinstance(piece, bytes) else json.dumps(piece, sort_keys=True).encode()
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()
