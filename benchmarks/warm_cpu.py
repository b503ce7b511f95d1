"""CPU per call of a warm map, by process: where the work of one call goes.

    python benchmarks/warm_cpu.py [COUNT] [--sequential]

Starts the embedded stack (DevStack, local launcher), warms a pool of the
identity function with `max_calls_per_worker=None`, then reads utime + stime
of every process of the stack from /proc/<pid>/stat (the client, the API,
the controller, the forkserver and the workers it forked, and every
Postgres backend) before and after one map of COUNT calls, and prints the
difference per call, with the map's wall time and its HTTP requests
(`--sequential`: COUNT `.remote` calls one after another instead, the
shape of the warm call's p50). CPU
time is what a loaded machine cannot hide: compare its rows across commits,
not the wall time.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cpu_per_call import _cmdline, _descendants, _stat

from podfn import remote
from podfn.http import APIClient
from podfn.settings import Settings
from podfn_platform.dev import DevStack, free_port


def identity(x: int) -> int:
    return x


def cpu_by_process(roots: list[int]) -> dict[int, tuple[str, float]]:
    """Every process under `roots` (the roots included): pid -> (label, CPU seconds)."""
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (got := _stat(int(entry))) is not None:
            parents[int(entry)], cpu[int(entry)] = got[0], got[1]
    mine = set(roots).union(*(_descendants(root, parents) for root in roots)) & cpu.keys()
    return {pid: (_label(pid), cpu[pid]) for pid in mine}


def _label(pid: int) -> str:
    """Its command line; a Postgres backend's without its state (idle, ...)."""
    cmdline = _cmdline(pid)
    return (cmdline.split(" idle")[0] if cmdline.startswith("postgres:") else cmdline)[:70]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int, nargs="?", default=1000,
                        help="calls in the measured map (default 1000)")
    parser.add_argument("--sequential", action="store_true",
                        help="COUNT sequential `.remote` calls instead of one map")
    args = parser.parse_args()
    count = args.count
    workdir = Path(tempfile.mkdtemp(prefix="podfn-warm-cpu-"))
    os.chmod(workdir, 0o755)
    fn = remote(identity, max_calls_per_worker=None, idle_timeout=600)
    with DevStack(Settings.from_env(), workdir, free_port(), temporary=True).start(
            quiet=True) as stack:
        os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"] = stack.url, stack.token
        for i in range(3):
            fn.remote(i)
        list(fn.map(range(20)))  # the pool's workers up
        requests: collections.Counter[str] = collections.Counter()
        for method in ("_submit_once", "wait"):  # every submission, every wait
            original = getattr(APIClient, method)

            def counted(self: APIClient, *args: Any, _name: str = method,
                        _original: Any = original, **kwargs: Any) -> Any:
                requests[_name] += 1
                return _original(self, *args, **kwargs)
            setattr(APIClient, method, counted)
        roots = [os.getpid()] + ([stack._postgres.pid] if stack._postgres
                                 and stack._postgres.pid else [])
        before = cpu_by_process(roots)
        started = time.perf_counter()
        if args.sequential:
            assert [fn.remote(i) for i in range(count)] == list(range(count))
        else:
            assert list(fn.map(range(count))) == list(range(count))
        wall = time.perf_counter() - started
        time.sleep(0.3)  # let the last statements' CPU show in /proc
        after = cpu_by_process(roots)
    spent: collections.Counter[str] = collections.Counter()
    for pid, (label, cpu) in after.items():
        spent[label] += cpu - before.get(pid, (label, 0.0))[1]
    shape = f"{count} sequential calls" if args.sequential else f"map of {count}"
    print(f"{shape}: {wall:.3f} s, {count / wall:.0f} calls/s, "
          f"requests {dict(requests)}, load {os.getloadavg()[0]:.1f}")
    for label, cpu in spent.most_common():
        if cpu > 0:
            print(f"{cpu * 1000 / count:7.3f} ms/call  {label}")
    print(f"{sum(spent.values()) * 1000 / count:7.3f} ms/call  total")


if __name__ == "__main__":
    main()
