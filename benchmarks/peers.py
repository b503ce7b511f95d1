"""One peer, one measurement, in a process of its own; prints a JSON list of seconds.

    python benchmarks/peers.py PEER KIND COUNT REPEATS

PEER: podfn, podfn-warm, podfn-fork, ray, lithops, pool, python-c, python-c-imports.
KIND: `call` times COUNT sequential trivial calls (one value per call);
`map` times REPEATS runs of a map over COUNT trivial calls (one value per run).

Run by benchmarks/run.py; each peer gets a fresh interpreter so that one
peer's threads, caches and worker processes cannot slow another.
Every peer is warmed before timing (workers started, first call made).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def identity(x: int) -> int:
    return x


Runner = tuple[Callable[[int], int], Callable[[list[int]], list[int]]]


@contextmanager
def podfn_peer(**hints: Any) -> Iterator[Runner]:
    from podfn import remote
    from podfn.settings import Settings
    from podfn_platform.dev import DevStack, free_port

    workdir = Path(tempfile.mkdtemp(prefix="podfn-bench-"))
    os.chmod(workdir, 0o755)
    fn = remote(identity, **hints)
    with DevStack(Settings.from_env(), workdir, free_port(), temporary=True).start(
            quiet=True) as stack:
        os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"] = stack.url, stack.token
        yield fn.remote, lambda xs: list(fn.map(xs))


@contextmanager
def ray_peer() -> Iterator[Runner]:
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        fn = ray.remote(identity)
        yield (lambda x: ray.get(fn.remote(x)),
               lambda xs: ray.get([fn.remote(x) for x in xs]))
    finally:
        ray.shutdown()


@contextmanager
def lithops_peer() -> Iterator[Runner]:
    import logging

    import lithops

    logging.getLogger("lithops").setLevel(logging.ERROR)
    config = {"lithops": {"backend": "localhost", "storage": "localhost", "log_level": None},
              "localhost": {"runtime": sys.executable}}
    fexec = lithops.FunctionExecutor(config=config)

    def one(x: int) -> int:
        fexec.call_async(identity, x)
        return fexec.get_result()  # type: ignore[no-any-return]

    def many(xs: list[int]) -> list[int]:
        futures = fexec.map(identity, xs)
        return fexec.get_result(futures)  # type: ignore[no-any-return]

    try:
        yield one, many
    finally:
        fexec.clean()


@contextmanager
def pool_peer() -> Iterator[Runner]:
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        yield (lambda x: pool.submit(identity, x).result(),
               lambda xs: list(pool.map(identity, xs)))


def _process_peer(code: str) -> Callable[[], Iterator[Runner]]:
    @contextmanager
    def peer() -> Iterator[Runner]:
        def one(x: int) -> int:
            out = subprocess.run([sys.executable, "-c", code, str(x)], check=True,
                                 capture_output=True, stdin=subprocess.DEVNULL)
            return int(out.stdout)

        def many(xs: list[int]) -> list[int]:
            with ThreadPoolExecutor(os.cpu_count()) as threads:
                return list(threads.map(one, xs))

        yield one, many
    return peer


PEERS = {
    "podfn": podfn_peer,
    # Warm workers (docs/warm-workers.md): one process runs call after call.
    "podfn-warm": lambda: podfn_peer(max_calls_per_worker=None, idle_timeout=600),
    # The same, each call in a process forked from the warm worker (`fork_per_call`).
    "podfn-fork": lambda: podfn_peer(max_calls_per_worker=None, idle_timeout=600,
                                     fork_per_call=True),
    "ray": ray_peer,
    "lithops": lithops_peer,
    "pool": pool_peer,
    "python-c": _process_peer("import sys; print(sys.argv[1])"),
    "python-c-imports": _process_peer(
        "import sys, cloudpickle, psycopg; print(sys.argv[1])"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("kind", choices=("call", "map"))
    parser.add_argument("count", type=int, help="calls (call), or calls per map (map)")
    parser.add_argument("repeats", type=int, help="maps to time (map; ignored by call)")
    args = parser.parse_args()
    peer, kind, count, repeats = args.peer, args.kind, args.count, args.repeats
    times: list[float] = []
    with PEERS[peer]() as (one, many):
        for i in range(3):  # warm: workers up, first call made
            assert one(i) == i
        if kind == "call":
            for i in range(count):
                started = time.perf_counter()
                assert one(i) == i
                times.append(time.perf_counter() - started)
        elif kind == "map":
            xs = list(range(count))
            many(xs[:20])
            for _ in range(repeats):
                started = time.perf_counter()
                assert many(xs) == xs
                times.append(time.perf_counter() - started)
        else:
            raise SystemExit(f"unknown kind {kind!r}")
    print(json.dumps(times))


if __name__ == "__main__":
    main()
