"""What following a chatty call costs the database: table growth and what a follower reads.

    python benchmarks/log_growth.py [--megabytes 1.2] [--seconds 12]

Starts a throwaway `podfn dev` stack (embedded Postgres unless
PODFN_DATABASE_URL is set), runs one call that prints `--megabytes` of text
in lines spread evenly over `--seconds`, follows it with `Call.logs(follow=True)`
meanwhile, and prints: the size of podfn_calls and podfn_output (with TOAST
and indexes, after VACUUM) before and after, how many bytes of output the
follower received, and the largest delay between a line's being stored and
its reaching the follower.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from podfn import remote
from podfn.settings import Settings
from podfn_platform.database import Database
from podfn_platform.dev import DevStack, free_port

TABLES = ("podfn_calls", "podfn_output")


@remote
def chatty(total_bytes: int, seconds: float) -> int:

    line = "x" * 99 + "\n"
    lines = total_bytes // len(line)
    per_tick = max(1, lines // int(seconds * 10))
    started = time.monotonic()
    printed = 0
    while printed < lines:
        for _ in range(min(per_tick, lines - printed)):
            # 100 characters a line, hard to compress like real logs (not "xxx...").
            print(f"{printed:08d} {os.urandom(45).hex()}")
            printed += 1
        time.sleep(max(0.0, started + printed / lines * seconds - time.monotonic()))
    return printed


def sizes(database_url: str) -> dict[str, int]:
    with Database(database_url, name="podfn-bench") as db, db.transaction() as tx:
        return {t: tx._conn.execute("SELECT pg_total_relation_size(%s) AS s", (t,)).fetchone()["s"]
                for t in TABLES}


def vacuum(database_url: str) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"VACUUM {table}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=float, default=1.2)
    parser.add_argument("--seconds", type=float, default=12.0)
    ns = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="podfn-bench-"))
    os.chmod(workdir, 0o755)
    with DevStack(Settings.from_env(), workdir, free_port(), temporary=True).start(quiet=True) as stack:
        os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"] = stack.url, stack.token
        vacuum(stack.database_url)
        before = sizes(stack.database_url)
        call = chatty.spawn(int(ns.megabytes * 1_000_000), ns.seconds)
        received = 0
        worst = 0.0
        for line in call.logs(follow=True):
            received += len(line.text)
            if line.at is not None:
                worst = max(worst, (datetime.now(UTC) - line.at).total_seconds())
        printed = call.result()
        vacuum(stack.database_url)
        after = sizes(stack.database_url)
    print(f"{printed} lines ({ns.megabytes} MB) over {ns.seconds} s, followed to the end")
    for table in TABLES:
        print(f"  {table}: {before[table] / 1024:.0f} kB -> {after[table] / 1024:.0f} kB")
    print(f"  the follower received {received} characters; worst store-to-follower delay "
          f"{worst * 1000:.0f} ms (plus up to 0.5 s from print to store)")


if __name__ == "__main__":
    main()
