"""Kubernetes launcher throughput against the API stand-in (kubesim) with per-request latency.

    python benchmarks/kube_launcher.py [--pods 200] [--repeats 3] [--latency 0.02]

Prints a JSON list of rows (see benchmarks/run.py). kubesim runs as its own
process (`python tests/kubesim`), with `set_request_latency(latency)`: every
API request sleeps that long before it is handled. The stand-in's scheduler is
told every pod is unschedulable, so no container process runs and the
figures are the launcher's and the watcher's own: pods stay Pending.

- pods created/s: `KubernetesLauncher.launch()` for N attempts, timed until
  every create request has returned; beside it a baseline that creates the
  same pods one request at a time in a loop (what a controller without a
  create pool does: one create per loop turn).
- watch events processed/s: a `PodWatcher` (the launcher's own, with its
  real `_on_event` handler and the attempts registered as active) resumes
  from a resourceVersion taken before the pods were created and replays every
  event since (ADDED, then the scheduler's MODIFIED); timed until the last
  one is handled.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from podfn.settings import Settings
from podfn_platform.controller.launcher import Attempt
from podfn_platform.controller.state import MemoryStore
from podfn_platform.kube.client import KubeClient
from podfn_platform.kube.launcher import KubernetesLauncher
from podfn_platform.kube.manifest import SELECTOR, PodSettings, build_pod

TESTS = Path(__file__).resolve().parent.parent / "tests"
NS = "podfn"
POD_SETTINGS = PodSettings(namespace=NS, runtime_image="ghcr.io/podfn/runtime",
                           database_secret="podfn-database")



class Sim:
    def __init__(self, workdir: Path) -> None:
        self.kubeconfig = workdir / "kubeconfig"
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS / "kubesim"), "--kubeconfig", str(self.kubeconfig),
             "--bookmark-interval", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url:
            raise RuntimeError("kubesim did not start")

    def fault(self, method: str, **kwargs: Any) -> Any:
        r = httpx.post(f"{self.url}/_sim/faults/{method}", json=kwargs, timeout=30)
        r.raise_for_status()
        return r.json()["result"]

    def resource_version(self, kube: KubeClient) -> int:
        return int(kube.list_pods(SELECTOR)[1])

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def attempts(n: int) -> list[Attempt]:
    return [Attempt(call_id=uuid.uuid4().hex, attempt=1, function_name="bench.f", spec={},
                    client_python="3.11.7") for _ in range(n)]


def launcher(kube: KubeClient, settings: Settings) -> KubernetesLauncher:
    return KubernetesLauncher(kube, settings, MemoryStore(), wake=lambda: None,
                              pod_settings=POD_SETTINGS)


def wait_until(predicate: Any, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish")
        time.sleep(0.001)


def create_with_launcher(kube: KubeClient, settings: Settings, n: int) -> float:
    lau = launcher(kube, settings)
    todo = attempts(n)
    started = time.perf_counter()
    for a in todo:
        lau.launch(a)
    wait_until(lambda: not lau._creating)
    elapsed = time.perf_counter() - started
    lau._pool.shutdown(wait=True)
    return n / elapsed


def create_one_per_loop(kube: KubeClient, n: int) -> float:
    manifests = [build_pod(call_id=a.call_id, attempt=1, function_name=a.function_name,
                           spec={}, client_python=a.client_python,
                           settings=POD_SETTINGS) for a in attempts(n)]
    started = time.perf_counter()
    for m in manifests:
        kube.create_pod(m)
    return n / (time.perf_counter() - started)


def settle(sim: Sim, kube: KubeClient) -> int:
    """Wait until the stand-in stops writing (every pod marked unschedulable)."""
    last, stable_since = -1, time.monotonic()
    while True:
        rv = sim.resource_version(kube)
        if rv != last:
            last, stable_since = rv, time.monotonic()
        elif time.monotonic() - stable_since > 1.0:
            return rv
        time.sleep(0.1)


def watch_replay(sim: Sim, kube: KubeClient, settings: Settings, n: int) -> tuple[float, int]:
    """Events/s of the launcher's watcher replaying the history of n fresh pods."""
    creator = launcher(kube, replace_qps(settings))
    todo = attempts(n)
    rv0 = sim.resource_version(kube)
    for a in todo:
        creator.launch(a)
    wait_until(lambda: not creator._creating)
    creator._pool.shutdown(wait=True)
    rv_end = settle(sim, kube)
    expected = rv_end - rv0

    lau = launcher(kube, settings)
    for a in todo:
        lau._active[a.key] = a
    lau.watcher._store.put(lau.watcher.key(), str(rv0))  # resume from before the creates
    seen = 0
    done = threading.Event()
    handle = lau._on_event

    def counting(kind: str, pod: dict[str, Any]) -> None:
        nonlocal seen
        handle(kind, pod)
        seen += 1
        if seen >= expected:
            done.set()

    lau.watcher._on_event = counting
    started = time.perf_counter()
    thread = threading.Thread(target=lau.watcher.run, daemon=True)
    thread.start()
    if not done.wait(300):
        raise TimeoutError(f"watcher saw {seen} of {expected} events")
    elapsed = time.perf_counter() - started
    lau.watcher.stop()
    thread.join(30)
    return expected / elapsed, expected


def replace_qps(settings: Settings) -> Settings:
    from dataclasses import replace
    return replace(settings, pod_create_qps=1e6, pod_create_concurrency=16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--creates-only", action="store_true",
                        help="skip the watch replay (pods created/s only)")
    ns = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="podfn-bench-kube-"))
    sim = Sim(workdir)
    try:
        sim.fault("set_unschedulable")
        sim.fault("set_request_latency", seconds=ns.latency)
        kube = KubeClient(NS, kubeconfig=str(sim.kubeconfig))
        defaults = Settings()
        variants: list[tuple[str, Any]] = [
            ("one create per loop (baseline)", lambda: create_one_per_loop(kube, ns.pods)),
            (f"KubernetesLauncher, defaults (concurrency {defaults.pod_create_concurrency}, "
             f"{defaults.pod_create_qps:g} QPS, burst {defaults.pod_create_burst})",
             lambda: create_with_launcher(kube, defaults, ns.pods)),
            ("KubernetesLauncher, concurrency 8, no QPS limit",
             lambda: create_with_launcher(kube, Settings(pod_create_qps=1e6), ns.pods)),
            ("KubernetesLauncher, concurrency 32, no QPS limit",
             lambda: create_with_launcher(kube, Settings(pod_create_qps=1e6,
                                                         pod_create_concurrency=32), ns.pods)),
        ]
        rows = []
        for name, fn in variants:
            rates = [fn() for _ in range(ns.repeats)]
            rows.append({"name": f"pods created/s: {name}", "unit": "pods/s",
                         "values": rates, "higher_is_better": True})
        rates, events = [], 0
        for _ in range(0 if ns.creates_only else ns.repeats):
            rate, events = watch_replay(sim, kube, defaults, ns.pods)
            rates.append(rate)
        if not ns.creates_only:
            rows.append({"name": f"watch events processed/s (PodWatcher + launcher handler, "
                                 f"{events} events of {ns.pods} pods)", "unit": "events/s",
                         "values": rates, "higher_is_better": True})
        kube.close()
    finally:
        sim.close()
    print(json.dumps(rows))


if __name__ == "__main__":
    os.environ.setdefault("PODFN_LOG_LEVEL", "WARNING")
    main()
