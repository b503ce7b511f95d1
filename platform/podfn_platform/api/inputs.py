"""Text from clients, checked before it goes anywhere: 4xx for what Postgres or JSON would choke on.

Postgres text cannot hold NUL, and UTF-8 cannot hold a lone surrogate (JSON
`"\\ud800"` decodes to one); deeply nested JSON exhausts Python's recursion.
Left to the database or the encoder, each is a 500; here each is a 400 that
names the field. Every path and query parameter is checked on the way in
(`install`), and every JSON body is read through `json_body`.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, request

from podfn_platform.api.errors import APIError

MAX_DEPTH = 64


def bad_text(value: str, *, allow_nul: bool = False) -> str | None:
    """Why `value` cannot be stored as text, or None."""
    if "\x00" in value and not allow_nul:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode text)"
    return None


def text(value: str, field: str, *, allow_nul: bool = False) -> str:
    problem = bad_text(value, allow_nul=allow_nul)
    if problem:
        raise APIError(400, "invalid_text", f"{field} {problem}; send valid UTF-8 text",
                       field=field)
    return value


def check_tree(value: Any, field: str, *, allow_nul: bool = False) -> Any:
    """Every string (and key) in a decoded JSON value is storable, and it is not too deep.

    `allow_nul` is for values that are never stored as text (an invoke's
    arguments are pickled, a bytes column); lone surrogates are refused always.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise APIError(400, "too_deep", f"{field} is nested deeper than {MAX_DEPTH} levels",
                           field=field)
        if isinstance(item, str):
            text(item, field, allow_nul=allow_nul)
        elif isinstance(item, dict):
            for key, child in item.items():
                text(key, field, allow_nul=allow_nul)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return value


def loads(raw: str | bytes, field: str) -> Any:
    """JSON text decoded and checked; 400 naming `field` when it is not acceptable."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise APIError(400, "too_deep", f"{field} is nested too deeply", field=field) from None
    except ValueError as exc:
        raise APIError(400, "malformed_json", f"{field} is not JSON: {exc}", field=field) from None
    return check_tree(value, field)


def json_body(*, allow_nul: bool = False) -> Any:
    """The request's JSON body (None when there is none or it is not JSON), checked."""
    if not request.is_json:
        return None
    raw = request.get_data(cache=True)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except RecursionError:
        raise APIError(400, "too_deep", "the body is nested too deeply", field="body") from None
    except ValueError:
        return None
    return check_tree(value, "body", allow_nul=allow_nul)


def install(app: Flask) -> None:
    """Check every path and query parameter of every request before any view sees it."""

    @app.before_request
    def _check_parameters() -> None:
        for key, value in (request.view_args or {}).items():
            if isinstance(value, str):
                text(value, key)
        for key, value in request.args.items(multi=True):
            text(key, "query parameter")
            text(value, key)
