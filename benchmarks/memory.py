"""Memory: API worker RSS under load; controller RSS while tracking 10k and 100k pods.

    python benchmarks/memory.py [--pods 10000,100000] [--clients 16] [--seconds 10]

Prints a JSON list of rows (see benchmarks/run.py).

- API: `podfn serve` as in benchmarks/api.py; the RSS (VmRSS in /proc) of each
  gunicorn worker sampled every 50 ms while N client processes submit calls;
  the values are each worker's peak, beside the workers' RSS when idle.
- Controller: a `KubernetesLauncher` in a fresh process, with a Kubernetes
  client stand-in whose requests do nothing (no HTTP: the figure is what the
  launcher holds, not the client's buffers). N attempts go through
  `launch()` (manifest built, create submitted to the pool), then one
  synthetic MODIFIED event per pod (a Running pod built from the launcher's
  own manifest) goes through the watcher's handler `_on_event`. The value is
  the process's RSS after that, beside its RSS before the first launch. The
  launcher keeps no pod objects (no informer cache): what grows is the
  attempts it tracks. Not included: the Postgres rows the controller reads
  during a full reconcile (`unfinished()` loads every unfinished call).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def api_memory(clients: int, seconds: float) -> list[dict[str, Any]]:
    import api

    with api.api_server() as (url, _):
        serve = next(p for p in children(os.getpid())
                     if "podfn" in Path(f"/proc/{p}/cmdline").read_text(errors="replace"))
        workers = children(serve)
        idle = [rss_kib(w) / 1024 for w in workers]
        peak = dict.fromkeys(workers, 0)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for w in workers:
                    with contextlib.suppress(OSError):
                        peak[w] = max(peak[w], rss_kib(w))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        total = api.run_submitters(url, clients, seconds, start_delay=3.0)
        stop.set()
        sampler.join(5)
    return [
        {"name": f"API worker RSS, idle ({len(workers)} gunicorn workers)", "unit": "MiB",
         "values": idle},
        {"name": f"API worker RSS, peak while {clients} clients submitted {total:,} calls "
                 f"in {seconds:g} s", "unit": "MiB", "values": [v / 1024 for v in peak.values()]},
    ]


class NullKube:
    namespace = "podfn"

    def create_pod(self, manifest: dict[str, Any]) -> None:
        pass

    def delete_pod(self, name: str, *, grace_seconds: int | None = None) -> None:
        pass

    def list_pods(self, selector: str) -> tuple[list[dict[str, Any]], str]:
        return [], "1"

    def close(self) -> None:
        pass




def controller_memory(pods: int) -> dict[str, float]:
    """Run in a fresh process: RSS (MiB) before and after tracking `pods` pods."""
    from podfn.settings import Settings
    from podfn_platform.controller.launcher import Attempt
    from podfn_platform.controller.state import MemoryStore
    from podfn_platform.kube.launcher import KubernetesLauncher
    from podfn_platform.kube.manifest import PodSettings, build_pod

    settings = Settings(pod_create_qps=1e9, pod_create_concurrency=8)
    pod_settings = PodSettings(namespace="podfn", runtime_image="ghcr.io/podfn/runtime",
                               database_secret="podfn-database")
    launcher = KubernetesLauncher(NullKube(), settings, MemoryStore(),  # type: ignore[arg-type]
                                  wake=lambda: None, pod_settings=pod_settings)
    spec = {"cpu": "250m", "memory": "256Mi", "timeout": 60}
    gc.collect()
    before = rss_kib() / 1024
    started = time.perf_counter()
    attempts = []
    for _ in range(pods):
        a = Attempt(call_id=uuid.uuid4().hex, attempt=1, function_name="bench.identity",
                    spec=dict(spec), client_python="3.11.7")
        attempts.append(a.key)
        launcher.launch(a)
        del a
    while launcher._creating:
        time.sleep(0.01)
    launched = time.perf_counter() - started
    started = time.perf_counter()
    for call_id, attempt in attempts:
        pod = build_pod(call_id=call_id, attempt=attempt, function_name="bench.identity",
                        spec=spec, client_python="3.11.7", settings=pod_settings)
        pod["metadata"]["resourceVersion"] = "2"
        pod["status"] = {"phase": "Running", "containerStatuses": [
            {"name": "runtime", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}
        launcher._on_event("MODIFIED", pod)
    handled = time.perf_counter() - started
    del attempts
    gc.collect()
    after = rss_kib() / 1024
    assert len(launcher.active()) == pods
    return {"before": before, "after": after, "launch_s": launched, "events_s": handled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", default="10000,100000")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--controller-only", type=int, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.controller_only:
        print(json.dumps(controller_memory(ns.controller_only)))
        return
    rows = api_memory(ns.clients, ns.seconds)
    for n in (int(p) for p in ns.pods.split(",")):
        out = subprocess.run([sys.executable, __file__, "--controller-only", str(n)],
                             capture_output=True, text=True, check=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"name": f"controller (KubernetesLauncher) RSS tracking {n:,} pods",
                     "unit": "MiB", "values": [m["after"]],
                     "extra": f"{m['before']:.0f} MiB before; {(m['after'] - m['before']) * 1024 / n:.1f}"
                              f" KiB per pod; launch() {n / m['launch_s']:,.0f}/s, "
                              f"_on_event {n / m['events_s']:,.0f}/s"})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
