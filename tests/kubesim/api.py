"""Resource semantics of the registry: defaulting, validation, updates, deletion.

What the API server does between the HTTP layer and storage, for pods and
secrets:

* create: generateName (+5 random chars), uid, creationTimestamp, defaults
  (restartPolicy Always, dnsPolicy, schedulerName, terminationGracePeriodSeconds
  30, serviceAccountName, imagePullPolicy, terminationMessagePath/Policy),
  status forced to ``{"phase": "Pending", "qosClass": ...}``;
* updates (PUT/PATCH) of the main resource keep the stored status, updates of
  ``/status`` keep everything but the status; identity metadata (name,
  namespace, uid, creationTimestamp, deletion fields) is kept from the stored
  object; a resourceVersion in the new object is an optimistic-concurrency
  precondition (409 Conflict on mismatch);
* pod spec is immutable except container images, activeDeadlineSeconds and
  additional tolerations (422 Forbidden, as the pod update validation);
* graceful deletion of pods: deletionTimestamp = now + grace,
  deletionGracePeriodSeconds = grace (MODIFIED), the kubelet finishes it;
  grace 0, unscheduled pods and pods in a terminal phase are deleted at once;
  a second delete can only shorten the grace period; finalizers hold the
  object until they are removed; Preconditions (uid, resourceVersion) honoured;
* secrets: ``stringData`` is folded into base64 ``data``; type defaults to
  Opaque; secrets are deleted immediately and DELETE answers with a Success
  Status (only the pod registry returns the deleted object).

* admission (admission.py), per namespace when set: LimitRange defaults,
  PodSecurity "restricted", ResourceQuota;
* field validation (``fieldValidation``): ``Strict`` refuses unknown fields
  with 400 BadRequest, ``Warn`` (the default, as since Kubernetes 1.27)
  accepts them and drops them, with a ``Warning`` header; ``Ignore`` drops
  them silently;
* lists page with ``limit``/``continue`` (store.py).

Simplifications: of admission plugins only those above (no ServiceAccount
token volume, no default tolerations), no managedFields, no dryRun, no
server-side apply, no deletecollection, identity metadata changes are
silently reverted instead of rejected.
"""

from __future__ import annotations

import base64
import copy
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from . import validation
from .admission import NamespacePolicy, apply_limit_range, check_pod_security, check_quota
from .errors import ApiError, conflict, invalid
from .patch import apply_patch
from .selectors import Selector
from .store import Obj, Store

KINDS = {"pods": "Pod", "secrets": "Secret"}
_GEN_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_IDENTITY = ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
             "deletionGracePeriodSeconds", "generateName", "selfLink")
TERMINAL = ("Succeeded", "Failed")


def now_rfc3339(delta_s: float = 0.0) -> str:
    """RFC 3339 UTC timestamp at second precision, like metav1.Time."""
    t = datetime.now(UTC) + timedelta(seconds=delta_s)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _qos(spec: Obj) -> str:
    containers = spec.get("containers") or []
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in lim or req.get(r, lim[r]) != lim[r]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _default_pod(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("serviceAccountName", spec.get("serviceAccount", "default"))
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for c in spec.get("containers") or []:
        if not isinstance(c, dict):
            continue
        image = str(c.get("image", ""))
        tag = image.rsplit("/", 1)[-1]
        latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
        c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})


def _mutable_spec_view(spec: Obj) -> Obj:
    """The pod spec with the fields an update may change blanked out."""
    view = copy.deepcopy(spec)
    for field in ("containers", "initContainers"):
        for c in view.get(field) or []:
            if isinstance(c, dict):
                c.pop("image", None)
    view.pop("activeDeadlineSeconds", None)
    view.pop("tolerations", None)
    return view


