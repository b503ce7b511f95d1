"""End to end on "Kubernetes": API + controller (Kubernetes launcher) + kubesim + runtime + Postgres.

The official client talks HTTP to the stand-in, whose kubelet runs each pod's
command (the real runtime) as a process against this test's database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch

import podfn
from conftest import Platform, platform_settings, running_platform, wait_until
from kubesim import KubeSim
from podfn import remote
from podfn.errors import CallFailed, CallTimeout
from podfn.settings import Settings
from podfn_platform.controller.state import StateStore
from podfn_platform.database import Database
from podfn_platform.kube.client import KubeClient
from podfn_platform.kube.launcher import KubernetesLauncher
from podfn_platform.kube.manifest import pod_name

pytestmark = pytest.mark.e2e

NS = "podfn"


def container_env() -> dict[str, str]:
    """What a runtime image would have: this Python first on PATH."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}


@dataclass
class Cluster:
    sim: KubeSim
    kubeconfig: Path
    v1: k8s.CoreV1Api

    def pods(self) -> list[dict[str, Any]]:
        items = self.v1.list_namespaced_pod(NS).items
        return [self.v1.api_client.sanitize_for_serialization(p) for p in items]

    def pod(self, call: podfn.Call, attempt: int = 1) -> dict[str, Any] | None:
        name = pod_name(call.id, attempt)
        return next((p for p in self.pods() if p["metadata"]["name"] == name), None)


@pytest.fixture
def cluster(tmp_path: Path, runtime_database_url: str) -> Iterator[Cluster]:
    with KubeSim(base_env=container_env(), bookmark_interval=0.5) as sim:
        kubeconfig = sim.kubeconfig(tmp_path / "kubeconfig")
        api_client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        with api_client:
            v1 = k8s.CoreV1Api(api_client)
            v1.create_namespaced_secret(NS, {"metadata": {"name": "podfn-runtime-database"},
                                             "stringData": {"url": runtime_database_url}})
            yield Cluster(sim, kubeconfig, v1)


def kube_settings(database_url: str, **overrides: Any) -> Settings:
    base = platform_settings(database_url, launcher="kubernetes", namespace=NS,
                             reconcile_seconds=1.0, launch_grace_seconds=5.0,
                             pending_timeout_seconds=1.0, watch_timeout_seconds=5)
    return replace(base, **overrides)


@pytest.fixture
def make_platform(cluster: Cluster, database_url: str, db: Database,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Platform]]:
    stack: list[Any] = []

    def start(**overrides: Any) -> Platform:
        settings = kube_settings(database_url, **overrides)
        wake = threading.Event()
        kube = KubeClient(NS, kubeconfig=str(cluster.kubeconfig), page_size=settings.list_page_size)
        launcher = KubernetesLauncher(kube, settings, StateStore(db), wake=wake.set)
        ctx = running_platform(settings, db, launcher, wake, monkeypatch)
        stack.append(ctx)
        return ctx.__enter__()

    yield start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


@pytest.fixture
def kplatform(make_platform: Callable[..., Platform]) -> Platform:
    return make_platform()


def launcher_of(p: Platform) -> KubernetesLauncher:
    launcher = p.controller.launcher
    assert isinstance(launcher, KubernetesLauncher)
    return launcher


def wait_running(cluster: Cluster, call: podfn.Call, attempt: int = 1) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        pod = cluster.pod(call, attempt)
        return pod if pod and (pod.get("status") or {}).get("phase") == "Running" else None
    pod: dict[str, Any] = wait_until(running, what=f"pod of {call} attempt {attempt} running")
    wait_until(lambda: call.status() == "running", what="the runtime to claim its attempt")
    return pod


@remote(cpu="250m", memory="256Mi", timeout=60)
def add(a: int, b: int) -> int:
    return a + b


@remote(memory="256Mi")
def block(seconds: float = 60) -> str:
    time.sleep(seconds)
    return "woke"


@remote
def block_on_first_attempt() -> str:
    if os.environ["PODFN_ATTEMPT"] == "1":
        time.sleep(60)
    return f"attempt {os.environ['PODFN_ATTEMPT']}"


