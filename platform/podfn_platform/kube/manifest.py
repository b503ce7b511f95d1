"""The pod manifest for one attempt: a pure function of the call's spec and the platform's settings.

Pure so it can be unit-tested and validated against the Kubernetes JSON
schemas without a cluster. What the hints become:

- `cpu` -> CPU request (and limit when `cpu_limit`), `memory` -> memory
  request and limit, `gpu` -> `<gpu_vendor>/gpu` limit (nvidia.com by default).
- `image` -> the container image; default: the runtime image tagged for the
  client's Python major.minor.
- `env`, `node_selector`, `tolerations`, `labels`, `annotations`,
  `service_account` -> the same fields of the pod; `secrets` -> `envFrom`
  with a `secretRef` per Secret (in the runtime namespace).
- `pod_patch` -> merged last (see `merge_patch`).

Always: `restartPolicy: Never`, `activeDeadlineSeconds` from `timeout`
(except for a warm worker's pod, see below),
`automountServiceAccountToken: false`, a security context that passes the
"restricted" Pod Security Standard, and the runtime role's database URL
from the runtime database Secret (never the platform's Secret, never plain
text in the manifest). The attempt's environment (controller/environment.py:
its secret and its nested-call token, plus the user's `env`) is plain values
in the pod spec: the controller never needs `get` on Secrets, and anyone who
may read pods in the runtime namespace may read them; both die with the
attempt (docs/security.md).

A warm worker's pod (docs/warm-workers.md) runs call after call of its pool,
so a deadline for the whole pod would cut its later calls short: it gets no
`activeDeadlineSeconds`, the launcher times each call out by deleting the
pod. It is marked so that a relist (a restarted controller) finds it again:
annotation `podfn.dev/worker`, the worker's name (`<call id>/<attempt>` of
the attempt it was launched for), and label `podfn.dev/warm: "true"` (for
selectors: `kubectl get pods -l podfn.dev/warm=true`).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

LABEL_PREFIX = "podfn.dev"
MANAGED_BY = {"app.kubernetes.io/managed-by": "podfn"}
SELECTOR = "app.kubernetes.io/managed-by=podfn"
CONTAINER = "runtime"
RUNTIME_UID = 10001
WARM_LABEL = f"{LABEL_PREFIX}/warm"
WORKER_ANNOTATION = f"{LABEL_PREFIX}/worker"


@dataclass(frozen=True)
class PodSettings:
    namespace: str
    runtime_image: str           # repository; the tag is py<major.minor>
    database_secret: str         # Secret holding the runtime role's database URL for pods
    database_secret_key: str = "url"
    default_service_account: str | None = None
    max_result_bytes: int = 64 * 1024 * 1024  # PODFN_MAX_RESULT_BYTES, for the runtime
    # Added to activeDeadlineSeconds, which counts the image pull too; the launcher
    # lowers it to the timeout once the container runs.
    image_pull_seconds: int = 0


def pod_name(call_id: str, attempt: int) -> str:
    """Deterministic and DNS-safe: creating it twice answers 409, never a second pod."""
    safe = re.sub(r"[^a-z0-9-]", "-", call_id.lower()).strip("-")[:40]
    return f"podfn-{safe}-{attempt}"


def label_value(text: str) -> str:
    """`text` as a valid label value (<= 63 chars of [A-Za-z0-9._-], alphanumeric ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]", "_", text)[-63:]
    return value.strip("._-")


def runtime_image(repository: str, client_python: str) -> str:
    major_minor = ".".join(client_python.split(".")[:2])
    return f"{repository}:py{major_minor}"


