"""CPU per call of a warm map, by process: where the work of one call goes.

    python benchmarks/warm_cpu.py [COUNT]

Starts the embedded stack (DevStack, local launcher), warms a pool of the
identity function with `max_calls_per_worker=None`, then reads utime + stime
of every process of the stack from /proc/<pid>/stat (the client, the API,
the controller, the forkserver and the workers it forked, and every
Postgres backend) before and after one map of COUNT calls, and prints the
difference per call, with the map's wall time and its HTTP requests. CPU
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

from podfn import remote
from podfn.http import APIClient
from podfn.settings import Settings
from podfn_platform.dev import DevStack, free_port

TICKS = os.sysconf("SC_CLK_TCK")


def identity(x: int) -> int:
    return x


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(parent, name, CPU seconds) of `pid`, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        with open(f"/proc/{pid}/cmdline") as f:
            cmdline = f.read().replace("\0", " ").strip()
    except OSError:
        return None
    name, rest = text.split("(", 1)[1].rsplit(")", 1)
    fields = rest.split()
    label = cmdline if name != "postgres" else cmdline.split(" idle")[0]
    return int(fields[1]), label[:70], (int(fields[11]) + int(fields[12])) / TICKS


def cpu_by_process(roots: list[int]) -> dict[int, tuple[str, float]]:
    """Every process under `roots` (the roots included): pid -> (label, CPU seconds)."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit()
             if (s := _stat(int(p))) is not None}
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (parent, _, _) in stats.items():
        children[parent].append(pid)
    found: dict[int, tuple[str, float]] = {}
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in found:
            found[pid] = stats[pid][1:]
            todo += children[pid]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int, nargs="?", default=1000,
                        help="calls in the measured map (default 1000)")
    count = parser.parse_args().count
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
        assert list(fn.map(range(count))) == list(range(count))
        wall = time.perf_counter() - started
        time.sleep(0.3)  # let the last statements' CPU show in /proc
        after = cpu_by_process(roots)
    spent: collections.Counter[str] = collections.Counter()
    for pid, (label, cpu) in after.items():
        spent[label] += cpu - before.get(pid, (label, 0.0))[1]
    print(f"map of {count}: {wall:.3f} s, {count / wall:.0f} calls/s, "
          f"requests {dict(requests)}, load {os.getloadavg()[0]:.1f}")
    for label, cpu in spent.most_common():
        if cpu > 0:
            print(f"{cpu * 1000 / count:7.3f} ms/call  {label}")
    print(f"{sum(spent.values()) * 1000 / count:7.3f} ms/call  total")


if __name__ == "__main__":
    main()
