"""What every `podfn` command shares: exit codes, error reporting, output formats.

Exit codes:
  0  success
  1  the call failed (or was cancelled, or timed out)
  2  usage error (bad arguments)
  3  the platform or its database cannot be reached
  4  configuration error (settings, profile)
  5  not authorized (no valid token, or a missing scope)
  6  not found (no such call, function or token)
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import click

from podfn.call import default_client
from podfn.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    NotAuthorized,
    NotFound,
    PlatformError,
    PlatformUnreachable,
    PodfnError,
)
from podfn.http import APIClient

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_CONFIG, EXIT_UNAUTHORIZED, EXIT_NOT_FOUND = 4, 5, 6

EXIT_CODES_HELP = """\b
Exit codes: 0 ok, 1 the call failed, 2 usage, 3 cannot reach the platform,
4 configuration, 5 not authorized, 6 not found."""

F = TypeVar("F", bound=Callable[..., Any])


def with_exit_codes(help_text: str | None) -> str:
    """A command's help with the exit codes after it. The docstring is dedented first:
    click dedents help by its common indentation, which the unindented exit-code
    lines would otherwise reduce to nothing, leaving the examples indented twice."""
    return inspect.cleandoc(help_text or "") + "\n\n" + EXIT_CODES_HELP

output_option = click.option("--output", "-o", type=click.Choice(["table", "json"]),
                             default="table", show_default=True, help="output format")


def reports_errors(fn: F) -> F:
    """Turn podfn errors into one line on stderr, what to do next, and an exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (PlatformUnreachable, DatabaseUnavailable) as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        except ConfigurationError as exc:
            fail(str(exc), EXIT_CONFIG)
        except NotAuthorized as exc:
            fail(str(exc), EXIT_UNAUTHORIZED)
        except NotFound as exc:
            # A rollback version that does not exist is the API's 404, but a bad argument here.
            fail(str(exc), EXIT_USAGE if exc.code == "no_such_version" else EXIT_NOT_FOUND)
        except PlatformError as exc:
            # 400/422: the request was wrong (a bad argument, a version that does not
            # exist), which is a usage error whichever side noticed it.
            fail(str(exc), EXIT_USAGE if exc.status in (400, 422) else EXIT_FAILED)
        except PodfnError as exc:
            fail(str(exc), EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def api() -> APIClient:
    return default_client()


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