class Api:
    """Registry operations used by the HTTP server and by the kubelet."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.policies: dict[str, NamespacePolicy] = {}

    def strip_unknown(self, resource: str, body: Any, mode: str) -> list[str]:
        """Field validation of a pod body (in place): the warnings for ``Warn``."""
        if resource != "pods" or mode == "Ignore" or not isinstance(body, dict):
            unknown = []
        else:
            unknown = validation.unknown_pod_fields(body)
        if unknown and mode == "Strict":
            raise ApiError(400, "strict decoding error: " + ", ".join(
                f'unknown field "{f}"' for f in unknown), reason="BadRequest")
        if isinstance(body, dict) and resource == "pods":
            for path in validation.unknown_pod_fields(body):
                _drop_path(body, path)
        return [f'unknown field "{f}"' for f in unknown]

    # -- create ------------------------------------------------------------

    def create(self, resource: str, namespace: str, body: Any) -> Obj:
        kind = KINDS[resource]
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was not a JSON object")
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = "v1", kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(
                400,
                "the namespace of the provided object does not match the namespace "
                "sent on the request",
            )
        meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(_GEN_CHARS, k=5))
        name = meta.get("name") or ""
        causes: list[dict[str, str]] = []
        if not name:
            causes.append(validation.required("metadata.name", "name or generateName is required"))
        else:
            causes += validation.metadata(meta)
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        policy = self.policies.get(namespace)
        if resource == "pods":
            if policy is not None and not causes and isinstance(obj.get("spec"), dict):
                apply_limit_range(policy, obj)  # mutating admission runs before validation
            causes += validation.pod_spec(obj.get("spec"))
            if not causes:
                _default_pod(obj)
                obj["status"] = {"phase": "Pending", "qosClass": _qos(obj["spec"])}
                if policy is not None:  # validating admission, after validation passed
                    check_pod_security(policy, name, obj["spec"])
                    others, _ = self.store.list_objects("pods", namespace)
                    check_quota(policy, name, obj, others)
        else:
            self._fold_string_data(obj)
            obj.setdefault("type", "Opaque")
            causes += validation.secret(obj)
        if causes:
            raise invalid(kind, name, causes)
        return self.store.create(resource, obj)

    @staticmethod
    def _fold_string_data(obj: Obj) -> None:
        string_data = obj.pop("stringData", None) or {}
        if string_data:
            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()

    # -- read ----------------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        return self.store.get(resource, namespace, name)

    def list(
        self, resource: str, namespace: str | None, label: str | None, field: str | None,
        limit: int | None = None, token: str | None = None,
    ) -> Obj:
        selector = Selector(resource, label, field)
        following: str | None = None
        if limit or token:
            items, rv, following = self.store.list_page(
                resource, namespace, limit or 10**9, token, selector.matches)
        else:
            everything, rv = self.store.list_objects(resource, namespace)
            items = [o for o in everything if selector.matches(o)]
        meta: Obj = {"resourceVersion": str(rv)}
        if following:
            meta["continue"] = following
        return {"kind": KINDS[resource] + "List", "apiVersion": "v1", "metadata": meta,
                "items": items}

    # -- update ----------------------------------------------------------------

    def patch(
        self, resource: str, namespace: str, name: str, content_type: str, patch: Any,
        subresource: str | None = None,
    ) -> Obj:
        return self._update(
            resource, namespace, name, lambda cur: apply_patch(content_type, cur, patch),
            subresource,
        )

    def replace(
        self, resource: str, namespace: str, name: str, body: Any, subresource: str | None = None
    ) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was not a JSON object")
        body_meta = body.get("metadata") or {}
        if body_meta.get("name", name) != name:
            raise ApiError(400, "the name of the object does not match the name on the URL")
        return self._update(resource, namespace, name, lambda _cur: copy.deepcopy(body),
                            subresource)

    def _update(self, resource: str, namespace: str, name: str, make: Any,
                subresource: str | None) -> Obj:
        kind = KINDS[resource]

        def fn(cur: Obj) -> Obj:
            new = make(copy.deepcopy(cur))
            if not isinstance(new, dict):
                raise ApiError(422, f'{kind} "{name}" is invalid: the result is not an object')
            new_meta = new.get("metadata") or {}
            rv = new_meta.get("resourceVersion")
            if rv not in (None, "") and rv != cur["metadata"]["resourceVersion"]:
                raise conflict(resource, name)
            if subresource == "status":
                out = copy.deepcopy(cur)
                out["status"] = new.get("status") or {}
                return out
            new["apiVersion"], new["kind"] = "v1", kind
            meta = new.setdefault("metadata", {})
            for field in _IDENTITY:
                if field in cur["metadata"]:
                    meta[field] = cur["metadata"][field]
                else:
                    meta.pop(field, None)
            causes = validation.metadata(meta)
            if resource == "pods":
                new["status"] = cur.get("status", {})
                spec = new.get("spec")
                if not isinstance(spec, dict):
                    spec = {}
                causes += validation.pod_spec(spec)
                if not causes and _mutable_spec_view(spec) != _mutable_spec_view(cur["spec"]):
                    causes.append({
                        "reason": "FieldValueForbidden", "field": "spec",
                        "message": "Forbidden: pod updates may not change fields other than "
                        "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                        "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions "
                        "to existing tolerations), `spec.terminationGracePeriodSeconds`",
                    })
                old_ads = cur["spec"].get("activeDeadlineSeconds")
                new_ads = (spec or {}).get("activeDeadlineSeconds") if not causes else None
                if old_ads is not None and not causes and (new_ads is None or new_ads > old_ads):
                    causes.append(validation.invalid_value(
                        "spec.activeDeadlineSeconds", new_ads,
                        "must be less than or equal to previous value"))
            else:
                self._fold_string_data(new)
                new.setdefault("type", cur.get("type", "Opaque"))
                causes += validation.secret(new)
            if causes:
                raise invalid(kind, name, causes)
            return new

        obj, _exists = self.store.update(resource, namespace, name, fn)
        return obj

    # -- delete ------------------------------------------------------------

    def delete(
        self, resource: str, namespace: str, name: str, grace: int | None = None,
        preconditions: dict[str, Any] | None = None,
    ) -> Obj:
        """Delete per the API: graceful for running pods, immediate otherwise."""
        def fn(cur: Obj) -> Obj | None:
            meta = cur["metadata"]
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise ApiError(409, f"Precondition failed: UID in precondition: {pre['uid']}, "
                               f"UID in object meta: {meta.get('uid')}", reason="Conflict")
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise conflict(resource, name)
            g = grace
            if resource == "pods":
                spec, status = cur.get("spec") or {}, cur.get("status") or {}
                if g is None:
                    g = int(spec.get("terminationGracePeriodSeconds", 30))
                if not spec.get("nodeName") or status.get("phase") in TERMINAL:
                    g = 0
            else:
                g = 0
            g = max(0, g)
            old = meta.get("deletionGracePeriodSeconds")
            if old is not None and old <= g:
                return None  # already deleting at least as fast
            meta["deletionTimestamp"] = now_rfc3339(g)
            meta["deletionGracePeriodSeconds"] = g
            return cur

        obj, exists = self.store.update(resource, namespace, name, fn)
        if resource == "pods" or exists:
            return obj  # the pod registry returns the deleted object
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "kind": resource, "uid": obj["metadata"]["uid"]}}


def _drop_path(body: Obj, path: str) -> None:
    """Remove ``a.b[2].c`` from ``body`` (an unknown field, as decoding drops it)."""
    node: Any = body
    parts = path.replace("]", "").replace("[", ".").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.get(part)
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)
