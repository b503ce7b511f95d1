"""The pod manifest: a pure function of the spec, valid for every Kubernetes version we claim."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from k8s_versions import SUPPORTED
from podfn.spec import validate as validate_spec
from podfn_platform.kube.client import slim
from podfn_platform.kube.manifest import (
    WARM_LABEL,
    WORKER_ANNOTATION,
    PodSettings,
    attempt_of,
    build_pod,
    label_value,
    merge_patch,
    pod_name,
    worker_of,
)

SETTINGS = PodSettings(namespace="jobs", runtime_image="registry.example/podfn-runtime",
                       database_secret="podfn-runtime-database")


def pod(spec: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"call_id": "0f3a9c2e5b7d4e1f8a6b3c2d1e0f9a8b", "attempt": 2,
                            "function_name": "my_module.train_model", "client_python": "3.11.7",
                            "settings": SETTINGS, "spec": validate_spec(spec or {})}
    args.update(kwargs)
    return build_pod(**args)


FULL_SPEC = {
    "cpu": "2", "cpu_limit": True, "memory": "4Gi", "gpu": 1, "image": "me/img:1",
    "env": {"MODE": "train"}, "timeout": 90.5, "node_selector": {"pool": "gpu"},
    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "labels": {"team": "ml"}, "annotations": {"owner": "me@example.com"},
    "service_account": "trainer",
}


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize("spec", [{}, FULL_SPEC], ids=["defaults", "every-hint"])
def test_valid_against_the_kubernetes_schemas_strict(version: str, spec: dict[str, Any]) -> None:
    kubernetes_validate.validate(pod(spec), version, strict=True)


WORKER = "0f3a9c2e5b7d4e1f8a6b3c2d1e0f9a8b/2"


@pytest.mark.parametrize("version", SUPPORTED)
def test_a_warm_pod_is_valid_and_has_no_pod_deadline(version: str) -> None:
    # A deadline for the whole pod would cut a warm worker's later calls short:
    # the launcher times each call out itself.
    warm = pod({**FULL_SPEC, "max_calls_per_worker": None}, worker=WORKER)
    kubernetes_validate.validate(warm, version, strict=True)
    assert "activeDeadlineSeconds" not in warm["spec"]
    assert warm["metadata"]["labels"][WARM_LABEL] == "true"
    assert warm["metadata"]["annotations"][WORKER_ANNOTATION] == WORKER
    assert pod(FULL_SPEC)["spec"]["activeDeadlineSeconds"] == 91
    assert WARM_LABEL not in pod(FULL_SPEC)["metadata"]["labels"]


def test_a_relist_finds_a_warm_pod_by_its_annotation() -> None:
    warm = pod({"timeout": 5}, worker=WORKER)
    assert worker_of(slim(warm)) == WORKER  # what a list keeps of a pod
    assert worker_of(slim(pod({"timeout": 5}))) == ""
    # A pod_patch cannot unmark it, nor give it a deadline.
    patched = pod({"timeout": 5, "pod_patch": {
        "metadata": {"annotations": {WORKER_ANNOTATION: "other/1"}},
        "spec": {"activeDeadlineSeconds": 3}}}, worker=WORKER)
    assert worker_of(patched) == WORKER and "activeDeadlineSeconds" not in patched["spec"]
    # An annotation naming another attempt is not taken for a worker.
    forged = copy.deepcopy(warm)
    forged["metadata"]["annotations"][WORKER_ANNOTATION] = "someone-else/1"
    assert worker_of(forged) == ""
    # A standing worker was launched for no call, as (<its name>, 0).
    standing = pod({"timeout": 5}, call_id="standing-0123abcd", attempt=0,
                   worker="standing-0123abcd")
    assert worker_of(slim(standing)) == "standing-0123abcd"
    other = copy.deepcopy(standing)
    other["metadata"]["annotations"][WORKER_ANNOTATION] = "standing-ffff"
    assert worker_of(other) == ""


def test_hints_become_the_pod_spec() -> None:
    manifest = pod(FULL_SPEC)
    spec = manifest["spec"]
    [container] = spec["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
    }
    assert container["image"] == "me/img:1"
    assert {"name": "MODE", "value": "train"} in container["env"]
    assert spec["activeDeadlineSeconds"] == 91
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == FULL_SPEC["tolerations"]
    assert spec["serviceAccountName"] == "trainer"
    assert manifest["metadata"]["labels"]["team"] == "ml"
    assert manifest["metadata"]["annotations"]["owner"] == "me@example.com"


def test_defaults_are_safe() -> None:
    manifest = pod()
    spec = manifest["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert "activeDeadlineSeconds" not in spec
    [container] = spec["containers"]
    assert container["image"] == "registry.example/podfn-runtime:py3.11"
    assert container["command"] == ["python", "-m", "podfn_runtime"]
    assert "resources" not in container


def test_cpu_limit_only_when_asked_and_other_gpu_vendors() -> None:
    [container] = pod({"cpu": "500m", "gpu": 2, "gpu_vendor": "amd.com"})["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "500m"}, "limits": {"amd.com/gpu": "2"}}


def test_database_url_comes_from_a_secret_never_plain_text() -> None:
    manifest = pod({"env": {"PODFN_RUNTIME_DATABASE_URL": "postgresql://leak"}})
    env = {e["name"]: e for e in manifest["spec"]["containers"][0]["env"]}
    assert "PODFN_DATABASE_URL" not in env
    assert env["PODFN_RUNTIME_DATABASE_URL"] == {"name": "PODFN_RUNTIME_DATABASE_URL", "valueFrom": {
        "secretKeyRef": {"name": "podfn-runtime-database", "key": "url"}}}
    assert "postgresql://" not in repr(manifest)


def test_restricted_pod_security_standard() -> None:
    """The checks of the 'restricted' profile that apply to a pod like ours."""
    spec = pod(FULL_SPEC)["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
    for key in ("hostNetwork", "hostPID", "hostIPC", "volumes"):
        assert key not in spec
    for container in spec["containers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert not ctx.get("privileged")
        assert "ports" not in container


def test_names_are_deterministic_and_dns_safe() -> None:
    name = pod_name("0f3a9c2e5b7d4e1f8a6b3c2d1e0f9a8b", 12)
    assert name == pod_name("0f3a9c2e5b7d4e1f8a6b3c2d1e0f9a8b", 12)
    assert name != pod_name("0f3a9c2e5b7d4e1f8a6b3c2d1e0f9a8b", 13)
    assert len(name) <= 63 and name == name.lower()
    assert pod_name("Weird_ID!", 1) == "podfn-weird-id-1"


def test_labels_are_sanitized_annotations_exact() -> None:
    manifest = pod(function_name="my module:<lambda>" + "x" * 80)
    labels, annotations = manifest["metadata"]["labels"], manifest["metadata"]["annotations"]
    assert len(labels["podfn.dev/function"]) <= 63
    assert annotations["podfn.dev/function"] == "my module:<lambda>" + "x" * 80
    assert labels["app.kubernetes.io/managed-by"] == "podfn"
    assert attempt_of(manifest) == ("0f3a9c2e5b7d4e1f8a6b3c2d1e0f9a8b", 2)
    assert label_value("__a.b__") == "a.b"
    kubernetes_validate.validate(manifest, SUPPORTED[-1], strict=True)


def test_pod_patch_merge_rules() -> None:
    patch = {
        "metadata": {"labels": {"extra": "1"}, "name": "hijack"},
        "spec": {
            "priorityClassName": "batch",
            "containers": [
                {"name": "runtime", "env": [{"name": "EXTRA", "value": "2"}],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "sidecar", "image": "busybox"},
            ],
            "tolerations": [{"operator": "Exists"}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }
    manifest = pod({"tolerations": [{"key": "a", "operator": "Exists"}], "pod_patch": patch})
    spec = manifest["spec"]
    assert manifest["metadata"]["name"] == pod_name("0f3a9c2e5b7d4e1f8a6b3c2d1e0f9a8b", 2)
    assert manifest["metadata"]["labels"]["extra"] == "1"
    assert spec["priorityClassName"] == "batch"
    assert [c["name"] for c in spec["containers"]] == ["runtime", "sidecar"]
    runtime = spec["containers"][0]
    assert runtime["command"] == ["python", "-m", "podfn_runtime"]  # merged, not replaced
    env = [e["name"] for e in runtime["env"]]
    assert env[0] == "PODFN_CALL_ID" and env[-1] == "EXTRA"
    assert spec["tolerations"] == [{"operator": "Exists"}]  # other lists replace
    kubernetes_validate.validate(manifest, SUPPORTED[-1], strict=True)


def test_merge_patch_null_removes_and_inputs_are_untouched() -> None:
    base = {"a": {"b": 1, "c": 2}, "l": [1]}
    snapshot = copy.deepcopy(base)
    assert merge_patch(base, {"a": {"c": None}, "l": [2]}) == {"a": {"b": 1}, "l": [2]}
    assert base == snapshot
