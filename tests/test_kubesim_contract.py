"""Contract tests for kubesim, through the official kubernetes client and raw HTTP.

Each test pins one behaviour of the Kubernetes API that the podfn suite
relies on; if kubesim drifts from the API, these fail first.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

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
from kubesim.selectors import Selector, parse_label_selector

__all__ = ["kubeconfig", "sim", "v1"]  # fixtures used by name

NS = "default"
PY = sys.executable


def pod(name: str, command: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    labels = spec.pop("labels", {"app": "t"})
    body: dict[str, Any] = {
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": spec.pop("image", "python:3.11"),
            "command": command if command is not None else [PY, "-c", "pass"],
        }]},
    }
    for k, v in spec.items():
        if k in ("env", "resources"):
            body["spec"]["containers"][0][k] = v
        else:
            body["spec"][k] = v
    return body


SLEEP = [PY, "-c", "import time; time.sleep(60)"]


def raw(sim: KubeSim, method: str, path: str, body: Any = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def status_of(exc: ApiException) -> dict[str, Any]:
    return dict(json.loads(exc.body))


def running(p: dict[str, Any]) -> bool:
    return phase(p) == "Running"


# -- discovery and client wiring ---------------------------------------------------


def test_discovery_endpoints(sim: KubeSim, v1: client.CoreV1Api) -> None:
    code, _, body = raw(sim, "GET", "/version")
    assert code == 200 and json.loads(body)["major"] == "1"
    code, _, body = raw(sim, "GET", "/api")
    assert json.loads(body)["versions"] == ["v1"]
    code, _, body = raw(sim, "GET", "/api/v1")
    names = {r["name"] for r in json.loads(body)["resources"]}
    assert {"pods", "pods/status", "pods/log", "secrets"} <= names
    assert client.VersionApi(v1.api_client).get_code().git_version.startswith("v1.")
    code, _, body = raw(sim, "GET", "/api/v1/namespaces/x/configmaps")
    assert code == 404 and json.loads(body)["kind"] == "Status"


def test_load_kube_config_default_client_roundtrip(sim: KubeSim, tmp_path: Path) -> None:
    saved = client.Configuration.get_default_copy()
    try:
        config.load_kube_config(config_file=str(sim.kubeconfig(tmp_path / "kc")))
        with client.ApiClient() as api_client:
            api = client.CoreV1Api(api_client)
            api.create_namespaced_pod(NS, pod("p1", SLEEP))
            assert api.read_namespaced_pod("p1", NS).metadata.name == "p1"
            assert [p.metadata.name for p in api.list_namespaced_pod(NS).items] == ["p1"]
            api.patch_namespaced_pod("p1", NS, {"metadata": {"labels": {"x": "y"}}})
            assert api.read_namespaced_pod("p1", NS).metadata.labels["x"] == "y"
            api.delete_namespaced_pod("p1", NS, grace_period_seconds=0)
            with pytest.raises(ApiException) as e:
                api.read_namespaced_pod("p1", NS)
            assert e.value.status == 404
    finally:
        client.Configuration.set_default(saved)


# -- create / get / list -----------------------------------------------------------


def test_create_stamps_metadata_and_forces_pending(v1: client.CoreV1Api) -> None:
    body = pod("", SLEEP)
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "job-"
    body["status"] = {"phase": "Running"}
    created = v1.create_namespaced_pod(NS, body)
    m = created.metadata
    assert m.name.startswith("job-") and len(m.name) == len("job-") + 5
    assert m.uid and m.creation_timestamp is not None
    assert isinstance(m.resource_version, str) and m.resource_version
    assert created.status.phase == "Pending"
    assert created.status.qos_class == "BestEffort"
    assert created.spec.restart_policy == "Never"
    assert created.spec.termination_grace_period_seconds == 30


def test_create_http_201_and_status_errors(sim: KubeSim) -> None:
    path = f"/api/v1/namespaces/{NS}/pods"
    code, _, body = raw(sim, "POST", path, pod("dup", SLEEP))
    assert code == 201
    code, _, body = raw(sim, "POST", path, pod("dup", SLEEP))
    assert code == 409
    assert json.loads(body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods "dup" already exists', "reason": "AlreadyExists",
        "details": {"name": "dup", "kind": "pods"}, "code": 409,
    }
    code, _, body = raw(sim, "GET", f"{path}/nope")
    st = json.loads(body)
    assert (code, st["reason"], st["message"]) == (404, "NotFound", 'pods "nope" not found')


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b["spec"].__setitem__("containers", []), "spec.containers"),
        (lambda b: b["metadata"].__setitem__("name", "Bad_Name"), "metadata.name"),
        (lambda b: b["metadata"].__setitem__("labels", {"-bad": "x"}), "metadata.labels"),
        (lambda b: b["metadata"].__setitem__("labels", {"ok": "bad value"}), "metadata.labels"),
        (lambda b: b["spec"]["containers"][0].pop("image"), "spec.containers[0].image"),
    ],
)
def test_create_invalid_is_422_status(v1: client.CoreV1Api, mutate: Any, field: str) -> None:
    body = pod("valid-name", SLEEP)
    mutate(body)
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod(NS, body)
    st = status_of(e.value)
    assert e.value.status == 422
    assert (st["kind"], st["status"], st["reason"], st["code"]) == ("Status", "Failure",
                                                                    "Invalid", 422)
    assert st["details"]["kind"] == "Pod"
    assert field in [c["field"] for c in st["details"]["causes"]]
    assert st["message"].startswith("Pod ")


def test_list_selectors(v1: client.CoreV1Api) -> None:
    for name, labels in [("a", {"tier": "web", "env": "prod"}), ("b", {"tier": "db"}),
                         ("c", {"env": "dev"})]:
        v1.create_namespaced_pod(NS, pod(name, SLEEP, labels=labels))
    v1.create_namespaced_pod("other", pod("d", SLEEP, labels={"tier": "web"}))

    def names(**kw: Any) -> list[str]:
        lst = v1.list_namespaced_pod(NS, **kw)
        assert lst.metadata.resource_version
        return sorted(p.metadata.name for p in lst.items)

    assert names(label_selector="tier=web") == ["a"]
    assert names(label_selector="tier==web") == ["a"]
    assert names(label_selector="tier!=web") == ["b", "c"]
    assert names(label_selector="tier in (web,db)") == ["a", "b"]
    assert names(label_selector="tier notin (web)") == ["b", "c"]
    assert names(label_selector="env") == ["a", "c"]
    assert names(label_selector="!env") == ["b"]
    assert names(label_selector="tier=web,env=prod") == ["a"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b") == ["a", "c"]
    assert names(field_selector="status.phase==Pending,metadata.name=c") in (["c"], [])
    all_ns = v1.list_pod_for_all_namespaces(label_selector="tier=web")
    assert sorted(p.metadata.namespace for p in all_ns.items) == ["default", "other"]
    with pytest.raises(ApiException) as e:
        v1.list_namespaced_pod(NS, field_selector="spec.foo=x")
    assert e.value.status == 400 and "field label not supported" in status_of(e.value)["message"]
    with pytest.raises(ApiException) as e:
        v1.list_namespaced_pod(NS, label_selector="tier in web")
    assert e.value.status == 400


def test_selector_grammar_unit() -> None:
    sel = Selector("pods", "a in (1, 2),b notin (x),!c,d,e!=z,f>3", "metadata.namespace=n")
    obj = {"metadata": {"namespace": "n", "labels": {"a": "2", "d": "", "f": "4"}}}
    assert sel.matches(obj)
    obj["metadata"]["labels"]["c"] = "1"
    assert not sel.matches(obj)
    assert [r.op for r in parse_label_selector("x=1,y==2,z")] == ["=", "=", "exists"]


# -- updates ------------------------------------------------------------------------


def test_strategic_merge_patch_merges_containers_by_name(v1: client.CoreV1Api) -> None:
    body = pod("smp", SLEEP)
    body["spec"]["containers"].append({"name": "side", "image": "busybox:1", "command": ["x"]})
    v1.create_namespaced_pod(NS, body)
    patched = v1.patch_namespaced_pod("smp", NS, {
        "metadata": {"labels": {"new": "1"}},
        "spec": {"containers": [{"name": "side", "image": "busybox:2"}]},
    })
    cs = {c.name: c for c in patched.spec.containers}
    assert cs["side"].image == "busybox:2" and cs["side"].command == ["x"]
    assert cs["main"].image == "python:3.11"
    assert patched.metadata.labels == {"app": "t", "new": "1"}


def test_merge_patch_and_json_patch(sim: KubeSim, v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("mp", SLEEP, labels={"a": "1", "b": "2"}))
    path = f"/api/v1/namespaces/{NS}/pods/mp"
    code, _, body = raw(sim, "PATCH", path, {"metadata": {"labels": {"a": None, "c": "3"}}},
                        {"Content-Type": "application/merge-patch+json"})
    assert code == 200 and json.loads(body)["metadata"]["labels"] == {"b": "2", "c": "3"}
    ops = [{"op": "test", "path": "/metadata/labels/b", "value": "2"},
           {"op": "add", "path": "/metadata/labels/d~1e", "value": "4"},
           {"op": "replace", "path": "/metadata/labels/b", "value": "20"},
           {"op": "remove", "path": "/metadata/labels/c"}]
    patched = v1.patch_namespaced_pod("mp", NS, ops)  # a list -> application/json-patch+json
    assert patched.metadata.labels == {"b": "20", "d/e": "4"}
    with pytest.raises(ApiException) as e:
        v1.patch_namespaced_pod("mp", NS, [{"op": "test", "path": "/metadata/name", "value": "x"}])
    assert e.value.status == 422
    code, _, _ = raw(sim, "PATCH", path, {}, {"Content-Type": "text/plain"})
    assert code == 415


def test_status_only_via_status_subresource(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("st", SLEEP, image="does-not-exist:1"))
    wait_for_pod(v1, NS, "st", lambda p: "waiting" in container_state(p)
                 and container_state(p)["waiting"]["reason"] == "ImagePullBackOff")
    p = v1.patch_namespaced_pod("st", NS, {"status": {"phase": "Succeeded"},
                                           "metadata": {"labels": {"k": "v"}}})
    assert p.status.phase == "Pending" and p.metadata.labels["k"] == "v"
    p = v1.patch_namespaced_pod_status("st", NS, {
        "status": {"message": "hello"}, "metadata": {"labels": {"k": "changed"}},
        "spec": {"activeDeadlineSeconds": 5}})
    assert p.status.message == "hello"
    assert p.metadata.labels["k"] == "v" and p.spec.active_deadline_seconds is None
    assert v1.read_namespaced_pod_status("st", NS).status.message == "hello"


def test_spec_immutable_and_resource_version_precondition(v1: client.CoreV1Api) -> None:
    created = v1.create_namespaced_pod(NS, pod("imm", SLEEP))
    with pytest.raises(ApiException) as e:
        v1.patch_namespaced_pod("imm", NS, {"spec": {"restartPolicy": "Always"}})
    assert e.value.status == 422 and "Forbidden" in status_of(e.value)["message"]
    p = v1.patch_namespaced_pod("imm", NS, {"spec": {"containers": [
        {"name": "main", "image": "python:3.12"}]}})
    assert p.spec.containers[0].image == "python:3.12"
    with pytest.raises(ApiException) as e:
        v1.patch_namespaced_pod("imm", NS, {"metadata": {
            "resourceVersion": created.metadata.resource_version, "labels": {"z": "1"}}})
    assert e.value.status == 409 and status_of(e.value)["reason"] == "Conflict"


def test_resource_version_global_monotonic_and_noop(v1: client.CoreV1Api) -> None:
    a = v1.create_namespaced_pod(NS, pod("rv-a", SLEEP, image="does-not-exist"))
    s = v1.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "data": {}})
    b = v1.create_namespaced_pod("other", pod("rv-b", SLEEP, image="does-not-exist"))
    rvs = [int(x.metadata.resource_version) for x in (a, s, b)]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3
    cur = wait_for_pod(v1, NS, "rv-a", lambda p: container_state(p).get("waiting", {}).get(
        "reason") == "ImagePullBackOff")
    again = v1.patch_namespaced_pod("rv-a", NS, {"metadata": {"labels": {"app": "t"}}})
    assert again.metadata.resource_version == cur["metadata"]["resourceVersion"]


# -- delete -------------------------------------------------------------------------


def test_graceful_delete_event_sequence(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("gd", SLEEP))
    start = wait_for_pod(v1, NS, "gd", running)
    deleted = v1.delete_namespaced_pod("gd", NS, grace_period_seconds=5)
    assert deleted.metadata.deletion_timestamp is not None
    assert deleted.metadata.deletion_grace_period_seconds == 5
    evs = collect_events(v1, NS, lambda e: e["type"] == "DELETED",
                         resource_version=start["metadata"]["resourceVersion"])
    kinds = [(e["type"], phase(e["raw_object"])) for e in evs]
    assert kinds[0] == ("MODIFIED", "Running")
    assert evs[0]["raw_object"]["metadata"]["deletionGracePeriodSeconds"] == 5
    assert ("MODIFIED", "Failed") in kinds  # SIGTERM -> exit 143
    assert kinds[-1][0] == "DELETED"
    term = container_state(evs[-1]["raw_object"])["terminated"]
    assert term["exitCode"] == 143 and term["reason"] == "Error"
    rvs = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in evs]
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs)


def test_delete_grace_zero_is_immediate(v1: client.CoreV1Api) -> None:
    created = v1.create_namespaced_pod(NS, pod("g0", SLEEP))
    wait_for_pod(v1, NS, "g0", running)
    v1.delete_namespaced_pod("g0", NS, grace_period_seconds=0)
    with pytest.raises(ApiException) as e:
        v1.read_namespaced_pod("g0", NS)
    assert e.value.status == 404
    evs = collect_events(v1, NS, lambda e: e["type"] == "DELETED",
                         resource_version=created.metadata.resource_version)
    assert evs[-1]["raw_object"]["metadata"]["name"] == "g0"


def test_finalizers_block_removal(v1: client.CoreV1Api) -> None:
    body = pod("fin", [PY, "-c", "print('x')"])
    body["metadata"]["finalizers"] = ["podfn.io/keep"]
    v1.create_namespaced_pod(NS, body)
    wait_for_pod(v1, NS, "fin", lambda p: phase(p) == "Succeeded")
    v1.delete_namespaced_pod("fin", NS)
    p = v1.read_namespaced_pod("fin", NS)
    assert p.metadata.deletion_timestamp is not None and p.metadata.finalizers == ["podfn.io/keep"]
    rv = p.metadata.resource_version
    v1.patch_namespaced_pod("fin", NS, [{"op": "remove", "path": "/metadata/finalizers"}])
    evs = collect_events(v1, NS, lambda e: e["type"] == "DELETED", resource_version=rv)
    assert [e["type"] for e in evs] == ["DELETED"]
    with pytest.raises(ApiException):
        v1.read_namespaced_pod("fin", NS)


# -- lifecycle ----------------------------------------------------------------------


def test_lifecycle_success(v1: client.CoreV1Api) -> None:
    created = v1.create_namespaced_pod(NS, pod("ok", [PY, "-c", "print('hi')"]))
    evs = collect_events(v1, NS, lambda e: phase(e["raw_object"]) == "Succeeded",
                         resource_version=created.metadata.resource_version)
    objs = [e["raw_object"] for e in evs]
    assert all(e["type"] == "MODIFIED" for e in evs)
    sched = next(o for o in objs if condition(o, "PodScheduled").get("status") == "True")
    assert sched["spec"]["nodeName"]
    assert any(container_state(o).get("waiting", {}).get("reason") == "ContainerCreating"
               for o in objs)
    run = next(o for o in objs if phase(o) == "Running")
    assert run["status"]["podIP"] and condition(run, "Ready")["status"] == "True"
    assert "startedAt" in container_state(run)["running"]
    term = container_state(objs[-1])["terminated"]
    assert (term["exitCode"], term["reason"]) == (0, "Completed")
    assert term["startedAt"] and term["finishedAt"]
    order = [objs.index(sched), objs.index(run), len(objs) - 1]
    assert order == sorted(order)


def test_lifecycle_failure_exit_code(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("bad", [PY, "-c", "raise SystemExit(3)"]))
    p = wait_for_pod(v1, NS, "bad", lambda p: phase(p) == "Failed")
    term = container_state(p)["terminated"]
    assert (term["exitCode"], term["reason"]) == (3, "Error")


def test_logs_and_env(sim: KubeSim, v1: client.CoreV1Api) -> None:
    sim.kubelet.config.base_env["BASE_ONLY"] = "base"
    sim.kubelet.config.base_env["OVERRIDE"] = "base"
    code = "import os; print(os.environ['BASE_ONLY'], os.environ['OVERRIDE'], " \
           "os.environ['POD'], os.environ['REF']); print('line2')"
    env = [{"name": "OVERRIDE", "value": "pod"},
           {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "REF", "value": "$(POD)-x"}]
    v1.create_namespaced_pod(NS, pod("logs", [PY, "-c", code], env=env))
    wait_for_pod(v1, NS, "logs", lambda p: phase(p) == "Succeeded")
    assert v1.read_namespaced_pod_log("logs", NS) == "base pod logs logs-x\nline2\n"
    assert v1.read_namespaced_pod_log("logs", NS, tail_lines=1) == "line2\n"
    code_, headers, _body = raw(sim, "GET", f"/api/v1/namespaces/{NS}/pods/logs/log")
    assert code_ == 200 and headers["Content-Type"].startswith("text/plain")


def test_logs_of_waiting_container_is_400(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("nolog", SLEEP, image="does-not-exist"))
    with pytest.raises(ApiException) as e:
        v1.read_namespaced_pod_log("nolog", NS)
    assert e.value.status == 400 and "is waiting to start" in status_of(e.value)["message"]


def test_secret_env_and_missing_secret(v1: client.CoreV1Api) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    v1.create_namespaced_pod(NS, pod("sec", [PY, "-c", "import os; print(os.environ['TOKEN'])"],
                                     env=env))
    p = wait_for_pod(v1, NS, "sec", lambda p: container_state(p).get("waiting", {}).get(
        "reason") == "CreateContainerConfigError")
    assert phase(p) == "Pending"
    assert container_state(p)["waiting"]["message"] == 'secret "creds" not found'
    s = v1.create_namespaced_secret(NS, {"metadata": {"name": "creds"},
                                         "data": {"token": base64.b64encode(b"s3cr3t").decode()},
                                         "stringData": {"plain": "p"}})
    assert s.type == "Opaque" and base64.b64decode(s.data["plain"]) == b"p"
    assert v1.read_namespaced_secret("creds", NS).data["token"] == s.data["token"]
    assert [x.metadata.name for x in v1.list_namespaced_secret(NS).items] == ["creds"]
    wait_for_pod(v1, NS, "sec", lambda p: phase(p) == "Succeeded")
    assert v1.read_namespaced_pod_log("sec", NS) == "s3cr3t\n"


def test_missing_secret_key(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_secret(NS, {"metadata": {"name": "k"}, "stringData": {"a": "1"}})
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "k", "key": "b"}}}]
    v1.create_namespaced_pod(NS, pod("key", SLEEP, env=env))
    p = wait_for_pod(v1, NS, "key", lambda p: "CreateContainerConfigError" in json.dumps(p))
    assert "couldn't find key b" in container_state(p)["waiting"]["message"]


def test_active_deadline_seconds(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("dl", SLEEP, activeDeadlineSeconds=1))
    p = wait_for_pod(v1, NS, "dl", lambda p: phase(p) == "Failed")
    assert p["status"]["reason"] == "DeadlineExceeded"
    assert "terminated" in container_state(p)


# -- watch --------------------------------------------------------------------------


def test_watch_from_rv_replays_in_order_and_unset_rv_gives_added(v1: client.CoreV1Api) -> None:
    first = v1.create_namespaced_pod(NS, pod("w1", SLEEP, image="does-not-exist"))
    v1.create_namespaced_pod(NS, pod("w2", SLEEP, image="does-not-exist"))
    v1.patch_namespaced_pod("w2", NS, {"metadata": {"labels": {"v": "2"}}})
    evs = collect_events(v1, NS, lambda e: e["raw_object"]["metadata"].get("labels", {}).get(
        "v") == "2", resource_version=first.metadata.resource_version)
    assert evs[0]["raw_object"]["metadata"]["name"] in ("w1", "w2")
    rvs = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in evs]
    assert rvs == sorted(rvs) and rvs[0] > int(first.metadata.resource_version)
    assert ("ADDED", "w2") in [(e["type"], e["raw_object"]["metadata"]["name"]) for e in evs]
    for rv in (None, "0"):
        kw = {} if rv is None else {"resource_version": rv}
        got = _first_n(v1, 2, **kw)
        assert sorted((e["type"], e["raw_object"]["metadata"]["name"]) for e in got) == [
            ("ADDED", "w1"), ("ADDED", "w2")]


def _first_n(v1: client.CoreV1Api, n: int, **kw: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def until(e: dict[str, Any]) -> bool:
        seen.append(e)
        return len(seen) >= n

    return collect_events(v1, NS, until, **kw)


def test_watch_selector_transitions(v1: client.CoreV1Api) -> None:
    created = v1.create_namespaced_pod(NS, pod("tr", SLEEP, image="does-not-exist",
                                               labels={"sel": "yes"}))
    rv = created.metadata.resource_version
    v1.patch_namespaced_pod("tr", NS, {"metadata": {"labels": {"sel": "no"}}})
    v1.patch_namespaced_pod("tr", NS, {"metadata": {"labels": {"sel": "yes", "done": "1"}}})
    evs = collect_events(v1, NS, lambda e: "done" in e["raw_object"]["metadata"]["labels"],
                         resource_version=rv, label_selector="sel=yes")
    types = [e["type"] for e in evs]
    assert "DELETED" in types and types[-1] == "ADDED"
    deleted = evs[types.index("DELETED")]["raw_object"]
    assert deleted["metadata"]["labels"]["sel"] == "yes"  # previous state ...
    assert int(deleted["metadata"]["resourceVersion"]) > int(rv)  # ... at the new version


def test_watch_field_selector_phase(v1: client.CoreV1Api) -> None:
    created = v1.create_namespaced_pod(NS, pod("fp", [PY, "-c", "pass"]))
    evs = collect_events(v1, NS, lambda e: True, field_selector="status.phase=Succeeded",
                         resource_version=created.metadata.resource_version)
    assert evs[0]["type"] == "ADDED" and phase(evs[0]["raw_object"]) == "Succeeded"


def test_watch_timeout_seconds_closes_stream(v1: client.CoreV1Api) -> None:
    start = time.monotonic()
    events = list(watch.Watch().stream(v1.list_namespaced_pod, NS, timeout_seconds=1))
    assert events == [] and 0.9 <= time.monotonic() - start < 5


def test_watch_bookmarks(v1: client.CoreV1Api) -> None:
    created = v1.create_namespaced_pod(NS, pod("bm", SLEEP, image="does-not-exist"))
    w = watch.Watch()
    stream = w.stream(v1.list_namespaced_pod, NS, allow_watch_bookmarks=True, timeout_seconds=5,
                      resource_version=created.metadata.resource_version)
    try:
        bookmark = next(e for e in stream if e["type"] == "BOOKMARK")
    finally:
        stream.close()
    obj = bookmark["raw_object"]
    assert obj["kind"] == "Pod" and set(obj["metadata"]) == {"resourceVersion"}
    assert int(obj["metadata"]["resourceVersion"]) >= int(created.metadata.resource_version)
    assert w.resource_version == obj["metadata"]["resourceVersion"]


def test_watch_410_as_http_status(sim: KubeSim, v1: client.CoreV1Api) -> None:
    old = v1.create_namespaced_pod(NS, pod("e1", SLEEP)).metadata.resource_version
    v1.create_namespaced_pod(NS, pod("e2", SLEEP))
    sim.faults.set_gone_mode("http")
    sim.faults.expire_resource_versions()
    with pytest.raises(ApiException) as e:
        list(watch.Watch().stream(v1.list_namespaced_pod, NS, resource_version=old,
                                  timeout_seconds=2))
    assert e.value.status == 410
    assert status_of(e.value)["reason"] == "Expired"
    # a list gives a fresh version to watch from
    fresh = v1.list_namespaced_pod(NS).metadata.resource_version
    v1.create_namespaced_pod(NS, pod("e3", SLEEP))
    got = _first_n(v1, 1, resource_version=fresh, field_selector="metadata.name=e3")
    assert (got[0]["type"], got[0]["raw_object"]["metadata"]["name"]) == ("ADDED", "e3")


def test_watch_410_as_error_event(sim: KubeSim, v1: client.CoreV1Api) -> None:
    old = v1.create_namespaced_pod(NS, pod("e1", SLEEP)).metadata.resource_version
    v1.create_namespaced_pod(NS, pod("e2", SLEEP))
    assert sim.faults.gone_mode == "event"  # the default: the watch cache's 200 + ERROR
    sim.faults.expire_resource_versions()
    code, _, body = raw(sim, "GET", f"/api/v1/namespaces/{NS}/pods?watch=1&resourceVersion={old}")
    event = json.loads(body.splitlines()[0])
    assert code == 200 and event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    # with timeout_seconds the client does not retry: the ERROR event surfaces as ApiException
    with pytest.raises(ApiException) as e:
        list(watch.Watch().stream(v1.list_namespaced_pod, NS, resource_version=old,
                                  timeout_seconds=2))
    assert e.value.status == 410 and e.value.reason.startswith("Expired: too old resource")


def test_watch_all_namespaces(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod("ns-a", pod("x", SLEEP, image="does-not-exist"))
    v1.create_namespaced_pod("ns-b", pod("y", SLEEP, image="does-not-exist"))
    seen: set[str] = set()
    stream = watch.Watch().stream(v1.list_pod_for_all_namespaces, timeout_seconds=5)
    try:
        for e in stream:
            seen.add(e["raw_object"]["metadata"]["namespace"])
            if seen == {"ns-a", "ns-b"}:
                break
    finally:
        stream.close()
    assert seen == {"ns-a", "ns-b"}


# -- faults -------------------------------------------------------------------------


def test_fault_drop_watch_clean_client_resumes(sim: KubeSim, v1: client.CoreV1Api) -> None:
    created = v1.create_namespaced_pod(NS, pod("d1", SLEEP, image="does-not-exist"))
    w = watch.Watch()  # no timeout_seconds: the client reconnects from its last version
    stream = w.stream(v1.list_namespaced_pod, NS,
                      resource_version=created.metadata.resource_version)
    names = []
    dropped = False
    try:
        for e in stream:
            name = e["raw_object"]["metadata"]["name"]
            names.append((e["type"], name))
            # d1 has several events (its status moves on); drop and create d2 only once.
            if name == "d1" and not dropped and sim.faults.drop_watches() == 1:
                dropped = True
                v1.create_namespaced_pod(NS, pod("d2", SLEEP, image="does-not-exist"))
            if name == "d2":
                w.stop()
    finally:
        stream.close()
    assert ("ADDED", "d2") in names


def test_fault_drop_watch_half_written(sim: KubeSim, v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("h1", SLEEP, image="does-not-exist"))
    stream = watch.Watch().stream(v1.list_namespaced_pod, NS)
    try:
        with pytest.raises(urllib3.exceptions.ProtocolError):
            for _ in stream:
                sim.faults.drop_watches(partial=True)
    finally:
        stream.close()
    code, _, body = raw(sim, "POST", "/_sim/faults/drop_watches", {"partial": True})
    assert code == 200 and isinstance(json.loads(body)["result"], int)


def test_fault_fail_requests(sim: KubeSim, v1: client.CoreV1Api) -> None:
    sim.faults.fail_requests("create", "pods", count=2, code=503, retry_after=7)
    for _ in range(2):
        with pytest.raises(ApiException) as e:
            v1.create_namespaced_pod(NS, pod("f", SLEEP))
        assert e.value.status == 503 and e.value.headers["Retry-After"] == "7"
        assert status_of(e.value)["details"]["retryAfterSeconds"] == 7
    v1.create_namespaced_pod(NS, pod("f", SLEEP))  # the third one goes through
    sim.faults.fail_requests("get", "pods", code=500)
    with pytest.raises(ApiException) as e:
        v1.read_namespaced_pod("f", NS)
    assert e.value.status == 500 and status_of(e.value)["reason"] == "InternalError"
    # urllib3 retries GETs answered 429 + Retry-After (up to 3 times), POSTs never
    sim.faults.fail_requests("list", "pods", count=1, code=429, retry_after=0)
    assert len(v1.list_namespaced_pod(NS).items) == 1
    sim.faults.fail_requests("list", "pods", count=4, code=429, retry_after=0)
    with pytest.raises(ApiException) as e:
        v1.list_namespaced_pod(NS)
    assert e.value.status == 429 and status_of(e.value)["reason"] == "TooManyRequests"
    code, _, _body = raw(sim, "POST", "/_sim/faults/fail_requests",
                        {"verb": "watch", "resource": "pods", "code": 500})
    assert code == 200
    with pytest.raises(ApiException) as e:
        list(watch.Watch().stream(v1.list_namespaced_pod, NS, timeout_seconds=1))
    assert e.value.status == 500
    assert raw(sim, "POST", "/_sim/faults/nope", {})[0] == 404
    assert raw(sim, "POST", "/_sim/faults/fail_requests", {"bogus": 1})[0] == 400


def test_fault_latency(sim: KubeSim, v1: client.CoreV1Api) -> None:
    sim.faults.set_request_latency(0.3)
    start = time.monotonic()
    v1.list_namespaced_pod(NS)
    assert time.monotonic() - start >= 0.3
    sim.faults.set_request_latency(0)
    v1.create_namespaced_pod(NS, pod("lat", SLEEP, image="does-not-exist"))
    sim.faults.set_watch_event_latency(0.3)
    start = time.monotonic()
    _first_n(v1, 1)
    assert time.monotonic() - start >= 0.3


def test_fault_oom_kill(sim: KubeSim, v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("oom", SLEEP))
    wait_for_pod(v1, NS, "oom", running)
    sim.faults.oom_kill(NS, "oom")
    p = wait_for_pod(v1, NS, "oom", lambda p: phase(p) == "Failed")
    term = container_state(p)["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "OOMKilled")


@pytest.mark.parametrize("reason", ["TerminationByKubelet", "EvictionByEvictionAPI"])
def test_fault_evict(sim: KubeSim, v1: client.CoreV1Api, reason: str) -> None:
    v1.create_namespaced_pod(NS, pod("ev", SLEEP))
    wait_for_pod(v1, NS, "ev", running)
    sim.faults.evict(NS, "ev", reason=reason)
    p = wait_for_pod(v1, NS, "ev", lambda p: phase(p) == "Failed")
    assert p["status"]["reason"] == "Evicted" and p["status"]["message"]
    dt = condition(p, "DisruptionTarget")
    assert (dt["status"], dt["reason"]) == ("True", reason)


def test_fault_image_pull(sim: KubeSim, v1: client.CoreV1Api) -> None:
    created = v1.create_namespaced_pod(NS, pod("ip", SLEEP, image="registry/does-not-exist:1"))
    evs = collect_events(v1, NS, lambda e: container_state(e["raw_object"]).get(
        "waiting", {}).get("reason") == "ImagePullBackOff",
        resource_version=created.metadata.resource_version)
    reasons = [container_state(e["raw_object"]).get("waiting", {}).get("reason") for e in evs]
    assert reasons.index("ErrImagePull") < reasons.index("ImagePullBackOff")
    assert all(phase(e["raw_object"]) == "Pending" for e in evs)
    sim.faults.fail_image_pulls("private/")
    v1.create_namespaced_pod(NS, pod("ip2", SLEEP, image="private/img:2"))
    wait_for_pod(v1, NS, "ip2", lambda p: "ErrImagePull" in json.dumps(container_state(p))
                 or "ImagePullBackOff" in json.dumps(container_state(p)))


def test_fault_unschedulable_then_scheduled(sim: KubeSim, v1: client.CoreV1Api) -> None:
    sim.faults.set_unschedulable()
    v1.create_namespaced_pod(NS, pod("un", SLEEP))
    p = wait_for_pod(v1, NS, "un", lambda p: condition(p, "PodScheduled").get("status") == "False")
    c = condition(p, "PodScheduled")
    assert c["reason"] == "Unschedulable"
    assert c["message"] == "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    assert phase(p) == "Pending" and not p["spec"].get("nodeName")
    sim.faults.set_unschedulable(None)
    wait_for_pod(v1, NS, "un", running)


def test_unschedulable_by_capacity(tmp_path: Path) -> None:
    with KubeSim(base_env=base_env(), node_capacity={"nvidia.com/gpu": "1", "cpu": "2"}) as s, \
            config.new_client_from_config(str(s.kubeconfig(tmp_path / "kc"))) as ac:
        api = client.CoreV1Api(ac)
        api.create_namespaced_pod(NS, pod("big", SLEEP, resources={
            "limits": {"nvidia.com/gpu": "2"}, "requests": {"cpu": "500m"}}))
        p = wait_for_pod(api, NS, "big", lambda p: condition(p, "PodScheduled").get(
            "reason") == "Unschedulable")
        assert "Insufficient nvidia.com/gpu" in condition(p, "PodScheduled")["message"]
        api.create_namespaced_pod(NS, pod("small", SLEEP, resources={
            "limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "1500m"}}))
        wait_for_pod(api, NS, "small", running)


# -- processes and the CLI --------------------------------------------------------------


def test_stop_kills_container_processes(tmp_path: Path) -> None:
    s = KubeSim(base_env=base_env()).start()
    try:
        with config.new_client_from_config(str(s.kubeconfig(tmp_path / "kc"))) as ac:
            api = client.CoreV1Api(ac)
            api.create_namespaced_pod(NS, pod("long", SLEEP))
            wait_for_pod(api, NS, "long", running)
            proc = s.kubelet.worker(NS, "long").proc
    finally:
        s.stop()
    assert proc is not None and proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)


def test_cli_process(tmp_path: Path) -> None:
    kc = tmp_path / "kubeconfig"
    here = Path(__file__).resolve().parent
    proc = subprocess.Popen([PY, str(here / "kubesim"), "--kubeconfig", str(kc)],
                            stdout=subprocess.PIPE, text=True, cwd=str(tmp_path))
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with config.new_client_from_config(str(kc)) as ac:
            assert ac.configuration.host == url
            assert client.CoreV1Api(ac).list_namespaced_pod(NS).items == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- more API surface ------------------------------------------------------------------


def test_watch_410_error_event_without_timeout_retries_once(
    sim: KubeSim, v1: client.CoreV1Api
) -> None:
    old = v1.create_namespaced_pod(NS, pod("r1", SLEEP)).metadata.resource_version
    v1.create_namespaced_pod(NS, pod("r2", SLEEP))
    sim.faults.set_gone_mode("event")
    sim.faults.expire_resource_versions()
    with pytest.raises(ApiException) as e:
        list(watch.Watch().stream(v1.list_namespaced_pod, NS, resource_version=old))
    assert e.value.status == 410
    assert sim.faults.requests_seen("watch", "pods") == 2  # one silent retry, then it gives up


def test_graceful_delete_of_waiting_pod_ends_failed(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("wp", SLEEP, image="does-not-exist"))
    p = wait_for_pod(v1, NS, "wp", lambda p: "ImagePullBackOff" in json.dumps(p["status"]))
    v1.delete_namespaced_pod("wp", NS, grace_period_seconds=30)
    evs = collect_events(v1, NS, lambda e: e["type"] == "DELETED",
                         resource_version=p["metadata"]["resourceVersion"])
    last = evs[-1]["raw_object"]
    assert phase(last) == "Failed"
    assert container_state(last)["terminated"]["reason"] == "ContainerStatusUnknown"


def test_delete_unscheduled_pod_is_immediate(sim: KubeSim, v1: client.CoreV1Api) -> None:
    sim.faults.set_unschedulable("0/3 nodes are available: 3 node(s) had untolerated taint.")
    v1.create_namespaced_pod(NS, pod("us", SLEEP))
    wait_for_pod(v1, NS, "us", lambda p: condition(p, "PodScheduled").get("status") == "False")
    out = v1.delete_namespaced_pod("us", NS)  # default grace 30, but no node: at once
    assert out.metadata.deletion_grace_period_seconds == 0
    with pytest.raises(ApiException):
        v1.read_namespaced_pod("us", NS)


def test_log_follow_streams_until_exit(sim: KubeSim, v1: client.CoreV1Api) -> None:
    script = "import time; print('a', flush=True); time.sleep(0.3); print('b')"
    v1.create_namespaced_pod(NS, pod("fl", [PY, "-c", script]))
    wait_for_pod(v1, NS, "fl", running)
    code, headers, body = raw(sim, "GET", f"/api/v1/namespaces/{NS}/pods/fl/log?follow=true")
    assert code == 200 and headers.get("Transfer-Encoding") == "chunked"
    assert body == b"a\nb\n"


def test_replace_pod_and_status(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("rp", SLEEP, image="does-not-exist"))
    # the kubelet stops writing once the pod is in ImagePullBackOff
    wait_for_pod(v1, NS, "rp", lambda p: "ImagePullBackOff" in json.dumps(p["status"]))
    cur = v1.read_namespaced_pod("rp", NS)
    cur.metadata.labels["replaced"] = "yes"
    cur.status.phase = "Succeeded"  # ignored on the main resource
    out = v1.replace_namespaced_pod("rp", NS, cur)
    assert out.metadata.labels["replaced"] == "yes" and out.status.phase == "Pending"
    with pytest.raises(ApiException) as e:  # stale resourceVersion
        v1.replace_namespaced_pod("rp", NS, cur)
    assert e.value.status == 409


def test_secret_delete_returns_status(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_secret(NS, {"metadata": {"name": "gone"}, "stringData": {"a": "b"}})
    st = v1.api_client.sanitize_for_serialization(v1.delete_namespaced_secret("gone", NS))
    assert (st["kind"], st["status"], st["details"]["name"]) == ("Status", "Success", "gone")
    with pytest.raises(ApiException) as e:
        v1.read_namespaced_secret("gone", NS)
    assert e.value.status == 404
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_secret(NS, {"metadata": {"name": "b"}, "data": {"k": "!!"}})
    assert e.value.status == 422


def test_active_deadline_lowered_on_running_pod(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("dl2", SLEEP, activeDeadlineSeconds=600))
    wait_for_pod(v1, NS, "dl2", running)
    v1.patch_namespaced_pod("dl2", NS, {"spec": {"activeDeadlineSeconds": 1}})
    p = wait_for_pod(v1, NS, "dl2", lambda p: phase(p) == "Failed")
    assert p["status"]["reason"] == "DeadlineExceeded"
    with pytest.raises(ApiException) as e:  # raising it again is rejected
        v1.patch_namespaced_pod("dl2", NS, {"spec": {"activeDeadlineSeconds": 5}})
    assert e.value.status == 422


def test_history_limit_moves_compaction_point() -> None:
    from kubesim.errors import ApiError
    from kubesim.store import Store

    store = Store(history_limit=4)
    first = store.create("secrets", {"metadata": {"namespace": "n", "name": "s0"}})
    for i in range(1, 6):
        store.create("secrets", {"metadata": {"namespace": "n", "name": f"s{i}"}})
    with pytest.raises(ApiError) as e:
        store.check_watch_start(int(first["metadata"]["resourceVersion"]))
    assert (e.value.code, e.value.reason) == (410, "Expired")
    retained = store.events_after(store.compact_rv)
    assert [ev.name for ev in retained][-1] == "s5" and len(retained) <= 4
    store.check_watch_start(store.rv)  # the current version is always fine
