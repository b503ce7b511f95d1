"""Field validation for the objects the simulator accepts (subset of apimachinery).

Errors are collected as ``causes`` (``{"reason", "message", "field"}``) and
reported together in one 422 Invalid, like the API server does.

Simplification: only the rules a client is likely to trip over are checked:
names (DNS-1123 subdomain for objects, DNS-1123 label for containers and
namespaces), label keys and values, annotation keys, required containers,
container names/images, duplicate container names, positive
activeDeadlineSeconds, resource quantities (the Quantity grammar: ``256MB``
is refused, ``256M`` and ``256Mi`` are not), requests not above limits,
Secret data keys and base64 values.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from .quantity import parse_quantity

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL_RE = re.compile(rf"^{_DNS1123_LABEL}$")
DNS1123_SUBDOMAIN_RE = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_QUALIFIED_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
# resource.Quantity: a signed decimal, then a binary SI, decimal SI or exponent suffix.
QUANTITY_RE = re.compile(
    r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")

Cause = dict[str, str]


def _cause(reason: str, field: str, message: str) -> Cause:
    return {"reason": reason, "message": message, "field": field}


def invalid_value(field: str, value: Any, detail: str) -> Cause:
    return _cause("FieldValueInvalid", field, f"Invalid value: {value!r}: {detail}")


def required(field: str, detail: str = "") -> Cause:
    return _cause("FieldValueRequired", field, "Required value" + (f": {detail}" if detail else ""))


def subdomain(field: str, value: Any) -> list[Cause]:
    if not isinstance(value, str) or len(value) > 253 or not DNS1123_SUBDOMAIN_RE.match(value):
        return [
            invalid_value(
                field,
                value,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        ]
    return []


def dns_label(field: str, value: Any) -> list[Cause]:
    if not isinstance(value, str) or len(value) > 63 or not DNS1123_LABEL_RE.match(value):
        return [
            invalid_value(
                field,
                value,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                "characters or '-', and must start and end with an alphanumeric character",
            )
        ]
    return []


def qualified_name(field: str, key: Any) -> list[Cause]:
    msg = (
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
        "start and end with an alphanumeric character"
    )
    if not isinstance(key, str) or not key:
        return [invalid_value(field, key, msg)]
    prefix, _, name = key.rpartition("/")
    causes: list[Cause] = []
    if "/" in key and (not prefix or subdomain(field, prefix)):
        causes.append(invalid_value(field, key, "prefix part must be a DNS-1123 subdomain"))
    if len(name) > 63 or not _QUALIFIED_NAME_RE.match(name):
        causes.append(invalid_value(field, key, msg))
    return causes


def metadata(meta: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    causes += subdomain("metadata.name", meta.get("name"))
    for key, value in (meta.get("labels") or {}).items():
        causes += qualified_name("metadata.labels", key)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE_RE.match(value):
            causes.append(
                invalid_value(
                    "metadata.labels",
                    value,
                    "a valid label must be an empty string or consist of alphanumeric "
                    "characters, '-', '_' or '.', and must start and end with an "
                    "alphanumeric character",
                )
            )
    for key in meta.get("annotations") or {}:
        causes += qualified_name("metadata.annotations", key)
    return causes


def pod_spec(spec: Any) -> list[Cause]:
    if not isinstance(spec, dict):
        return [required("spec")]
    causes: list[Cause] = []
    containers = spec.get("containers")
    if not containers or not isinstance(containers, list):
        causes.append(required("spec.containers"))
        containers = []
    seen: set[str] = set()
    for i, c in enumerate(containers):
        path = f"spec.containers[{i}]"
        if not isinstance(c, dict):
            causes.append(required(path))
            continue
        name = c.get("name")
        if not name:
            causes.append(required(f"{path}.name"))
        else:
            causes += dns_label(f"{path}.name", name)
            if name in seen:
                causes.append(
                    _cause("FieldValueDuplicate", f"{path}.name", f"Duplicate value: {name!r}")
                )
            seen.add(name)
        if not c.get("image"):
            causes.append(required(f"{path}.image"))
        causes += resources(f"{path}.resources", c.get("resources"))
    ads = spec.get("activeDeadlineSeconds")
    if ads is not None and (not isinstance(ads, int) or ads <= 0):
        causes.append(invalid_value("spec.activeDeadlineSeconds", ads, "must be greater than 0"))
    return causes


def resources(path: str, res: Any) -> list[Cause]:
    """Quantities must parse; a request may not exceed its limit."""
    if not isinstance(res, dict):
        return []
    causes: list[Cause] = []
    parsed: dict[str, dict[str, float]] = {}
    for part in ("requests", "limits"):
        for name, value in (res.get(part) or {}).items():
            field = f"{path}.{part}[{name}]"
            if not QUANTITY_RE.match(str(value)):
                causes.append(invalid_value(field, value,
                                            "must match the regex "
                                            "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"))
                continue
            parsed.setdefault(part, {})[name] = parse_quantity(value)
    for name, amount in (parsed.get("requests") or {}).items():
        limit = (parsed.get("limits") or {}).get(name)
        if limit is not None and amount > limit:
            causes.append(invalid_value(f"{path}.requests", res["requests"][name],
                                        f"must be less than or equal to {name} limit of "
                                        f"{res['limits'][name]}"))
    return causes


def secret(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    for key, value in (obj.get("data") or {}).items():
        if not _SECRET_KEY_RE.match(key):
            causes.append(invalid_value(
                f"data[{key}]", key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            ))
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            causes.append(invalid_value(f"data[{key}]", "<value omitted>", "illegal base64 data"))
    return causes


# Field names of the Pod schema that strict decoding knows (core/v1; enough for
# the pods clients send - unknown names are what strict validation reports).
_POD_FIELDS = {"apiVersion", "kind", "metadata", "spec", "status"}
_META_FIELDS = {"name", "generateName", "namespace", "labels", "annotations", "uid",
                "resourceVersion", "creationTimestamp", "deletionTimestamp", "finalizers",
                "deletionGracePeriodSeconds", "ownerReferences", "managedFields", "generation",
                "selfLink"}
_SPEC_FIELDS = {
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers",
    "dnsConfig", "dnsPolicy", "enableServiceLinks", "ephemeralContainers", "hostAliases",
    "hostIPC", "hostNetwork", "hostPID", "hostUsers", "hostname", "imagePullSecrets",
    "initContainers", "nodeName", "nodeSelector", "os", "overhead", "preemptionPolicy",
    "priority", "priorityClassName", "readinessGates", "resourceClaims", "resources",
    "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates",
    "securityContext", "serviceAccount", "serviceAccountName", "setHostnameAsFQDN",
    "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds", "tolerations",
    "topologySpreadConstraints", "volumes"}
_CONTAINER_FIELDS = {
    "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle",
    "livenessProbe", "name", "ports", "readinessProbe", "resizePolicy", "resources",
    "restartPolicy", "securityContext", "startupProbe", "stdin", "stdinOnce",
    "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices",
    "volumeMounts", "workingDir"}


def unknown_pod_fields(obj: Any) -> list[str]:
    """Paths of fields the Pod schema does not have (top level, metadata, spec, containers)."""
    if not isinstance(obj, dict):
        return []
    out = [k for k in obj if k not in _POD_FIELDS]
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        out += [f"metadata.{k}" for k in meta if k not in _META_FIELDS]
    spec = obj.get("spec")
    if isinstance(spec, dict):
        out += [f"spec.{k}" for k in spec if k not in _SPEC_FIELDS]
        for part in ("initContainers", "containers"):
            for i, c in enumerate(spec.get(part) or []):
                if isinstance(c, dict):
                    out += [f"spec.{part}[{i}].{k}" for k in c if k not in _CONTAINER_FIELDS]
    return out
