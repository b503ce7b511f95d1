"""`podfn deploy | functions | rollback`: deployed functions and their versions."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import click

from podfn.cli.calls import mebibytes, seconds
from podfn.cli.support import (
    api,
    output_option,
    print_json,
    print_table,
    reports_errors,
    with_exit_codes,
)
from podfn.errors import ConfigurationError
from podfn.function import Function


def load_functions(path: Path) -> list[Function[..., object]]:
    """Import `path` as a module and return its @remote functions."""
    module_name = path.stem.replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigurationError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.pop(0)
    found = [v for v in vars(module).values() if isinstance(v, Function)]
    if not found:
        raise ConfigurationError(f"{path} defines no @remote functions to deploy")
    return found


@click.command("deploy")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@output_option
@reports_errors
def deploy_(file: Path, output: str) -> None:
    """Deploy every @remote function in FILE; each changed function becomes a new live version.

    The name is the function's own, or @remote(name=...). Functions are
    pickled by value, so the platform does not need FILE. A function whose
    code and hints equal its live version's is left as it is.

    \b
    Example: podfn deploy app.py
    """
    results = [fn.deploy() for fn in load_functions(file)]
    if output == "json":
        print_json(results)
        return
    for r in results:
        if r.get("unchanged"):
            click.echo(f"{r['name']} is unchanged: version {r['version']} stays live "
                       "(nothing deployed)")
        else:
            click.echo(f"deployed {r['name']} version {r['version']} (live)")


@click.command("functions")
@click.option("--usage", is_flag=True,
              help="what calls really used (median and p95) vs the cpu and memory hints, with "
                   "right-sized hints")
@click.option("--last", type=click.IntRange(1, 10_000), default=100, show_default=True,
              help="with --usage: how many recent finished calls of each function")
@output_option
@reports_errors
def functions_(usage: bool, last: int, output: str) -> None:
    """List deployed functions: live version, hints, when and by whom.

    \b
    Example: podfn functions --output json
             podfn functions --usage --last 50
    """
    if usage:
        _usage(last, output)
        return
    rows = api().functions()
    if output == "json":
        print_json(rows)
        return
    hints = ("cpu", "memory", "gpu", "timeout", "retries", "image")
    print_table([(f["name"], f["live_version"], f["latest_version"],
                  " ".join(f"{k}={f['spec'][k]}" for k in hints if f["spec"].get(k)),
                  f["deployed_at"], f["deployed_by"]) for f in rows],
                ["name", "live", "latest", "hints", "deployed", "by"])


def _usage(last: int, output: str) -> None:
    rows = api().usage(last)
    if output == "json":
        print_json(rows)
        return

    def pair(values: dict[str, float | None], show: Callable[[float | None], str]) -> str:
        return f"{show(values['p50'])} / {show(values['p95'])}" if values["p50"] is not None else ""

    print_table([(u["function"], u["calls"], pair(u["peak_bytes"], mebibytes),
                  pair(u["cpu_seconds"], seconds), pair(u["wall_seconds"], seconds),
                  u["hints"]["memory"] or "", u["hints"]["cpu"] or "",
                  (u["suggested"] or {}).get("memory", ""), (u["suggested"] or {}).get("cpu", ""))
                 for u in rows],
                ["function", "calls", "peak mem p50/p95", "cpu s p50/p95", "wall s p50/p95",
                 "memory hint", "cpu hint", "suggest memory", "suggest cpu"])


@click.command("rollback")
@click.argument("name")
@click.option("--to", "version", type=click.IntRange(1), default=None,
              help="the version to make live (default: the one before the live one)")
@output_option
@reports_errors
def rollback_(name: str, version: int | None, output: str) -> None:
    """Make an older version of a deployed function live again.

    \b
    Example: podfn rollback add --to 3
    """
    result = api().rollback(name, version)
    if output == "json":
        print_json(result)
        return
    click.echo(f"{name}: version {result['live_version']} is live "
               f"(was {result['previous_version']})")


COMMANDS = [deploy_, functions_, rollback_]
for _command in COMMANDS:
    _command.help = with_exit_codes(_command.help)
