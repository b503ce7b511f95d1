"""`.remote` over the client's kept-alive http.client connections or over httpx, alternated.

    python benchmarks/client_transport.py CALLS {warm,cold}

One embedded stack (DevStack, local launcher); each round makes one call over
each transport, in alternating order (podfn/transport.py, or httpx when the
client's `_direct` connections are switched off), so both meet the same
machine at the same moment. Prints each transport's p50, mean and p90, and
the client's CPU per call (issue 12, eighth round).
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


def identity(x: int) -> int:
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("calls", type=int)
    parser.add_argument("kind", choices=("warm", "cold"))
    args = parser.parse_args()
    hints = {"max_calls_per_worker": None, "idle_timeout": 600} if args.kind == "warm" else {}
    fn = remote(identity, **hints)
    workdir = Path(tempfile.mkdtemp(prefix="podfn-transport-"))
    os.chmod(workdir, 0o755)
    with DevStack(Settings.from_env(), workdir, free_port(), temporary=True).start(
            quiet=True) as stack:
        os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"] = stack.url, stack.token
        for i in range(30):
            assert fn.remote(i) == i
        client = fn.client
        direct = client._direct
        assert direct is not None, "a proxy is set: every request goes through httpx"
        latency: dict[str, list[float]] = {"http.client": [], "httpx": []}
        cpu = dict.fromkeys(latency, 0)
        for i in range(args.calls):
            for name in (("httpx", "http.client") if i % 2 else ("http.client", "httpx")):
                client._direct = direct if name == "http.client" else None
                cpu_start, started = time.thread_time_ns(), time.perf_counter()
                assert fn.remote(i) == i
                latency[name].append(time.perf_counter() - started)
                cpu[name] += time.thread_time_ns() - cpu_start
        client._direct = direct
    for name, values in latency.items():
        values.sort()
        print(f"{args.kind} {name:12s} p50 {statistics.median(values) * 1000:.2f} ms, "
              f"mean {statistics.mean(values) * 1000:.2f} ms, "
              f"p90 {values[int(len(values) * 0.9)] * 1000:.2f} ms; "
              f"client CPU {cpu[name] / args.calls / 1000:.0f} us per call")


if __name__ == "__main__":
    main()
