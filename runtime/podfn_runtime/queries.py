"""Named SQL queries kept in `.sql` files shipped as package data.

A file holds several statements, each introduced by a `-- name: NAME` line,
so the SQL stays SQL (reviewable, highlightable) and code refers to it by
name. The runtime's own file, protocol.sql, holds its only statements: calls
of the runtime protocol's functions (the platform's migration 0003 defines
them, and the platform loads its own state machine with the same parser).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split `text` into {name: statement} at each `-- name:` line."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        statement = body.strip().rstrip(";").strip()
        queries[name] = statement
    return queries


def load(package: str, filename: str) -> dict[str, str]:
    """Read and parse `filename` from `package`'s data."""
    return parse(resources.files(package).joinpath(filename).read_text(encoding="utf-8"))


@functools.cache
def _protocol() -> tuple[tuple[str, str], ...]:
    return tuple(load("podfn_runtime", "protocol.sql").items())


def protocol() -> dict[str, str]:
    """The runtime protocol: every statement the runtime may send to Postgres (read
    once per process image, so the forkserver's children find it parsed)."""
    return dict(_protocol())
