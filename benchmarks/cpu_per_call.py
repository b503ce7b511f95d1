"""Where the CPU of a map goes, per call and per kind of process.

    python benchmarks/cpu_per_call.py {cold,warm} COUNT [REPEATS]

Runs a `.map` of COUNT identity calls through the embedded stack (DevStack,
local launcher) REPEATS times (after a warm-up map of 20) and reads every
process's user + system time from /proc/<pid>/stat before and after each
map. A process that started and ended within the map is counted through
the one that reaped it (`cutime` + `cstime`): an attempt's process and its
output tee through the forkserver, an ended Postgres backend through the
postmaster. CPU time does not depend on how loaded the machine is the way
wall-clock time does, so this is the figure to compare on a shared machine.
Prints milliseconds of CPU per call for each group, and the wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from podfn import remote
from podfn.settings import Settings
from podfn_platform.dev import DevStack, free_port

_TICK = os.sysconf("SC_CLK_TCK")


def identity(x: int) -> int:
    return x


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU seconds, reaped children's CPU seconds)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return int(fields[1]), (utime + stime) / _TICK, (cutime + cstime) / _TICK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _group(pid: int, cmd: str, parents: dict[int, int], zygotes: set[int],
           spares: set[int]) -> str:
    if pid == os.getpid():
        return "client (the map)"
    if parents.get(pid) in zygotes:
        if "forkserver" in cmd and pid not in spares:
            return "forkserver's supervisor"
        return "attempts (live: spares, workers)"
    if "forkserver" in cmd:
        return "forkserver (zygote)"
    if cmd.startswith("postgres:"):
        if "podfn_runtime" in cmd or "runtime" in cmd.split()[1]:
            return "Postgres backends, runtime role"
        return "Postgres backends, API + controller"
    if cmd and "postgres" in cmd.split()[0]:
        return "postmaster"
    if "podfn serve" in cmd or "gunicorn" in cmd:
        return "API (gunicorn)"
    if "podfn controller" in cmd:
        return "controller"
    return "other"


def snapshot(postmaster: int | None) -> dict[int, tuple[str, float, float]]:
    stats = {}
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            got = _stat(int(entry))
            if got is not None:
                parents[int(entry)] = got[0]
                stats[int(entry)] = got
    mine = _descendants(os.getpid(), parents) | {os.getpid()}
    if postmaster is not None:  # pg_ctl's server is not our descendant
        mine |= _descendants(postmaster, parents) | {postmaster}
    cmds = {pid: _cmdline(pid) for pid in mine}
    zygotes = {pid for pid, cmd in cmds.items()
               if "forkserver" in cmd and "forkserver" not in cmds.get(parents[pid], "")}
    # A spare waits with a socket to the zygote; the supervisor has threads.
    spares = {pid for pid in mine if parents.get(pid) in zygotes and _threads(pid) == 1}
    return {pid: (_group(pid, cmds[pid], parents, zygotes, spares), stats[pid][1],
                  stats[pid][2]) for pid in mine if pid in stats}


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _descendants(root: int, parents: dict[int, int]) -> set[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for pid, parent in parents.items():
        children[parent].append(pid)
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children[todo.pop()]:
            out.add(child)
            todo.append(child)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("cold", "warm"))
    parser.add_argument("count", type=int, help="calls per map")
    parser.add_argument("repeats", type=int, nargs="?", default=1,
                        help="maps to measure (default 1); the median is printed")
    args = parser.parse_args()
    kind, count, repeats = args.kind, args.count, args.repeats
    hints = {"max_calls_per_worker": None, "idle_timeout": 600} if kind == "warm" else {}
    workdir = Path(tempfile.mkdtemp(prefix="podfn-cpu-"))
    os.chmod(workdir, 0o755)
    fn = remote(identity, **hints)
    per_group: dict[str, list[float]] = defaultdict(list)
    walls = []
    with DevStack(Settings.from_env(), workdir, free_port(), temporary=True).start(
            quiet=True) as stack:
        os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"] = stack.url, stack.token
        list(fn.map(range(20)))
        pid_file = workdir / "pgdata" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        for _ in range(repeats):
            before = snapshot(postmaster)
            started = time.perf_counter()
            assert list(fn.map(range(count))) == list(range(count))
            walls.append(time.perf_counter() - started)
            after = snapshot(postmaster)
            used: dict[str, float] = defaultdict(float)
            for pid, (group, own, reaped) in after.items():
                _, own0, reaped0 = before.get(pid, (group, 0.0, 0.0))
                used[group] += own - own0
                label = ("attempts and tees (ended, reaped by the zygote)"
                         if group == "forkserver (zygote)" else
                         "Postgres backends (ended, reaped by the postmaster)"
                         if group == "postmaster" else f"{group}, reaped children")
                if reaped - reaped0:
                    used[label] += reaped - reaped0
            for group, seconds in used.items():
                per_group[group].append(seconds * 1000 / count)
    total = 0.0
    for group, values in sorted(per_group.items(), key=lambda kv: -statistics.median(kv[1])):
        median = statistics.median(values)
        total += median
        if median >= 0.005:
            print(f"{group:55s} {median:7.2f} ms/call")
    print(f"{'total':55s} {total:7.2f} ms/call")
    wall = statistics.median(walls)
    print(f"wall {wall:.2f} s for {count} calls, {count / wall:.0f} calls/s "
          f"(runs {', '.join(f'{w:.2f}' for w in walls)}); load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
