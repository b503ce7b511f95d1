"""A warm pool on the Kubernetes launcher, through the API stand-in (kubesim).

    python benchmarks/kube_warm.py [--calls 1000] [--repeats 2] [--max-concurrency 8]

Prints a JSON list of rows (see benchmarks/run.py). A whole platform runs
(`podfn_platform.dev.DevStack`: Postgres, API, controller with
PODFN_LAUNCHER=kubernetes) against kubesim as its own process, whose kubelet
runs each pod's command (the real runtime) as a local process. Each repeat
maps an identity function with `max_calls_per_worker=None` over `--calls`
integers and reports:

- calls/s of the whole map (submission to the last result), the first
  repeat including the start of its pods, the later ones on the pods the
  first left warm;
- pods started by the map (the stand-in's count of pod creates), against
  the target "at most PODFN_MAX_CONCURRENCY".

Set PODFN_DATABASE_URL to use a running Postgres instead of an embedded one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

TESTS = Path(__file__).resolve().parent.parent / "tests"


def identity(x: int) -> int:
    return x


class Sim:
    """kubesim as a process; its pods find this interpreter first on PATH."""

    def __init__(self, workdir: Path) -> None:
        self.kubeconfig = workdir / "kubeconfig"
        env = {**os.environ,
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS / "kubesim"), "--kubeconfig", str(self.kubeconfig),
             "--bookmark-interval", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url:
            raise RuntimeError("kubesim did not start")

    def fault(self, method: str, **kwargs: Any) -> Any:
        r = httpx.post(f"{self.url}/_sim/faults/{method}", json=kwargs, timeout=30)
        r.raise_for_status()
        return r.json()["result"]

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-concurrency", type=int, default=8)
    ns = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="podfn-bench-kwarm-"))
    os.chmod(workdir, 0o755)
    sim = Sim(workdir)
    os.environ.update({"KUBECONFIG": str(sim.kubeconfig), "PODFN_LAUNCHER": "kubernetes",
                       "PODFN_NAMESPACE": "podfn",
                       "PODFN_MAX_CONCURRENCY": str(ns.max_concurrency)})
    from podfn import remote
    from podfn.settings import Settings
    from podfn_platform.dev import DevStack, free_port

    fn = remote(identity, max_calls_per_worker=None, idle_timeout=300)
    rates: list[float] = []
    pods: list[float] = []
    try:
        with DevStack(Settings.from_env(), workdir / "stack", free_port(),
                      temporary=True).start(quiet=True) as stack:
            os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"] = stack.url, stack.token
            for _ in range(ns.repeats):
                before = sim.fault("requests_seen", verb="create", resource="pods")
                started = time.perf_counter()
                results = list(fn.map(range(ns.calls)))
                rates.append(ns.calls / (time.perf_counter() - started))
                if results != list(range(ns.calls)):
                    raise AssertionError("the map returned wrong results")
                pods.append(sim.fault("requests_seen", verb="create", resource="pods") - before)
    finally:
        sim.close()
    where = f"{ns.calls} calls, PODFN_MAX_CONCURRENCY={ns.max_concurrency}"
    rows = [
        {"name": f"warm map through the Kubernetes stand-in, cold pods ({where})",
         "unit": "calls/s", "values": rates[:1], "higher_is_better": True},
        {"name": f"pods started by a warm map through the Kubernetes stand-in ({where}; "
                 "target <= max_concurrency)", "unit": "pods", "values": pods[:1],
         "higher_is_better": False},
    ]
    if len(rates) > 1:
        rows.insert(1, {"name": f"warm map through the Kubernetes stand-in, warm pods ({where})",
                        "unit": "calls/s", "values": rates[1:], "higher_is_better": True})
        rows.append({"name": f"pods started by a map on warm pods ({where})", "unit": "pods",
                     "values": pods[1:], "higher_is_better": False})
    print(json.dumps(rows))


if __name__ == "__main__":
    os.environ.setdefault("PODFN_LOG_LEVEL", "WARNING")
    main()