def test_happy_path_runs_each_call_in_a_pod(cluster: Cluster, kplatform: Platform) -> None:
    assert add.remote(2, 3) == 5
    assert list(add.map([1, 2, 3], [10, 20, 30])) == [11, 22, 33]
    call = add.spawn(4, 5)
    assert podfn.Call.from_id(call.id).result() == 9
    info = call.info()
    assert info["attempts"][0]["ref"] == pod_name(call.id, 1)
    # Succeeded pods are deleted once their outcome is in Postgres.
    wait_until(lambda: cluster.pods() == [], what="finished pods to be deleted")
    assert cluster.sim.faults.requests_seen("create", "pods") == 5


def test_oomkilled_names_the_memory_limit(cluster: Cluster, kplatform: Platform) -> None:
    call = block.spawn()
    wait_running(cluster, call)
    cluster.sim.faults.oom_kill(NS, pod_name(call.id, 1))
    with pytest.raises(CallFailed) as info:
        call.result(timeout=30)
    assert info.value.reason == "OOMKilled: memory limit 256Mi"
    # Failed pods are kept for debugging.
    assert cluster.pod(call) is not None


def test_deadline_exceeded_is_timed_out(cluster: Cluster, kplatform: Platform) -> None:
    with pytest.raises(CallTimeout) as info:
        block.options(timeout=1).remote()
    assert "activeDeadlineSeconds" in (info.value.reason or "")


@pytest.mark.parametrize("disruption", ["evict", "lose_node", "delete"])
def test_disruptions_are_retried_without_spending_user_retries(
        cluster: Cluster, kplatform: Platform, disruption: str) -> None:
    call = block_on_first_attempt.spawn()
    wait_running(cluster, call)
    name = pod_name(call.id, 1)
    if disruption == "evict":
        cluster.sim.faults.evict(NS, name)
    elif disruption == "lose_node":
        cluster.sim.faults.lose_node(NS, name, toleration_seconds=0.3)
    else:
        cluster.v1.delete_namespaced_pod(name, NS, grace_period_seconds=0)
    assert call.result(timeout=60) == "attempt 2"
    info = call.info()
    assert info["user_failures"] == 0 and info["disruptions"] == 1
    assert [a["state"] for a in info["attempts"]] == ["disrupted", "succeeded"]


def test_image_pull_failure_fails_fast_naming_the_image(kplatform: Platform) -> None:
    with pytest.raises(CallFailed) as info:
        add.options(image="registry.example/does-not-exist:1").remote(1, 2)
    assert "registry.example/does-not-exist:1" in (info.value.reason or "")
    assert "ErrImagePull" in (info.value.reason or "") or "ImagePullBackOff" in (
        info.value.reason or "")


def test_missing_secret_is_a_config_error(make_platform: Callable[..., Platform]) -> None:
    make_platform(runtime_database_secret="no-such-secret")
    with pytest.raises(CallFailed) as info:
        add.remote(1, 2)
    assert "CreateContainerConfigError" in (info.value.reason or "")
    assert "no-such-secret" in (info.value.reason or "")


def test_unschedulable_past_the_pending_timeout(cluster: Cluster, kplatform: Platform) -> None:
    cluster.sim.faults.set_unschedulable()
    with pytest.raises(CallFailed) as info:
        add.options(gpu=4).remote(1, 2)
    assert "unschedulable for more than 1 s" in (info.value.reason or "")
    assert "Insufficient" in (info.value.reason or "")


def test_500_and_429_on_create_are_retried(cluster: Cluster, kplatform: Platform) -> None:
    cluster.sim.faults.fail_requests("create", "pods", count=2, code=500)
    cluster.sim.faults.fail_requests("create", "pods", count=1, code=429, retry_after=1)
    assert add.remote(1, 1) == 2
    assert cluster.sim.faults.requests_seen("create", "pods") == 4


def test_gone_twice_in_a_row_relists_and_loses_nothing(cluster: Cluster,
                                                      kplatform: Platform) -> None:
    watcher = launcher_of(kplatform).watcher
    relists = watcher.relists
    calls = [block.spawn(1.0) for _ in range(3)]
    for i, mode in enumerate(("http", "event")):
        # Hold the watcher's events back, move the cluster on, forget history:
        # its next watch asks for a version older than what the server keeps.
        cluster.sim.faults.set_watch_event_latency(30)
        cluster.v1.create_namespaced_secret(NS, {"metadata": {"name": f"churn-{i}"},
                                                 "stringData": {"k": "v"}})
        cluster.sim.faults.set_gone_mode(mode)
        cluster.sim.faults.expire_resource_versions()
        cluster.sim.faults.set_watch_event_latency(0)
        cluster.sim.faults.drop_watches()
        wait_until(lambda n=relists: watcher.relists > n, what=f"a relist after 410 ({mode})")
        relists = watcher.relists
    assert [c.result(timeout=60) for c in calls] == ["woke"] * 3


