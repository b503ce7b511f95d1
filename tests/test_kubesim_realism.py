"""Contract tests for the stand-in's real-cluster behaviours (issue 16).

Each pins one thing a real cluster does that a convenient stand-in would
hide: quota Conflicts, sidecars, lost nodes, transient pulls, kubelet
admission, API admission and validation, cluster identity, paged lists,
realistic bookmarks and termination messages.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from test_kubesim_contract import NS, SLEEP, pod, raw, running, status_of

from kubesim import KubeSim
from kubesim.pytest_fixtures import (
    base_env,
    collect_events,
    condition,
    container_state,
    kubeconfig,
    phase,
    sim,
    v1,
    wait_for_pod,
)

__all__ = ["kubeconfig", "sim", "v1"]  # fixtures used by name

PY = sys.executable
RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
              "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def statuses(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c["state"] for c in (p.get("status") or {}).get("containerStatuses") or []}


# -- 1. 409 Conflict is not 409 AlreadyExists ------------------------------------------


def test_quota_conflict_on_create_is_409_conflict_and_creates_nothing(
        sim: KubeSim, v1: client.CoreV1Api) -> None:
    sim.faults.fail_requests("create", "pods", count=1, code=409)
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod(NS, pod("qc", SLEEP))
    status = status_of(e.value)
    assert (e.value.status, status["reason"]) == (409, "Conflict")
    assert "resourcequotas" in status["message"]
    assert v1.list_namespaced_pod(NS).items == []  # nothing was created
    v1.create_namespaced_pod(NS, pod("qc", SLEEP))
    with pytest.raises(ApiException) as again:
        v1.create_namespaced_pod(NS, pod("qc", SLEEP))
    assert (again.value.status, status_of(again.value)["reason"]) == (409, "AlreadyExists")


def test_expired_credentials_are_401_unauthorized(sim: KubeSim, v1: client.CoreV1Api) -> None:
    sim.faults.fail_requests("list", "pods", count=1, code=401)
    with pytest.raises(ApiException) as e:
        v1.list_namespaced_pod(NS)
    assert (e.value.status, status_of(e.value)["reason"]) == (401, "Unauthorized")
    assert v1.list_namespaced_pod(NS).items == []


# -- 2. a pod runs until all its containers stop --------------------------------------


def test_sidecar_keeps_the_pod_running_after_the_main_container_exits(
        v1: client.CoreV1Api) -> None:
    body = pod("sc", [PY, "-c", "print('done')"])
    body["spec"]["containers"].append({"name": "istio-proxy", "image": "proxyv2:1.22"})
    v1.create_namespaced_pod(NS, body)
    p = wait_for_pod(v1, NS, "sc", lambda p: "terminated" in statuses(p).get("main", {}))
    assert phase(p) == "Running"
    assert statuses(p)["main"]["terminated"]["exitCode"] == 0
    assert "running" in statuses(p)["istio-proxy"]
    v1.delete_namespaced_pod("sc", NS, grace_period_seconds=5)
    events = collect_events(v1, NS, lambda e: e["type"] == "DELETED",
                            resource_version=p["metadata"]["resourceVersion"])
    last = events[-1]["raw_object"]
    assert phase(last) == "Succeeded"
    assert statuses(last)["istio-proxy"]["terminated"]["exitCode"] == 0


# -- 3. a lost node is a long Terminating limbo ---------------------------------------


@pytest.mark.parametrize("lost_phase", ["Running", "Unknown"])
def test_lost_node_leaves_a_terminating_pod_until_the_node_is_removed(
        sim: KubeSim, v1: client.CoreV1Api, lost_phase: str) -> None:
    v1.create_namespaced_pod(NS, pod("ln", SLEEP))
    wait_for_pod(v1, NS, "ln", running)
    proc = sim.kubelet.worker(NS, "ln").proc
    assert proc is not None
    raw(sim, "POST", "/_sim/faults/lose_node", {"namespace": NS, "name": "ln",
                                                "toleration_seconds": 0.3, "phase": lost_phase})
    p = wait_for_pod(v1, NS, "ln", lambda p: condition(p, "Ready").get("reason") == "NodeNotReady")
    assert not p["metadata"].get("deletionTimestamp")  # tolerated for a while
    p = wait_for_pod(v1, NS, "ln", lambda p: bool(p["metadata"].get("deletionTimestamp")))
    dt = condition(p, "DisruptionTarget")
    assert (dt["status"], dt["reason"]) == ("True", "DeletionByTaintManager")
    assert phase(p) == lost_phase
    assert proc.wait(5) is not None
    time.sleep(0.5)  # nothing confirms the deletion: the object stays
    assert v1.read_namespaced_pod("ln", NS).metadata.deletion_timestamp is not None
    sim.faults.remove_lost_nodes()
    collect_events(v1, NS, lambda e: e["type"] == "DELETED",
                   resource_version=p["metadata"]["resourceVersion"])


# -- 4. image pulls fail transiently ----------------------------------------------------


def test_transient_pull_failures_clear_after_back_off(sim: KubeSim, v1: client.CoreV1Api) -> None:
    sim.faults.fail_image_pulls("flaky/", transient=2)
    created = v1.create_namespaced_pod(NS, pod("tp", SLEEP, image="flaky/img:1"))
    events = collect_events(v1, NS, lambda e: phase(e["raw_object"]) == "Running",
                            resource_version=created.metadata.resource_version)
    waits = [container_state(e["raw_object"]).get("waiting", {}) for e in events]
    pulls = [w for w in waits if w.get("reason") in ("ErrImagePull", "ImagePullBackOff")]
    assert [w["reason"] for w in pulls] == ["ErrImagePull", "ImagePullBackOff"] * 2
    assert all("toomanyrequests" in w["message"] for w in pulls)


def test_permanent_pull_failures_name_the_registry_error(sim: KubeSim,
                                                         v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("nf", SLEEP, image="r/does-not-exist:1"))
    v1.create_namespaced_pod(NS, pod("ua", SLEEP, image="r/unauthorized-does-not-exist:1"))
    for name, words in (("nf", "not found"), ("ua", "401 Unauthorized")):
        p = wait_for_pod(v1, NS, name, lambda p: container_state(p).get("waiting", {}).get(
            "reason") == "ImagePullBackOff")
        assert words in container_state(p)["waiting"]["message"]


# -- 5. kubelet admission rejections ---------------------------------------------------


@pytest.mark.parametrize("reason", ["OutOfcpu", "OutOfmemory", "OutOfpods",
                                    "UnexpectedAdmissionError"])
def test_kubelet_admission_rejection(sim: KubeSim, v1: client.CoreV1Api, reason: str) -> None:
    sim.faults.reject_admission("adm", reason=reason)
    v1.create_namespaced_pod(NS, pod("adm", SLEEP))
    p = wait_for_pod(v1, NS, "adm", lambda p: phase(p) == "Failed")
    assert p["status"]["reason"] == reason
    assert p["status"]["message"].startswith("Pod was rejected")
    assert not p["status"].get("containerStatuses")
    v1.create_namespaced_pod(NS, pod("adm-2", SLEEP))  # one rejection only
    wait_for_pod(v1, NS, "adm-2", running)


# -- 6. admission and validation --------------------------------------------------------


def test_pod_security_restricted_names_the_violated_fields(sim: KubeSim,
                                                           v1: client.CoreV1Api) -> None:
    sim.set_namespace_policy(NS, pod_security="restricted")
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod(NS, pod("ps", SLEEP))
    message = status_of(e.value)["message"]
    assert e.value.status == 403 and status_of(e.value)["reason"] == "Forbidden"
    assert 'violates PodSecurity "restricted:latest"' in message
    for field in ("allowPrivilegeEscalation", "capabilities.drop", "runAsNonRoot",
                  "seccompProfile"):
        assert field in message
    ok = pod("ps", SLEEP)
    ok["spec"]["containers"][0]["securityContext"] = RESTRICTED
    v1.create_namespaced_pod(NS, ok)


def test_resource_quota_exceeded_is_403_and_counts_running_pods(
        sim: KubeSim, v1: client.CoreV1Api) -> None:
    sim.set_namespace_policy(NS, quota={"pods": "1"})
    v1.create_namespaced_pod(NS, pod("q1", SLEEP))
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod(NS, pod("q2", SLEEP))
    assert e.value.status == 403
    assert status_of(e.value)["message"] == (
        'pods "q2" is forbidden: exceeded quota: compute-quota, requested: pods=1, '
        "used: pods=1, limited: pods=1")
    v1.delete_namespaced_pod("q1", NS, grace_period_seconds=0)
    v1.create_namespaced_pod(NS, pod("q2", SLEEP))


def test_limit_range_defaults_fill_missing_resources(sim: KubeSim, v1: client.CoreV1Api) -> None:
    sim.set_namespace_policy(NS, default_limits={"memory": "512Mi"},
                             default_requests={"cpu": "100m"})
    created = v1.create_namespaced_pod(NS, pod("lr", SLEEP, resources={
        "limits": {"cpu": "1"}}))
    res = created.spec.containers[0].resources
    assert res.limits == {"cpu": "1", "memory": "512Mi"}
    assert res.requests == {"cpu": "100m", "memory": "512Mi"}


@pytest.mark.parametrize(("resources", "words"), [
    ({"limits": {"memory": "256MB"}}, "spec.containers[0].resources.limits[memory]"),
    ({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}, "must be less than or equal to cpu "
                                                         "limit of 1"),
])
def test_invalid_resources_are_422(v1: client.CoreV1Api, resources: dict[str, Any],
                                   words: str) -> None:
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod(NS, pod("bad", SLEEP, resources=resources))
    assert e.value.status == 422 and words in status_of(e.value)["message"]


def test_field_validation_strict_refuses_unknown_fields_warn_warns(sim: KubeSim) -> None:
    body = pod("fv", SLEEP)
    body["spec"]["containers"][0]["memry"] = "1Gi"
    path = f"/api/v1/namespaces/{NS}/pods"
    code, _, out = raw(sim, "POST", path + "?fieldValidation=Strict", body)
    assert code == 400
    assert json.loads(out)["message"] == (
        'strict decoding error: unknown field "spec.containers[0].memry"')
    code, headers, out = raw(sim, "POST", path, body)
    assert code == 201 and "memry" not in json.loads(out)["spec"]["containers"][0]
    assert 'unknown field \\"spec.containers[0].memry\\"' in headers["Warning"]


# -- 7. cluster identity and a stored version from another history --------------------


def test_rebuilt_cluster_has_a_new_identity_and_old_versions_are_silent(tmp_path: Path) -> None:
    with KubeSim(base_env=base_env(), bookmark_interval=0.2) as s, \
            config.new_client_from_config(str(s.kubeconfig(tmp_path / "kc"))) as ac:
        api = client.CoreV1Api(ac)
        before = api.read_namespace("kube-system").metadata.uid
        for i in range(3):
            api.create_namespaced_pod(NS, pod(f"rb{i}", SLEEP, image="does-not-exist"))
        old_rv = api.list_namespaced_pod(NS).metadata.resource_version
        assert s.faults.rebuild_cluster() != before
        assert api.read_namespace("kube-system").metadata.uid != before
        assert api.list_namespaced_pod(NS).items == []
        # A watch from the old history: no 410, no events, no bookmarks - silence.
        events = list(watch.Watch().stream(api.list_namespaced_pod, NS, resource_version=old_rv,
                                           allow_watch_bookmarks=True, timeout_seconds=1))
        assert events == []
        # From the new history's version, bookmarks come.
        rv = api.list_namespaced_pod(NS).metadata.resource_version
        events = list(watch.Watch().stream(api.list_namespaced_pod, NS, resource_version=rv,
                                           allow_watch_bookmarks=True, timeout_seconds=1))
        assert events and all(e["type"] == "BOOKMARK" for e in events)


# -- 8. lists are paged ----------------------------------------------------------------


def test_lists_page_with_limit_and_continue(v1: client.CoreV1Api) -> None:
    for i in range(5):
        v1.create_namespaced_pod(NS, pod(f"pg{i}", SLEEP, image="does-not-exist"))
    v1.create_namespaced_pod(NS, pod("other", SLEEP, image="does-not-exist", labels={"a": "b"}))
    first = v1.list_namespaced_pod(NS, label_selector="app=t", limit=2)
    names = [p.metadata.name for p in first.items]
    token, rv = first.metadata._continue, first.metadata.resource_version
    while token:
        page = v1.list_namespaced_pod(NS, label_selector="app=t", limit=2, _continue=token)
        assert page.metadata.resource_version == rv  # every page names the first's version
        assert len(page.items) <= 2
        names += [p.metadata.name for p in page.items]
        token = page.metadata._continue
    assert names == [f"pg{i}" for i in range(5)]


def test_expired_continue_token_is_410(sim: KubeSim, v1: client.CoreV1Api) -> None:
    for i in range(3):
        v1.create_namespaced_pod(NS, pod(f"ex{i}", SLEEP, image="does-not-exist"))
    token = v1.list_namespaced_pod(NS, limit=1).metadata._continue
    assert token
    v1.create_namespaced_pod(NS, pod("ex9", SLEEP, image="does-not-exist"))
    sim.faults.expire_resource_versions()
    with pytest.raises(ApiException) as e:
        v1.list_namespaced_pod(NS, limit=1, _continue=token)
    assert (e.value.status, status_of(e.value)["reason"]) == (410, "Expired")


# -- also: bookmarks, termination messages, graceful deadline -------------------------


def test_bookmarks_come_a_minute_apart_and_before_the_deadline(tmp_path: Path) -> None:
    with KubeSim(base_env=base_env()) as s, \
            config.new_client_from_config(str(s.kubeconfig(tmp_path / "kc"))) as ac:
        assert s.bookmark_interval == 60.0
        api = client.CoreV1Api(ac)
        rv = api.list_namespaced_pod(NS).metadata.resource_version
        started = time.monotonic()
        events = list(watch.Watch().stream(api.list_namespaced_pod, NS, resource_version=rv,
                                           allow_watch_bookmarks=True, timeout_seconds=3))
        assert [e["type"] for e in events] == ["BOOKMARK"]  # the one 2 s before the end
        assert time.monotonic() - started >= 2.9


def test_failed_container_falls_back_to_its_log_tail(v1: client.CoreV1Api) -> None:
    body = pod("tm", [PY, "-c", "import sys\nfor i in range(100): print('line', i)\nsys.exit(3)"])
    body["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    v1.create_namespaced_pod(NS, body)
    p = wait_for_pod(v1, NS, "tm", lambda p: phase(p) == "Failed")
    message = container_state(p)["terminated"]["message"]
    assert message.splitlines()[-1] == "line 99" and len(message.splitlines()) == 80


def test_deadline_sends_sigterm_before_sigkill(v1: client.CoreV1Api) -> None:
    handler = ("import signal, sys, time\n"
               "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
               "print('ready', flush=True)\ntime.sleep(60)")
    v1.create_namespaced_pod(NS, pod("dl", [PY, "-c", handler], activeDeadlineSeconds=1,
                                     terminationGracePeriodSeconds=10))
    p = wait_for_pod(v1, NS, "dl", lambda p: phase(p) == "Failed")
    assert p["status"]["reason"] == "DeadlineExceeded"
    assert container_state(p)["terminated"]["exitCode"] == 42
