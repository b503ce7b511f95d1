"""Where one call's time goes: timestamps from the client and from the call's row.

    python benchmarks/call_timeline.py {warm,cold} COUNT [--two-requests] [--pause MS]

Runs COUNT sequential identity calls through the embedded stack (DevStack,
local launcher), cold (a process per call) or warm (`max_calls_per_worker=None`),
and prints the p50 of each span: the client's submit request (when `.remote`
is two requests: a submit, then a wait; `--two-requests` forces that shape),
the client's start -> the row's `created_at`, the row's
`created_at` -> `launched_at` (controller launch, or a warm worker's claim),
`launched_at` -> `started_at` (fork, connect, `claim`), `started_at` ->
`finished_at` (the runtime's own time) and `finished_at` -> the client having
the result. All clocks are this machine's (`clock_timestamp()` in Postgres).
`--pause MS` sleeps between calls (outside the timed spans), so that what one
call sets off after it ends (a cold runtime's exit, the next spare's fork)
does not run during the next call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from podfn import remote, serialization
from podfn.call import Call, outcome
from podfn.settings import Settings
from podfn_platform.dev import DevStack, _postmaster_pid, free_port


def identity(x: int) -> int:
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("warm", "cold"))
    parser.add_argument("count", type=int, help="sequential calls to time")
    parser.add_argument("--two-requests", action="store_true",
                        help="submit, then wait: the shape of `.remote` before issue 12")
    parser.add_argument("--pause", type=float, default=0.0, metavar="MS",
                        help="sleep between calls, outside the timed spans")
    args = parser.parse_args()
    kind, count, pause = args.kind, args.count, args.pause / 1000
    hints = {"max_calls_per_worker": None, "idle_timeout": 600} if kind == "warm" else {}
    workdir = Path(tempfile.mkdtemp(prefix="podfn-timeline-"))
    os.chmod(workdir, 0o755)
    fn = remote(identity, **hints)
    with DevStack(Settings.from_env(), workdir, free_port(), temporary=True).start(
            quiet=True) as stack:
        os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"] = stack.url, stack.token
        for i in range(3):  # warm: worker up, first call made
            fn.remote(i)
        prepared = fn._prepare()
        # `.remote(x)`'s own path: one request that submits and waits (issue 12, third
        # round), or, on a client from before it, a submit and then the result's wait.
        one_request = hasattr(fn, "_submit_waiting") and not args.two_requests
        api = _process_tree(stack._children[0].pid)  # `podfn serve`: gunicorn and its workers
        api_cpu, client_cpu = _cpu_seconds(api), time.process_time()
        # The controller alone; below it the forkserver, its attempts and warm workers
        # (reaped ones through their parent); Postgres' postmaster and its backends.
        controller = stack._children[1].pid  # `podfn controller`
        postmaster = _postmaster_pid(stack.data_dir / "pgdata")
        backends = [postmaster] if postmaster is not None else []
        others = {"controller": lambda: _cpu_by_pid([controller], reaped=False),
                  "runtime": lambda: _cpu_by_pid(_process_tree(controller)[1:]),
                  "Postgres": lambda: _cpu_by_pid(
                      [p for root in backends for p in _process_tree(root)])}
        before = {name: read() for name, read in others.items()}
        timed = []
        for i in range(count):
            if pause:
                time.sleep(pause)  # let what the last call left behind settle first
            blob = serialization.dumps(((i,), {}))
            started = time.time()
            if one_request:
                submitted_calls = fn._submit_waiting([blob], prepared, wait=30.0)
                call_id, submitted = submitted_calls.ids[0], float("nan")
                [finished] = submitted_calls.finished
                assert outcome(finished, fn.client) == i
            else:
                [call_id] = fn._submit([blob], prepared)
                submitted = time.time()
                assert Call(call_id, client=fn.client).result() == i
            timed.append((call_id, started, submitted, time.time()))
        api_cpu, client_cpu = _cpu_seconds(api) - api_cpu, time.process_time() - client_cpu
        spent = {name: sum(t - before[name].get(pid, 0.0) for pid, t in read().items())
                 for name, read in others.items()}
        spans: dict[str, list[float]] = {}
        with psycopg.connect(stack.database_url) as conn:
            for call_id, started, submitted, done in timed:
                row = conn.execute(
                    "SELECT extract(epoch FROM created_at), extract(epoch FROM launched_at), "
                    "extract(epoch FROM started_at), extract(epoch FROM finished_at) "
                    "FROM podfn_calls WHERE id = %s", (call_id,)).fetchone()
                assert row is not None
                created, launched, claimed, finished = (float(v) for v in row)
                for name, value in (("submit request", submitted - started),
                                    ("client -> row created", created - started),
                                    ("created -> launched", launched - created),
                                    ("launched -> claimed", claimed - launched),
                                    ("claimed -> recorded", finished - claimed),
                                    ("recorded -> client", done - finished),
                                    ("total", done - started)):
                    spans.setdefault(name, []).append(value)
    print(f"{'one request' if one_request else 'submit, then wait'}; load average "
          f"{os.getloadavg()[0]:.2f}")
    for name, values in spans.items():
        if any(v == v for v in values):  # not all NaN (the one-request path has no submit span)
            print(f"{name:22s} p50 {statistics.median(values) * 1000:8.2f} ms")
    # CPU time does not grow with the machine's load as the spans do.
    print(f"{'API CPU per call':22s}     {api_cpu / count * 1000:8.2f} ms")
    print(f"{'client CPU per call':22s}     {client_cpu / count * 1000:8.2f} ms")
    for name, seconds in spent.items():
        print(f"{name + ' CPU per call':22s}     {seconds / count * 1000:8.2f} ms")


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:  # (a process may end while it is read)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        found.append(current)
    return found


def _cpu_by_pid(pids: list[int], *, reaped: bool = True) -> dict[int, float]:
    """Each live process's user + system CPU in seconds, with its reaped children's
    when `reaped`. A process that ends between two readings drops out of the later
    one (its parent's reaped time has it, counted whole)."""
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])
        if reaped:
            ticks += int(fields[13]) + int(fields[14])
        found[pid] = ticks / os.sysconf("SC_CLK_TCK")
    return found


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of `pids` (from /proc/PID/stat), in seconds."""
    return sum(_cpu_by_pid(pids, reaped=False).values())


if __name__ == "__main__":
    main()
