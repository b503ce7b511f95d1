"""What lending a pooled connection costs: the pool's old check (an empty query) against
`podfn_platform.database.lendable` (a look at the socket).

    python benchmarks/pool_checkout.py DATABASE_URL [CHECKOUTS] [ROUNDS]

Alternates the two in each round; prints the median over rounds of the wall
and CPU time per checkout (this process's CPU only: the old check also costs
the server's backend a statement).
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg_pool

from podfn_platform.database import Database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", metavar="DATABASE_URL", help="a Postgres to connect to")
    parser.add_argument("checkouts", type=int, nargs="?", default=2000,
                        help="checkouts per round (default 2000)")
    parser.add_argument("rounds", type=int, nargs="?", default=5, help="rounds (default 5)")
    args = parser.parse_args()
    url, checkouts, rounds = args.url, args.checkouts, args.rounds
    found: dict[str, list[tuple[float, float]]] = {"empty query": [], "socket look": []}
    for _ in range(rounds):
        for label in found:
            db = Database(url, min_size=1, max_size=1).open()
            if label == "empty query":
                db._pool._check = psycopg_pool.ConnectionPool.check_connection
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(checkouts):
                with db._pool.connection():
                    pass
            found[label].append(((time.perf_counter() - wall) / checkouts,
                                 (time.process_time() - cpu) / checkouts))
            db.close()
    for label, runs in found.items():
        print(f"{label:12s} wall {statistics.median(w for w, _ in runs) * 1e6:6.1f} us  "
              f"cpu {statistics.median(c for _, c in runs) * 1e6:6.1f} us per checkout")


if __name__ == "__main__":
    main()
