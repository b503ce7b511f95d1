"""A full reconcile of many pods against the API stand-in: time and controller memory.

    python benchmarks/kube_reconcile.py --pods 10000
    python benchmarks/kube_reconcile.py --pods 100000

Prints a JSON list of rows (see benchmarks/run.py). kubesim runs as its own
process; its store is *seeded* with the pods (the `seed_pods` fault puts
copies of one podfn pod manifest straight into the store: 100,000 creates
over HTTP would measure the create path instead, and would give the
kubelet stand-in 100,000 worker threads). 10% of the pods are Running and
belong to unfinished attempts; the rest Failed a minute ago (kept for
debugging, as podfn keeps failed pods for an hour) - the shape of a busy
namespace. Nothing runs in them: the figures are the controller's.

One full reconcile = `KubernetesLauncher.reconcile(full=True)`: list every
pod with podfn's label, page by page (`PODFN_LIST_PAGE_SIZE`, 500), and
compare each unfinished attempt with its pod. Measured in this process (the
controller's side): wall time, and memory as the growth of the peak RSS
(ru_maxrss) over the reconcile. Each size runs in a fresh process, since a
peak never comes down.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kube_launcher import NS, POD_SETTINGS, Sim

from podfn.settings import Settings
from podfn_platform.controller.launcher import Attempt
from podfn_platform.controller.state import MemoryStore
from podfn_platform.kube.client import KubeClient
from podfn_platform.kube.launcher import KubernetesLauncher
from podfn_platform.kube.manifest import SELECTOR, build_pod

SPEC = {"cpu": "250m", "memory": "256Mi", "timeout": 60, "env": {"MODE": "batch"}}


def _status(phase: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    started = (now - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    finished = (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    state: dict[str, Any] = {"running": {"startedAt": started}} if phase == "Running" else {
        "terminated": {"exitCode": 1, "reason": "Error", "startedAt": started,
                       "finishedAt": finished, "message": "Traceback ...\nValueError: x\n"}}
    return {"phase": phase, "startTime": started, "hostIP": "10.0.0.1", "podIP": "10.244.0.9",
            "qosClass": "Burstable",
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": started}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{"name": "runtime", "image": "ghcr.io/podfn/runtime:py3.11",
                                   "imageID": "", "ready": phase == "Running",
                                   "restartCount": 0, "started": phase == "Running",
                                   "state": state, "lastState": {}}]}


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--running-share", type=float, default=0.1)
    parser.add_argument("--page-size", type=int, default=Settings().list_page_size)
    ns = parser.parse_args()
    running = int(ns.pods * ns.running_share)
    sim = Sim(Path(tempfile.mkdtemp(prefix="podfn-bench-reconcile-")))
    try:
        template = build_pod(call_id="template", attempt=1, function_name="bench.f", spec=SPEC,
                             client_python="3.11.7", settings=POD_SETTINGS)
        started = time.perf_counter()
        sim.fault("seed_pods", namespace=NS, template=template, count=running, prefix="run",
                  status=_status("Running"))
        sim.fault("seed_pods", namespace=NS, template=template, count=ns.pods - running,
                  prefix="failed", status=_status("Failed"))
        seeded = time.perf_counter() - started
        settings = replace(Settings(), list_page_size=ns.page_size)
        kube = KubeClient(NS, kubeconfig=str(sim.kubeconfig), page_size=ns.page_size)
        launcher = KubernetesLauncher(kube, settings, MemoryStore(), wake=lambda: None)
        unfinished = [Attempt(call_id=f"run{i}", attempt=1, function_name="bench.f", spec=SPEC,
                              client_python="3.11.7", state="running",
                              launched_at=datetime.now(UTC)) for i in range(running)]
        before = _rss_peak_mib()
        started = time.perf_counter()
        launcher.reconcile(lambda: unfinished, full=True)
        elapsed = time.perf_counter() - started
        grown = _rss_peak_mib() - before
        exits = launcher.exits()
        listed = len(kube.list_pods(SELECTOR)[0])
        launcher.close()
    finally:
        sim.close()
    assert listed == ns.pods, f"listed {listed} of {ns.pods} pods"
    assert not exits, f"the reconcile found {len(exits)} outcomes; expected none"
    label = f"{ns.pods:,} pods ({running:,} running), pages of {ns.page_size}"
    print(json.dumps([
        {"name": f"full reconcile, {label}", "unit": "s", "values": [elapsed],
         "higher_is_better": False},
        {"name": f"controller peak RSS growth during it, {label}", "unit": "MiB",
         "values": [grown], "higher_is_better": False},
        {"name": f"(seeding the stand-in, {ns.pods:,} pods)", "unit": "s", "values": [seeded],
         "higher_is_better": False},
    ]))


if __name__ == "__main__":
    os.environ.setdefault("PODFN_LOG_LEVEL", "WARNING")
    main()