@pytest.mark.parametrize("partial", [False, True], ids=["clean", "half-written"])
def test_dropped_watch_connections(cluster: Cluster, kplatform: Platform, partial: bool) -> None:
    call = block.spawn(1.0)
    wait_running(cluster, call)
    assert cluster.sim.faults.drop_watches(partial=partial) >= 1
    assert call.result(timeout=60) == "woke"


def test_cancel_deletes_the_pod(cluster: Cluster, kplatform: Platform) -> None:
    call = block.spawn()
    wait_running(cluster, call)
    assert call.cancel() == "cancelled"
    wait_until(lambda: cluster.pod(call) is None, what="the cancelled call's pod to go")
    assert call.status() == "cancelled"


def test_events_handled_again_or_late_change_nothing(cluster: Cluster,
                                                     kplatform: Platform) -> None:
    ok = block.spawn(0.1)
    oom = block.spawn()
    wait_running(cluster, oom)
    cluster.sim.faults.oom_kill(NS, pod_name(oom.id, 1))
    assert ok.result(timeout=60) == "woke"
    with pytest.raises(CallFailed):
        oom.result(timeout=60)
    before = [ok.info(), oom.info()]
    # Replay the whole event history into the launcher, as a restarted watch would.
    stream = watch.Watch().stream(cluster.v1.list_namespaced_pod, NS, resource_version="1",
                                  timeout_seconds=1)
    replayed = 0
    for event in stream:
        launcher_of(kplatform)._on_event(event["type"], event["raw_object"])
        replayed += 1
    assert replayed >= 8
    turns = kplatform.controller.turns
    kplatform.controller.wake.set()
    wait_until(lambda: kplatform.controller.turns > turns + 1, what="two controller turns")
    assert [ok.info(), oom.info()] == before


def test_controller_killed_mid_watch_resumes_from_the_stored_version(
        cluster: Cluster, api_only: str, database_url: str, db: Database,
        tmp_path: Path) -> None:
    release = tmp_path / "release"

    @remote
    def wait_then(code: int) -> str:
        while not release.exists():
            time.sleep(0.02)
        if code:
            os._exit(code)
        return "done"

    log = tmp_path / "controller.log"
    env = {**os.environ, "PODFN_DATABASE_URL": database_url, "PODFN_LAUNCHER": "kubernetes",
           "PODFN_NAMESPACE": NS, "KUBECONFIG": str(cluster.kubeconfig),
           "PODFN_SWEEP_SECONDS": "0.5", "PODFN_RECONCILE_SECONDS": "1",
           "PODFN_WATCH_TIMEOUT_SECONDS": "5"}

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            return subprocess.Popen([sys.executable, "-m", "podfn", "controller"], env=env,
                                    stdout=sink, stderr=subprocess.STDOUT)

    first = start()
    ok, crashing = wait_then.spawn(0), wait_then.spawn(3)
    for call in (ok, crashing):
        wait_running(cluster, call)
    key = f"kubernetes.pods.resourceVersion.{cluster.sim.namespace_uid('kube-system')}.{NS}"
    wait_until(lambda: StateStore(db).get(key), what="a stored resourceVersion")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    release.touch()  # both pods finish while no controller watches
    wait_until(lambda: all((cluster.pod(c) or {}).get("status", {}).get("phase")
                           in ("Succeeded", "Failed") for c in (ok, crashing)),
               what="the pods to finish")
    second = start()
    try:
        assert ok.result(timeout=60) == "done"
        with pytest.raises(CallFailed) as info:
            crashing.result(timeout=60)
        assert "exited with code 3" in (info.value.reason or "")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    for call in (ok, crashing):
        assert call.info()["attempt"] == 1, "a call ran twice"
    assert "resuming the pod watch from stored resourceVersion" in log.read_text()
    assert cluster.sim.faults.requests_seen("create", "pods") == 2
