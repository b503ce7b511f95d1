"""A warm map beside a backlog of another pool's calls in backoff (migration 0014).

    python benchmarks/backlog.py [BACKLOG] [--maps N]

Starts the embedded stack (DevStack, local launcher), times N warm maps of
1,000 identity calls, then queues BACKLOG calls of another function with a
backoff of a day (`not_before`: what a ResourceQuota refusal leaves), created
before the maps' calls, runs ANALYZE, and times N maps again. Those calls never
run during the measurement; a claim that reads them to find its own pool's
calls, or to ask whether an older call of another pool may run, pays for each
of them at every claim. Prints the seconds of each map, without and with.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import psycopg

from podfn import remote
from podfn.settings import Settings
from podfn_platform.dev import DevStack, free_port


def identity(x: int) -> int:
    return x


def other(x: int) -> int:
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backlog", type=int, nargs="?", default=20000,
                        help="calls of the other pool in backoff (default 20000)")
    parser.add_argument("--maps", type=int, default=3, help="maps timed each way (default 3)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="podfn-backlog-"))
    os.chmod(workdir, 0o755)
    fn = remote(identity, max_calls_per_worker=None, idle_timeout=600)
    with DevStack(Settings.from_env(), workdir, free_port(), temporary=True).start(
            quiet=True) as stack:
        os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"] = stack.url, stack.token
        template = remote(other).spawn(1)
        template.result()
        for i in range(3):
            fn.remote(i)

        def maps() -> list[float]:
            times = []
            for _ in range(args.maps):
                started = time.perf_counter()
                list(fn.map(range(1000)))
                times.append(round(time.perf_counter() - started, 3))
            return times

        print("no backlog", maps())
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO podfn_calls (id, function_name, function_digest, args, spec, state,"
                " client_python, client_cloudpickle, not_before, owner)"
                " SELECT 'backlog' || g, function_name, function_digest, args, spec, 'queued',"
                " client_python, client_cloudpickle, now() + interval '1 day', owner"
                " FROM podfn_calls, generate_series(1, %s) g WHERE id = %s",
                (args.backlog, template.id))
            conn.execute("ANALYZE podfn_calls")
        print(f"{args.backlog} calls of another pool in backoff", maps())


if __name__ == "__main__":
    main()
