"""What a trivial call costs end to end on the embedded default.

    python benchmarks/trivial_call.py [--calls 100]

Starts a throwaway `podfn dev` stack (embedded Postgres unless
PODFN_DATABASE_URL is set; API under gunicorn; controller with the local
launcher), then times `f.remote(1)` one after another and prints the median
and p95 in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from podfn import remote
from podfn.settings import Settings
from podfn_platform.dev import DevStack, free_port


@remote
def identity(x: int) -> int:
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100)
    ns = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="podfn-bench-"))
    os.chmod(workdir, 0o755)
    with DevStack(Settings.from_env(), workdir, free_port(), temporary=True).start(quiet=True) as stack:
        os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"] = stack.url, stack.token
        identity.remote(0)  # warm the client's connection
        times = []
        for i in range(ns.calls):
            started = time.perf_counter()
            assert identity.remote(i) == i
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p95 = times[int(0.95 * (len(times) - 1))]
    print(f"trivial call, {ns.calls} sequential calls: median {statistics.median(times):.1f} ms, "
          f"p95 {p95:.1f} ms, min {times[0]:.1f} ms")


if __name__ == "__main__":
    main()
