"""A warm call beside idle warm pools: its latency, and the claims Postgres ran per call.

    python benchmarks/idle_pools.py CALLS IDLE_POOLS

Starts the embedded stack (DevStack, local launcher), warms one worker for each
of IDLE_POOLS functions (pools differ by a hint) and one for the timed function,
then times CALLS sequential `.remote` calls of the timed function while the
others sit idle. Prints the p50 and the mean, and the executions of
`podfn_claim_calls` per call (`track_functions = 'all'` on the stack's
database): a worker that wakes for another pool's call sends a claim that finds
nothing (issue 12, eighth round: 6.0 claims per call with four idle pools, 2.1
after the fix; the timed pool's own worker makes two).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from podfn import remote
from podfn.settings import Settings
from podfn_platform.dev import DevStack, free_port

CLAIMS = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
          "WHERE funcname = 'podfn_claim_calls'")


def identity(x: int) -> int:
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("calls", type=int)
    parser.add_argument("idle_pools", type=int)
    args = parser.parse_args()
    timed = remote(identity, max_calls_per_worker=None, idle_timeout=600)
    idle = [remote(identity, max_calls_per_worker=None, idle_timeout=601 + k)
            for k in range(args.idle_pools)]
    workdir = Path(tempfile.mkdtemp(prefix="podfn-idle-pools-"))
    os.chmod(workdir, 0o755)
    with DevStack(Settings.from_env(), workdir, free_port(), temporary=True).start(
            quiet=True) as stack, psycopg.connect(stack.database_url, autocommit=True) as admin:
        os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"] = stack.url, stack.token
        admin.execute(f"ALTER DATABASE {admin.info.dbname} SET track_functions = 'all'")
        for fn in [timed, *idle]:  # (workers connect after this: they count their claims)
            for i in range(5):
                fn.remote(i)
        time.sleep(1)  # the backends' statistics reach the view within a second
        before = admin.execute(CLAIMS).fetchone()
        latencies = []
        for i in range(args.calls):
            started = time.perf_counter()
            assert timed.remote(i) == i
            latencies.append(time.perf_counter() - started)
        time.sleep(1)
        admin.execute("SELECT pg_stat_clear_snapshot()")
        after = admin.execute(CLAIMS).fetchone()
        assert before is not None and after is not None
    print(f"{args.idle_pools} idle warm pools: p50 {statistics.median(latencies) * 1000:.2f} ms, "
          f"mean {statistics.mean(latencies) * 1000:.2f} ms; "
          f"claims per call {(after[0] - before[0]) / args.calls:.2f}")


if __name__ == "__main__":
    main()
