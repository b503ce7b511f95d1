"""Pickling the user's function and arguments so they run where their files do not exist.

cloudpickle pickles `__main__` by value but other modules by reference, which
would make a pod import the user's `helpers.py`. Every module loaded from the
user's own files (not the standard library, not an installed distribution)
is therefore registered to be pickled by value.
"""

from __future__ import annotations

import functools
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

_registered: set[str] = set()
_OWN = frozenset({"podfn", "podfn_platform", "podfn_runtime"})


@functools.cache
def _installed_top_levels() -> frozenset[str]:
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
    for name, module in list(sys.modules.items()):
        if name in _registered or not isinstance(module, ModuleType):
            continue
        _registered.add(name)
        if is_user_module(module):
            cloudpickle.register_pickle_by_value(module)


def dumps(obj: Any) -> bytes:
    _register_user_modules()
    data: bytes = cloudpickle.dumps(obj)
    return data


def loads(data: bytes) -> Any:
    return cloudpickle.loads(data)


def client_versions() -> dict[str, str]:
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}",
        "cloudpickle": cloudpickle.__version__,
    }