def _resources(spec: dict[str, Any]) -> dict[str, dict[str, str]]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.get("cpu"):
        requests["cpu"] = spec["cpu"]
        if spec.get("cpu_limit"):
            limits["cpu"] = spec["cpu"]
    if spec.get("memory"):
        requests["memory"] = limits["memory"] = spec["memory"]
    if spec.get("gpu"):
        limits[f"{spec.get('gpu_vendor') or 'nvidia.com'}/gpu"] = str(spec["gpu"])
    out: dict[str, dict[str, str]] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def merge_patch(base: Any, patch: Any) -> Any:
    """Merge `pod_patch` into the manifest.

    Rules: mappings merge key by key (recursively); a `null` value removes
    the key; the lists `containers`, `initContainers` and `env`/`volumes`/
    `volumeMounts` merge by each item's `name` (an item with a new name is
    appended); every other list is replaced whole; scalars are replaced.
    """
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge_field(key, merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    return copy.deepcopy(patch)


_MERGE_BY_NAME = frozenset({"containers", "initContainers", "env", "volumes", "volumeMounts",
                            "ports"})


def _merge_field(key: str, base: Any, patch: Any) -> Any:
    if key in _MERGE_BY_NAME and isinstance(base, list) and isinstance(patch, list):
        merged = [copy.deepcopy(item) for item in base]
        index = {item.get("name"): i for i, item in enumerate(merged) if isinstance(item, dict)}
        for item in patch:
            name = item.get("name") if isinstance(item, dict) else None
            if name in index:
                merged[index[name]] = merge_patch(merged[index[name]], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return merge_patch(base, patch)


def build_pod(*, call_id: str, attempt: int, function_name: str, spec: dict[str, Any],
              client_python: str, settings: PodSettings,
              runtime_env: dict[str, str] | None = None, worker: str = "") -> dict[str, Any]:
    name = pod_name(call_id, attempt)
    env: list[dict[str, Any]] = [
        {"name": "PODFN_CALL_ID", "value": call_id},
        {"name": "PODFN_ATTEMPT", "value": str(attempt)},
        {"name": "PODFN_RUNTIME_DATABASE_URL", "valueFrom": {"secretKeyRef": {
            "name": settings.database_secret, "key": settings.database_secret_key}}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PODFN_MAX_RESULT_BYTES", "value": str(settings.max_result_bytes)},
    ]
    reserved = {e["name"] for e in env}
    given = runtime_env if runtime_env is not None else {
        k: str(v) for k, v in (spec.get("env") or {}).items()}
    env += [{"name": k, "value": v} for k, v in sorted(given.items()) if k not in reserved]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.get("image") or runtime_image(settings.runtime_image, client_python),
        "command": ["python", "-m", "podfn_runtime"],
        "env": env,
        # `secrets=`: each Secret's keys as variables, resolved by the kubelet (the
        # controller never reads them); `env` above wins over a key of the same name.
        **({"envFrom": [{"secretRef": {"name": name}} for name in spec["secrets"]]}
           if spec.get("secrets") else {}),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    labels = {
        **spec.get("labels", {}),
        **MANAGED_BY,
        f"{LABEL_PREFIX}/call-id": label_value(call_id),
        f"{LABEL_PREFIX}/attempt": str(attempt),
        f"{LABEL_PREFIX}/function": label_value(function_name) or "unnamed",
        **({WARM_LABEL: "true"} if worker else {}),
    }
    annotations = {
        **spec.get("annotations", {}),
        f"{LABEL_PREFIX}/call-id": call_id,
        f"{LABEL_PREFIX}/attempt": str(attempt),
        f"{LABEL_PREFIX}/function": function_name,
        **({WORKER_ANNOTATION: worker} if worker else {}),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
            "fsGroup": RUNTIME_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
    }
    if spec.get("timeout") and not worker:
        pod_spec["activeDeadlineSeconds"] = max(1, math.ceil(spec["timeout"])) + \
            settings.image_pull_seconds
    if spec.get("node_selector"):
        pod_spec["nodeSelector"] = dict(spec["node_selector"])
    if spec.get("tolerations"):
        pod_spec["tolerations"] = copy.deepcopy(spec["tolerations"])
    service_account = spec.get("service_account") or settings.default_service_account
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels,
                     "annotations": annotations},
        "spec": pod_spec,
    }
    if spec.get("pod_patch"):
        manifest = merge_patch(manifest, spec["pod_patch"])
        # The identity of the pod is not the user's to change.
        manifest["metadata"]["name"] = name
        manifest["metadata"]["namespace"] = settings.namespace
        manifest["metadata"].setdefault("labels", {}).update({
            k: labels[k] for k in labels if k.startswith(LABEL_PREFIX) or k in MANAGED_BY})
        manifest["metadata"].setdefault("annotations", {}).update({
            k: annotations[k] for k in annotations if k.startswith(LABEL_PREFIX)})
        if worker:  # the launcher times a warm pod's calls out; a pod deadline would not
            manifest["spec"].pop("activeDeadlineSeconds", None)
    return manifest


def attempt_of(pod: dict[str, Any]) -> tuple[str, int] | None:
    """(call id, attempt) from a pod's annotations, or None if it is not ours."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    call_id = annotations.get(f"{LABEL_PREFIX}/call-id")
    attempt = annotations.get(f"{LABEL_PREFIX}/attempt")
    if not call_id or not attempt or not str(attempt).isdigit():
        return None
    return call_id, int(attempt)


def worker_of(pod: dict[str, Any]) -> str:
    """The warm worker a pod runs (its name), or "" for a pod of one attempt."""
    # By the annotation (a listed pod keeps podfn's annotations, not its labels:
    # client.slim). The name is the attempt the pod was launched for, so an
    # annotation naming another one is not taken for a worker.
    # A standing worker (`min_workers`) was launched for no call: as `(<its name>, 0)`,
    # and its annotation is its name alone.
    annotations = pod.get("metadata", {}).get("annotations") or {}
    key = attempt_of(pod)
    if key is None:
        return ""
    worker = str(annotations.get(WORKER_ANNOTATION) or "")
    if worker == f"{key[0]}/{key[1]}" or (key[1] == 0 and worker == key[0]):
        return worker
    return ""
