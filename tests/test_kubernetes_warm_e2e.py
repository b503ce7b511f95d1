"""Warm workers on the Kubernetes launcher (docs/warm-workers.md), through the stand-in.

A pod launched for one attempt runs further calls of its pool; the tests
tell pods apart by the `ref` Postgres records for each attempt (the pod's
name, shared by every call a warm pod ran) and count the stand-in's creates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_warm_workers import _pid_or_hang

from conftest import Platform
from podfn import remote
from podfn.errors import CallTimeout
from podfn_platform.database import Database
from podfn_platform.kube.manifest import WARM_LABEL, WORKER_ANNOTATION
from test_kubernetes_e2e import NS, Cluster, cluster, launcher_of, make_platform, wait_until

__all__ = ["cluster", "make_platform"]  # fixtures used by name

pytestmark = pytest.mark.e2e


@remote(max_calls_per_worker=None, idle_timeout=30)
def square(x: int) -> int:
    return x * x


@remote(max_calls_per_worker=None, idle_timeout=30)
def pod_of(i: int) -> str:
    return str(os.getpid())


@remote(max_calls_per_worker=None, idle_timeout=30)
def other_pod_of(i: int) -> str:
    return str(os.getpid())


work = remote(max_calls_per_worker=None, idle_timeout=30, timeout=2)(_pid_or_hang)
# The same with a timeout no test waits for: a test that acts on a hanging call (kills
# its pod, cancels it) must not find it timed out first on a loaded machine.
held = remote(max_calls_per_worker=None, idle_timeout=30, timeout=120)(_pid_or_hang)


def attempts(db: Database, ids: list[str]) -> list[dict[str, Any]]:
    with db.connect(name="podfn-test") as conn:
        return conn.execute(
            "SELECT call_id, attempt, state, ref, worker FROM podfn_attempts "
            "WHERE call_id = ANY(%s) ORDER BY launched_at", (ids,)).fetchall()


def creates(cluster: Cluster) -> int:
    return int(cluster.sim.faults.requests_seen("create", "pods"))


def controller_starter(cluster: Cluster, database_url: str, log: Path,
                       **extra: str) -> Callable[[], subprocess.Popen[bytes]]:
    """Starts `podfn controller` processes on the stand-in, all logging to `log` (tests
    that kill a controller and start the next)."""
    env = {**os.environ, "PODFN_DATABASE_URL": database_url, "PODFN_LAUNCHER": "kubernetes",
           "PODFN_NAMESPACE": NS, "KUBECONFIG": str(cluster.kubeconfig),
           "PODFN_SWEEP_SECONDS": "0.5", "PODFN_RECONCILE_SECONDS": "1",
           "PODFN_WATCH_TIMEOUT_SECONDS": "5", **extra}

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            return subprocess.Popen([sys.executable, "-m", "podfn", "controller"], env=env,
                                    stdout=sink, stderr=subprocess.STDOUT)
    return start


def test_a_map_starts_at_most_max_concurrency_pods(
        cluster: Cluster, make_platform: Callable[..., Platform]) -> None:
    p = make_platform(max_concurrency=3)
    results = list(square.map(range(60)))
    assert results == [x * x for x in range(60)]
    assert 1 <= creates(cluster) <= 3, f"{creates(cluster)} pods for a warm map"
    pods = cluster.pods()
    assert pods and all(pod["metadata"]["labels"].get(WARM_LABEL) == "true" for pod in pods)
    assert all(pod["metadata"]["annotations"][WORKER_ANNOTATION].count("/") == 1
               for pod in pods)
    assert all("activeDeadlineSeconds" not in pod["spec"] for pod in pods)
    assert len(launcher_of(p).workers()) == len(pods)


def test_pools_never_mix(cluster: Cluster, make_platform: Callable[..., Platform]) -> None:
    p = make_platform()
    a = [pod_of.spawn(i) for i in range(3)]
    b = [other_pod_of.spawn(i) for i in range(3)]
    pids = {c.id: c.result(timeout=60) for c in a + b}
    refs = {r["call_id"]: r["ref"] for r in attempts(p.db, [c.id for c in a + b])}
    refs_a = {refs[c.id] for c in a}
    refs_b = {refs[c.id] for c in b}
    assert refs_a.isdisjoint(refs_b), (refs_a, refs_b)
    assert {pids[c.id] for c in a}.isdisjoint({pids[c.id] for c in b})
    # Later calls of one pool reuse its idle pods.
    before = creates(cluster)
    assert {pod_of.remote(i) for i in range(3)} <= {pids[c.id] for c in a}
    assert creates(cluster) == before


@pytest.mark.parametrize("kill", ["delete", "evict", "lose_node"])
def test_a_warm_pod_killed_mid_call_requeues_only_that_call(
        cluster: Cluster, make_platform: Callable[..., Platform], tmp_path: Path,
        kill: str) -> None:
    p = make_platform()
    pid, first_id, _ = held.remote("pid")
    marker = tmp_path / "hang"
    hanging = held.spawn("hang", str(marker))
    wait_until(marker.exists, what="the warm pod to take the call")
    assert int(marker.read_text()) == pid, "the idle warm pod took the call"
    pod = next(r["ref"] for r in attempts(p.db, [first_id]))
    if kill == "delete":
        cluster.v1.delete_namespaced_pod(pod, NS, grace_period_seconds=0)
    elif kill == "evict":
        cluster.sim.faults.evict(NS, pod)
    else:
        cluster.sim.faults.lose_node(NS, pod, toleration_seconds=0.3)
    new_pid, call_id, attempt = hanging.result(timeout=60)
    assert call_id == hanging.id and attempt == "2" and new_pid != pid
    rows = {(r["call_id"], r["attempt"]): r for r in attempts(p.db, [first_id, hanging.id])}
    assert rows[(first_id, 1)]["state"] == "succeeded"
    assert rows[(hanging.id, 1)]["state"] == "disrupted"
    assert rows[(hanging.id, 1)]["worker"] == f"{first_id}/1"
    info = hanging.info()
    assert info["user_failures"] == 0 and info["disruptions"] == 1


def test_a_warm_call_keeps_its_own_timeout(
        cluster: Cluster, make_platform: Callable[..., Platform], tmp_path: Path) -> None:
    p = make_platform()
    pid, first_id, _ = work.remote("pid")
    pod = next(r["ref"] for r in attempts(p.db, [first_id]))
    marker = tmp_path / "hang"
    started = time.monotonic()
    with pytest.raises(CallTimeout) as info:
        work.remote("hang", str(marker))
    assert time.monotonic() - started < 20
    assert int(marker.read_text()) == pid, "the call ran in the warm pod"
    assert "timed out after 2" in (info.value.reason or "")
    wait_until(lambda: all(x["metadata"]["name"] != pod for x in cluster.pods()),
               what="the timed-out warm pod to be deleted")
    # The next call gets a pod of its own and runs.
    assert work.remote("pid")[0] != pid


def test_a_cancelled_warm_call_deletes_its_pod(
        cluster: Cluster, make_platform: Callable[..., Platform], tmp_path: Path) -> None:
    p = make_platform()
    pid, first_id, _ = held.remote("pid")
    pod = next(r["ref"] for r in attempts(p.db, [first_id]))
    marker = tmp_path / "hang"
    hanging = held.spawn("hang", str(marker))
    wait_until(marker.exists, what="the warm pod to take the call")
    assert int(marker.read_text()) == pid
    assert hanging.cancel() == "cancelled"
    wait_until(lambda: all(x["metadata"]["name"] != pod for x in cluster.pods()),
               what="the warm pod running the cancelled call to go")
    assert hanging.status() == "cancelled"
    assert held.remote("pid")[0] != pid


def test_an_idle_warm_pod_exits_and_ends_nothing(
        cluster: Cluster, make_platform: Callable[..., Platform]) -> None:
    p = make_platform()

    @remote(max_calls_per_worker=None, idle_timeout=0.5)
    def brief(i: int) -> int:
        return i

    calls = [brief.spawn(i) for i in range(3)]
    assert [c.result(timeout=60) for c in calls] == [0, 1, 2]
    wait_until(lambda: not launcher_of(p).active(), what="the idle pod to exit")
    wait_until(lambda: cluster.pods() == [], what="the idle pod to be deleted")
    assert all(r["state"] == "succeeded" for r in attempts(p.db, [c.id for c in calls]))
    assert all(c.info()["attempt"] == 1 for c in calls)


def test_controller_restart_adopts_busy_and_idle_warm_pods(
        cluster: Cluster, api_only: str, database_url: str, db: Database,
        tmp_path: Path) -> None:
    first_release, second_release = tmp_path / "first", tmp_path / "second"

    @remote(max_calls_per_worker=None, idle_timeout=60)
    def wait_for(path: str) -> str:
        while not os.path.exists(path):
            time.sleep(0.02)
        return os.environ["PODFN_CALL_ID"]

    log = tmp_path / "controller.log"
    start = controller_starter(cluster, database_url, log, PODFN_MAX_CONCURRENCY="2")

    controller = start()
    try:
        firsts = [wait_for.spawn(str(first_release)) for _ in range(2)]
        wait_until(lambda: all(c.status() == "running" for c in firsts), 60,
                   "two warm pods to run")
        seconds = [wait_for.spawn(str(second_release)) for _ in range(3)]
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
        # With no controller, the pods finish their calls and claim the queued ones.
        first_release.touch()
        assert [c.result(timeout=60) for c in firsts] == [c.id for c in firsts]
        wait_until(lambda: sum(c.status() == "running" for c in seconds) == 2, 60,
                   "the warm pods to take two queued calls by themselves")
        controller = start()
        wait_until(lambda: "adopted warm worker pod" in log.read_text(), 60,
                   "the new controller to adopt the warm pods")
        second_release.touch()
        assert [c.result(timeout=60) for c in seconds] == [c.id for c in seconds]
    finally:
        controller.send_signal(signal.SIGTERM)
        assert controller.wait(20) == 0
    for call in firsts + seconds:
        assert call.info()["attempt"] == 1, f"call {call.id} ran twice"
    assert creates(cluster) == 2, "the new controller started pods beside the adopted ones"


def test_a_warm_pod_lost_while_no_controller_ran_requeues_its_call(
        cluster: Cluster, api_only: str, database_url: str, tmp_path: Path) -> None:
    done, never = tmp_path / "done", tmp_path / "never"
    done.touch()

    @remote(max_calls_per_worker=None, idle_timeout=60)
    def wait_for(path: str) -> str:
        if os.environ["PODFN_ATTEMPT"] == "1":
            while not os.path.exists(path):
                time.sleep(0.02)
        return os.environ["PODFN_ATTEMPT"]

    log = tmp_path / "controller.log"
    start = controller_starter(cluster, database_url, log)

    controller = start()
    try:
        first = wait_for.spawn(str(done))
        assert first.result(timeout=60) == "1"
        pod = first.info()["attempts"][0]["ref"]
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
        claimed = wait_for.spawn(str(never))  # the idle pod takes it, then is lost
        wait_until(lambda: claimed.status() == "running", 60, "the idle warm pod to claim it")
        assert claimed.info()["attempts"][0]["ref"] == pod
        cluster.v1.delete_namespaced_pod(pod, NS, grace_period_seconds=0)
        wait_until(lambda: all(x["metadata"]["name"] != pod for x in cluster.pods()), 30,
                   "the pod to go while no controller watches")
        controller = start()
        assert claimed.result(timeout=60) == "2"
    finally:
        controller.send_signal(signal.SIGTERM)
        assert controller.wait(20) == 0
    info = claimed.info()
    assert info["user_failures"] == 0 and info["disruptions"] == 1
    assert [a["state"] for a in info["attempts"]] == ["disrupted", "succeeded"]


@remote(name="kube-standing", min_workers=1, max_calls_per_worker=None)
def kube_standing(x: int) -> list[Any]:
    return [os.getpid(), x]


def test_min_workers_run_as_standing_pods(
        cluster: Cluster, make_platform: Callable[..., Platform]) -> None:
    """A deployed function's `min_workers` are pods started with no call; an invoke is
    served by one without a pod create."""
    p = make_platform()
    kube_standing.deploy()
    workers = wait_until(lambda: [w for w in launcher_of(p).workers()
                                  if w.startswith("standing-")] or None, timeout=60)
    wait_until(lambda: creates(cluster) == 1 and cluster.pods(), timeout=60)
    with p.db.connect(name="podfn-test") as conn:
        wait_until(lambda: conn.execute(
            "SELECT ref FROM podfn_workers WHERE name = %s", (workers[0],)).fetchone()["ref"],
            timeout=30)

    with httpx.Client(base_url=p.url, timeout=60,
                      headers={"Authorization": f"Bearer {p.token}"}) as client:
        response = client.post("/v1/functions/kube-standing/invoke", json={"args": [7]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["value"][1] == 7
    [row] = attempts(p.db, [body["id"]])
    assert row["worker"] == workers[0] and row["state"] == "succeeded"
    assert creates(cluster) == 1, "the invoke started a pod of its own"


@remote(name="kube-standing-restart", min_workers=1, max_calls_per_worker=None)
def kube_standing_restart(x: int) -> list[Any]:
    return [os.getpid(), x]


def test_a_restarted_controller_adopts_standing_pods(
        cluster: Cluster, api_only: str, database_url: str, db: Database,
        tmp_path: Path) -> None:
    """A standing pod outlives its controller: the next controller takes it as the
    function's standing worker instead of starting a second one, and it serves calls."""
    log = tmp_path / "controller.log"
    start = controller_starter(cluster, database_url, log)

    def standing_pods() -> list[str]:
        return [p["metadata"]["name"] for p in cluster.pods()
                if (p["metadata"].get("annotations") or {}).get(WORKER_ANNOTATION, "")
                .startswith("standing-") and not p["metadata"].get("deletionTimestamp")]

    kube_standing_restart.deploy()
    controller = start()
    try:
        [pod] = wait_until(lambda: standing_pods() or None, 60, "the standing pod")
        with db.connect(name="podfn-test") as conn:
            wait_until(lambda: conn.execute(
                "SELECT count(*) AS n FROM podfn_workers WHERE ref = %s",
                (pod,)).fetchall() == [{"n": 1}], 30, "the standing worker to record its pod")
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
        controller = start()
        wait_until(lambda: f"adopted warm worker pod {pod}" in log.read_text(), 60,
                   "the new controller to adopt the standing pod")
        call = kube_standing_restart.lookup("kube-standing-restart").spawn(3)
        value = call.result(timeout=60)
        assert value[1] == 3
        assert call.info()["attempts"][0]["ref"] == pod, "the call did not run on the pod"
        assert standing_pods() == [pod]
        assert creates(cluster) == 1, "the new controller started a second standing pod"
    finally:
        controller.send_signal(signal.SIGTERM)
        assert controller.wait(20) == 0


_forked_calls: dict[str, int] = {"n": 0}


@remote(max_calls_per_worker=None, idle_timeout=30, fork_per_call=True)
def forked_in_pod(i: int) -> tuple[int, int, int]:
    _forked_calls["n"] += 1
    return os.getpid(), os.getppid(), _forked_calls["n"]


def test_fork_per_call_in_a_warm_pod(cluster: Cluster,
                                     make_platform: Callable[..., Platform]) -> None:
    """`fork_per_call` in a pod (runtime/podfn_runtime/forked.py): one pod, a process per
    call forked from its runtime, nothing of one call's memory in the next."""
    p = make_platform()
    calls = [forked_in_pod.spawn(i) for i in range(4)]
    runs = [c.result(timeout=60) for c in calls]
    refs = {r["ref"] for r in attempts(p.db, [c.id for c in calls])}
    before = creates(cluster)
    runs += [forked_in_pod.remote(i) for i in range(3)]
    assert creates(cluster) == before, "later calls should run in the warm pods"
    assert [n for _, _, n in runs] == [1] * 7, runs
    assert len({pid for pid, _, _ in runs}) == 7, "each call in a process of its own"
    assert len({parent for _, parent, _ in runs}) <= len(refs), (runs, refs)
