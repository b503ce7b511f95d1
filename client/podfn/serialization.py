"""Pickling the user's function and arguments so they run where their files do not exist.

cloudpickle pickles `__main__` by value but other modules by reference, which
would make a pod import the user's `helpers.py`. Every module loaded from the
user's own files (not the standard library, not an installed distribution)
is therefore registered to be pickled by value.

Code pickled by value keeps the client's file name and carries its file's
source text (see podfn_runtime/sources.py), so a remote traceback shows the
user's file, line and source line where that file does not exist. The text
travels once per file and payload, only for files whose code is pickled by
value, and is capped (MAX_SOURCE_BYTES) so a generated giant module costs
source lines, not megabytes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import linecache
import sys
import sysconfig
import types
from collections import ChainMap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

from podfn.errors import Unpicklable
from podfn_runtime.sources import restore_code

_registered: set[str] = set()
_OWN = frozenset({"podfn", "podfn_platform", "podfn_runtime"})
# Files larger than this travel without their text (tracebacks keep file and line).
MAX_SOURCE_BYTES = 1 << 20


@functools.cache
def _installed_top_levels() -> frozenset[str]:
    from importlib import metadata  # slow to import; needed only at the first pickling

    return frozenset(metadata.packages_distributions())


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return tuple(str(Path(d).resolve()) for d in dirs)


def is_user_module(module: ModuleType) -> bool:
    """True for modules from the user's own files, which a pod will not have."""
    name = module.__name__
    top = name.partition(".")[0]
    filename = getattr(module, "__file__", None)
    if name == "__main__" or not filename or top in _OWN:
        return False
    if top in sys.stdlib_module_names or top in _installed_top_levels():
        return False
    resolved = str(Path(filename).resolve())
    return not resolved.startswith(_library_dirs())


def _register_user_modules() -> None:
    # Only the modules imported since the last look: the set difference runs in C,
    # where a loop over every module in Python cost ~0.1 ms of each call's pickling
    # in a process with a thousand modules.
    for name in sys.modules.keys() - _registered:
        module = sys.modules.get(name)
        _registered.add(name)
        if isinstance(module, ModuleType) and is_user_module(module):
            cloudpickle.register_pickle_by_value(module)


class _SourcePickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle has no hints
    """cloudpickle's pickler, with code objects that keep their file name and carry its text."""

    def __init__(self, file: io.BytesIO) -> None:
        self._sources: dict[str, tuple[str, ...] | None] = {}
        # Set before the base initializer: the C pickler reads its dispatch table there.
        self.dispatch_table = ChainMap({types.CodeType: self._reduce_code},
                                       cloudpickle.Pickler.dispatch_table)
        super().__init__(file, protocol=cloudpickle.DEFAULT_PROTOCOL)

    def _source(self, filename: str) -> tuple[str, ...] | None:
        """The file's lines, one shared tuple per file (pickled once, then memoized)."""
        if filename not in self._sources:
            lines = linecache.getlines(filename)
            too_big = sum(map(len, lines)) > MAX_SOURCE_BYTES
            self._sources[filename] = tuple(lines) if lines and not too_big else None
        return self._sources[filename]

    def _reduce_code(self, code: types.CodeType) -> tuple[Any, ...]:
        constructor, args = cloudpickle.Pickler.dispatch_table[types.CodeType](code)
        return restore_code, (constructor, args, code.co_filename, self._source(code.co_filename))


def _pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _SourcePickler(buffer).dump(obj)
    return buffer.getvalue()


def dumps(obj: Any) -> bytes:
    """Pickle a function, or a call's `(args, kwargs)`; an Unpicklable error names what
    could not be pickled (the global, closure variable or argument), not just its type."""
    _register_user_modules()
    try:
        return _pickle(obj)
    except Exception as exc:
        raise Unpicklable(_explain(obj, exc)) from exc


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"


def _problem(value: Any) -> str | None:
    """Why `value` cannot be pickled, or None if it can."""
    try:
        _pickle(value)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _global_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_names(const)


def _culprits(fn: types.FunctionType, path: str, seen: set[int]) -> Iterator[str]:
    """'the global `lock` (a _thread.lock): why' for each unpicklable value `fn` uses,
    following the user's own functions it calls."""
    if id(fn) in seen:
        return
    seen.add(id(fn))
    used: list[tuple[str, Any]] = []
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        with contextlib.suppress(ValueError):  # an empty cell
            used.append((f"closure variable `{name}`", cell.cell_contents))
    for name in dict.fromkeys(_global_names(fn.__code__)):
        if name in fn.__globals__:
            used.append((f"global `{name}`", fn.__globals__[name]))
    for label, value in used:
        if isinstance(value, types.ModuleType):
            continue
        if isinstance(value, types.FunctionType):
            yield from _culprits(value, f"{path} -> {value.__qualname__}", seen)
            continue
        why = _problem(value)
        if why is not None:
            yield f"{path} uses the {label} (a {_type_name(value)}): {why}"


def _explain(obj: Any, exc: Exception) -> str:
    if isinstance(obj, types.FunctionType):
        found = list(_culprits(obj, obj.__qualname__, set()))
        if found:
            return (f"cannot pickle the function {obj.__qualname__} to send it to the platform: "
                    + "; ".join(found) + ". Create such objects inside the function, or pass "
                    "what it needs to build them (a path, a URL, settings) as arguments")
        return (f"cannot pickle the function {obj.__qualname__} to send it to the platform: "
                f"{type(exc).__name__}: {exc}")
    if (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], tuple)
            and isinstance(obj[1], dict)):
        named = [(f"argument {i}", v) for i, v in enumerate(obj[0])]
        named += [(f"keyword argument `{k}`", v) for k, v in obj[1].items()]
        found = [f"{label} (a {_type_name(v)}): {why}" for label, v in named
                 if (why := _problem(v)) is not None]
        if found:
            return ("cannot pickle the call's arguments to send them to the platform: "
                    + "; ".join(found) + ". Pass plain data (or a reference to it) instead")
    return f"cannot pickle {type(obj).__qualname__} for the platform: {type(exc).__name__}: {exc}"


def loads(data: bytes) -> Any:
    return cloudpickle.loads(data)


def client_versions() -> dict[str, str]:
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}",
        "cloudpickle": cloudpickle.__version__,
    }
