"""End to end through the launcher and watcher, on the stand-in's real-cluster behaviours.

One test (or more) per item of issue 16; each failed before podfn handled
the behaviour. The stand-in and fixtures are those of test_kubernetes_e2e.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import Platform
from podfn import remote
from podfn.errors import CallFailed
from podfn_platform.controller import loop
from podfn_platform.controller.state import StateStore
from podfn_platform.database import Database
from podfn_platform.kube.manifest import pod_name
from test_kubernetes_e2e import (
    NS,
    Cluster,
    add,
    block,
    block_on_first_attempt,
    cluster,
    kplatform,
    launcher_of,
    make_platform,
    wait_running,
    wait_until,
)

__all__ = ["cluster", "kplatform", "make_platform"]  # fixtures used by name

pytestmark = pytest.mark.e2e

SIDECAR = {"spec": {"containers": [{"name": "istio-proxy", "image": "istio/proxyv2:1.22"}]}}


@remote
def leave_a_thread_running() -> str:
    threading.Thread(target=time.sleep, args=(600,)).start()  # not a daemon: the process stays
    return "returned"


@remote
def crash() -> None:
    os._exit(3)


def phase_of(cluster: Cluster, name: str) -> str | None:
    pod = next((p for p in cluster.pods() if p["metadata"]["name"] == name), None)
    return None if pod is None else (pod.get("status") or {}).get("phase")


# -- 1. a quota Conflict on create is retried, not taken for "the pod exists" ------------


def test_quota_conflict_on_create_is_retried(cluster: Cluster, kplatform: Platform) -> None:
    cluster.sim.faults.fail_requests("create", "pods", count=2, code=409)
    call = add.spawn(2, 2)
    assert call.result(timeout=30) == 4
    info = call.info()
    assert (info["attempt"], info["disruptions"]) == (1, 0)
    assert cluster.sim.faults.requests_seen("create", "pods") == 3


# -- 2. a pod runs until all its containers stop ------------------------------------------


def test_sidecar_pods_are_deleted_and_free_their_slot(
        cluster: Cluster, make_platform: Callable[..., Platform]) -> None:
    make_platform(max_concurrency=1)
    first = add.options(pod_patch=SIDECAR).spawn(1, 1)
    second = add.options(pod_patch=SIDECAR).spawn(2, 2)
    assert first.result(timeout=30) == 2
    assert second.result(timeout=30) == 4  # the first pod's slot was freed
    wait_until(lambda: cluster.pods() == [], what="the sidecar pods to be deleted")


def test_a_call_that_leaves_a_thread_running_frees_its_slot(
        cluster: Cluster, make_platform: Callable[..., Platform],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The pod of a call that recorded its outcome is stopped once it lingers this long
    # (5 s in production, room for a runtime's own exit; any value shows the slot freed).
    monkeypatch.setattr(loop, "FINISHED_GRACE_SECONDS", 0.5)
    make_platform(max_concurrency=1)
    first, second = leave_a_thread_running.spawn(), leave_a_thread_running.spawn()
    assert first.result(timeout=30) == "returned"
    assert second.result(timeout=60) == "returned"
    wait_until(lambda: cluster.pod(first) is None, what="the first pod to be stopped")
    assert first.status() == "succeeded"


# -- 3. a lost node: Terminating limbo, DisruptionTarget, phase Unknown ------------------


@pytest.mark.parametrize("lost_phase", ["Running", "Unknown"])
def test_lost_node_limbo_is_a_disruption(cluster: Cluster, kplatform: Platform,
                                         lost_phase: str) -> None:
    call = block_on_first_attempt.spawn()
    wait_running(cluster, call)
    name = pod_name(call.id, 1)
    cluster.sim.faults.lose_node(NS, name, toleration_seconds=0.3, phase=lost_phase)
    assert call.result(timeout=60) == "attempt 2"
    info = call.info()
    assert (info["user_failures"], info["disruptions"]) == (0, 1)
    assert phase_of(cluster, name) == lost_phase  # still there, Terminating: the node is gone


# -- 4. image pulls fail transiently ----------------------------------------------------------


def test_transient_pull_failures_are_waited_for(cluster: Cluster, kplatform: Platform) -> None:
    cluster.sim.faults.fail_image_pulls("flaky-registry", transient=3)
    assert add.options(image="flaky-registry/runtime:1").remote(1, 2) == 3


def test_pull_time_does_not_eat_the_timeout(cluster: Cluster, kplatform: Platform) -> None:
    # About 4 s of pulling (4 refusals, each 2 x 0.5 s of back-off) against a 3 s
    # timeout: were the pull counted, the call would time out; the call itself needs
    # well under 3 s even on a loaded machine.
    cluster.sim.kubelet.config.image_backoff_delay = 0.5
    cluster.sim.faults.fail_image_pulls("slow-registry", transient=4)
    assert block.options(image="slow-registry/runtime:1", timeout=3).remote(0.2) == "woke"


def test_pulls_failing_past_the_pull_timeout_fail_with_the_registry_message(
        cluster: Cluster, make_platform: Callable[..., Platform]) -> None:
    make_platform(image_pull_timeout_seconds=1.0)
    cluster.sim.faults.fail_image_pulls("busy-registry", transient=1000)
    with pytest.raises(CallFailed) as info:
        add.options(image="busy-registry/runtime:1").remote(1, 2)
    assert "toomanyrequests" in (info.value.reason or "")
    assert "PODFN_IMAGE_PULL_TIMEOUT_SECONDS" in (info.value.reason or "")


# -- 5. kubelet admission rejections ----------------------------------------------------------


@pytest.mark.parametrize("reason", ["OutOfcpu", "UnexpectedAdmissionError"])
def test_kubelet_admission_rejection_is_a_disruption(cluster: Cluster, kplatform: Platform,
                                                     reason: str) -> None:
    cluster.sim.faults.reject_admission("podfn-", reason=reason)
    call = add.spawn(3, 4)
    assert call.result(timeout=60) == 7
    info = call.info()
    assert (info["user_failures"], info["disruptions"]) == (0, 1)
    assert reason in (info["attempts"][0].get("reason") or "")


# -- 6. admission and validation ----------------------------------------------------------------


def test_quota_exceeded_defers_until_there_is_room(
        cluster: Cluster, make_platform: Callable[..., Platform]) -> None:
    make_platform(quota_retry_seconds=0.5)
    cluster.sim.set_namespace_policy(NS, quota={"pods": "1"})
    calls = [block.spawn(0.5) for _ in range(3)]
    assert [c.result(timeout=60) for c in calls] == ["woke"] * 3
    assert all(c.info()["user_failures"] == 0 and c.info()["disruptions"] == 0 for c in calls)
    assert cluster.sim.faults.requests_seen("create", "pods") > 3  # some were refused


def test_restricted_namespace_runs_podfn_pods_and_refuses_privileged_ones(
        cluster: Cluster, kplatform: Platform) -> None:
    cluster.sim.set_namespace_policy(NS, pod_security="restricted")
    assert add.remote(1, 1) == 2
    privileged = {"spec": {"containers": [{"name": "runtime",
                                           "securityContext": {"privileged": True}}]}}
    with pytest.raises(CallFailed) as info:
        add.options(pod_patch=privileged).remote(1, 1)
    assert 'violates PodSecurity "restricted:latest": privileged' in (info.value.reason or "")


def test_invalid_quantity_fails_naming_the_field(kplatform: Platform) -> None:
    bad = {"spec": {"containers": [{"name": "runtime",
                                    "resources": {"limits": {"memory": "256MB"}}}]}}
    with pytest.raises(CallFailed) as info:
        add.options(pod_patch=bad).remote(1, 1)
    assert "resources.limits[memory]" in (info.value.reason or "")
    assert "HTTP 422" in (info.value.reason or "")


def test_expired_credentials_are_reloaded_not_the_calls_failure(
        cluster: Cluster, kplatform: Platform) -> None:
    cluster.sim.faults.fail_requests("create", "pods", count=2, code=401)
    call = add.spawn(5, 5)
    assert call.result(timeout=30) == 10
    assert call.info()["disruptions"] == 0


# -- 7. a stored resourceVersion from another history ----------------------------------------


def test_rebuilt_cluster_silent_watch_relists(
        cluster: Cluster, make_platform: Callable[..., Platform], db: Database,
        runtime_database_url: str) -> None:
    platform = make_platform(reconcile_seconds=600.0,  # only the watch can tell
                             watch_timeout_seconds=2)
    watcher = launcher_of(platform).watcher
    assert add.remote(1, 1) == 2
    old_key = watcher.key()
    assert cluster.sim.namespace_uid("kube-system") in old_key
    # Let the cluster's history run ahead of the new one, then rebuild it.
    for i in range(20):
        cluster.v1.create_namespaced_secret(NS, {"metadata": {"name": f"pad-{i}"},
                                                 "stringData": {"k": "v"}})
    wait_until(lambda: StateStore(db).get(old_key) is not None, what="a stored version")
    cluster.sim.faults.rebuild_cluster()
    cluster.v1.create_namespaced_secret(NS, {"metadata": {"name": "podfn-runtime-database"},
                                             "stringData": {"url": runtime_database_url}})
    silent = watcher.silent_streams
    # Only a pod event (or a list) tells that this one's process died.
    with pytest.raises(CallFailed) as info:
        crash.remote()
    assert "exited with code 3" in (info.value.reason or "")
    assert watcher.silent_streams > silent


# -- 8. lists are paged ---------------------------------------------------------------------


def test_reconcile_pages_through_lists_and_survives_an_expired_token(
        cluster: Cluster, make_platform: Callable[..., Platform],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The periodic reconcile lists every pod: with pages of 2 and a reconcile every
    # 0.5 s, a list meets the expired continue token at once, whatever the watch does
    # (forcing a watcher relist through a 410 raced with its own reconnects).
    kube = launcher_of(make_platform(list_page_size=2, reconcile_seconds=0.5))._kube
    faults = cluster.sim.faults
    list_pods = kube.list_pods
    survived: list[int] = []  # pods returned by each list that met an expired token

    def counting(selector: str) -> tuple[list[dict[str, Any]], str]:
        expired = faults.continue_tokens_expired
        pods, rv = list_pods(selector)  # raises if it did not start again
        if faults.continue_tokens_expired > expired:
            survived.append(len(pods))
        return pods, rv

    monkeypatch.setattr(kube, "list_pods", counting)
    calls = [block.spawn(3.0) for _ in range(5)]
    for call in calls:
        wait_running(cluster, call)
    faults.expire_continue_tokens(1)
    # 5 pods in pages of 2: the second page is refused, the list starts again and
    # returns every pod (a later periodic reconcile would list them too, but not
    # inside the list that met the 410).
    wait_until(lambda: survived, what="a paged list that restarted after its token expired")
    assert faults.continue_tokens_expired == 1 and survived == [5]
    assert [c.result(timeout=60) for c in calls] == ["woke"] * 5


