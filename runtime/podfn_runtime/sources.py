"""Source text of the user's code, carried inside the payload, for tracebacks where the files are not.

A function pickled by value runs where its file does not exist (a pod, a
machine without the user's checkout), so a traceback there would have no
source lines; and cloudpickle 3.1.3 and later also replace every code
object's `co_filename` with "<dynamic-code>", so it would not even name the
file. The client's pickler therefore reduces each code object to a call of
`restore_code` below, which rebuilds it with the client's own file name and
registers the file's text with `linecache`: `traceback` then prints file,
line, function and source line as on the client, with no file on disk.

This module lives in the runtime package because the runtime must import it
to load a payload; the client distribution ships it too.
"""

from __future__ import annotations

import linecache
import types
from collections.abc import Callable, Sequence
from typing import Any


def register(filename: str, lines: Sequence[str]) -> None:
    """Make `linecache` serve `lines` for `filename` (mtime None: never re-read from disk)."""
    text_lines = list(lines)
    linecache.cache[filename] = (sum(map(len, text_lines)), None, text_lines, filename)


def restore_code(constructor: Callable[..., types.CodeType], args: tuple[Any, ...],
                 filename: str, lines: Sequence[str] | None) -> types.CodeType:
    """Rebuild a code object pickled by the client, under its original file name."""
    code = constructor(*args)
    if code.co_filename != filename:
        code = code.replace(co_filename=filename)
    if lines:
        register(filename, lines)
    return code
