"""Schemathesis hooks (SCHEMATHESIS_HOOKS=schemathesis_frames): bodies for the framed
submissions (`application/x-podfn-frames`, podfn/frames.py).

The document can only call a framed body binary, so schemathesis would send noise
that its own checks then expect to be accepted. Here each framed operation gets
well-formed frames holding the fields it documents for multipart (a meta of the
operation's own model, the function, one to three arguments: random bytes, never
unpickled by the API), so the positive checks hold, and the API's reading of frames
is fuzzed with the rest of the request (query, headers, names, stateful links).
Malformed frames are tests/test_api.py's (test_bad_framed_submissions_...).
"""

from __future__ import annotations

import platform as _python_platform
from typing import Any

import cloudpickle
import schemathesis
from hypothesis import strategies as st

from podfn import frames

_CLIENT = {"python": _python_platform.python_version(), "cloudpickle": cloudpickle.__version__}
_SPECS: st.SearchStrategy[dict[str, Any]] = st.sampled_from(
    [{}, {"cpu": "1"}, {"memory": "64Mi", "timeout": 30}])
_NAMES = st.from_regex(r"[a-z][a-z0-9_.]{0,15}", fullmatch=True)
_PAYLOADS = st.lists(st.binary(min_size=1, max_size=48), min_size=1, max_size=3)
Seed = tuple[str, dict[str, Any], bytes, list[bytes]]
_SEEDS: dict[bytes, Seed] = {}


def _remember(seed: Seed) -> bytes:
    """The drawn seed, kept under a token that stands for the body until it is sent."""
    token = repr(seed).encode()
    _SEEDS[token] = seed
    return token


schemathesis.openapi.media_type(
    frames.MEDIA_TYPE,
    st.tuples(_NAMES, _SPECS, st.binary(min_size=1, max_size=48), _PAYLOADS).map(_remember))


def _body(meta: dict[str, Any], parts: list[tuple[str, bytes]]) -> bytes:
    header = {"meta": meta, "parts": [name for name, _ in parts]}
    return b"".join(frames.encode(header, [data for _, data in parts]))


@schemathesis.serializer(frames.MEDIA_TYPE)
def framed_body(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """A framed case's body, made at send time for its operation from the seed the
    media type's strategy drew. Anything else (a value schemathesis made up to be
    refused) goes as it is, and the API must refuse it."""
    seed = _SEEDS.get(value) if isinstance(value, bytes) else None
    if seed is None:
        return value if isinstance(value, bytes) else repr(value).encode()
    name, spec, function, args = seed
    path = ctx.case.operation.path
    if path == "/v1/calls":
        meta = {"function_name": name, "spec": spec, "client": _CLIENT}
        return _body(meta, [("function", function), *(("args", a) for a in args)])
    if path == "/v1/functions":
        return _body({"name": name, "spec": spec, "client": _CLIENT}, [("function", function)])
    return _body({"spec": spec, "client": _CLIENT}, [("args", a) for a in args])
