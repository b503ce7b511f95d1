"""Admission of pods per namespace: LimitRange defaults, PodSecurity, ResourceQuota.

Off unless a namespace is given a :class:`NamespacePolicy` (``sim.api.policies``
or the ``set_namespace_policy`` fault), as on a fresh cluster; the order is the
API server's: mutating admission (LimitRanger fills defaults) then
validating (PodSecurity, then ResourceQuota).

* LimitRange: containers without a request/limit get the namespace's
  ``default_requests`` / ``default_limits`` (type Container); a request
  defaults to the limit when only the limit is known, as LimitRanger does.
* PodSecurity ``restricted`` (enforce): 403 Forbidden naming every violated
  check, in the API server's words: ``violates PodSecurity
  "restricted:latest": allowPrivilegeEscalation != false (...), ...``.
* ResourceQuota: hard limits on ``pods``, ``requests.cpu``,
  ``requests.memory``, ``limits.cpu``, ``limits.memory`` counted over the
  namespace's pods not in a terminal phase; 403 ``exceeded quota: <name>,
  requested: ..., used: ..., limited: ...``. A quota on cpu/memory refuses
  pods that do not set that resource ("must specify ...").

Simplifications: only the checks above (PodSecurity's restricted profile
checks privilege escalation, capabilities, runAsNonRoot, seccomp, privileged
containers, host namespaces and hostPath volumes - not the full list); quota
usage is computed on each create rather than kept in a ResourceQuota object,
so there are no quota Conflicts unless injected (``fail_requests(code=409)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError
from .quantity import parse_quantity

Obj = dict[str, Any]


@dataclass
class NamespacePolicy:
    pod_security: str | None = None  # "restricted" to enforce it
    quota: dict[str, str] = field(default_factory=dict)  # e.g. {"pods": "2"}
    quota_name: str = "compute-quota"
    default_requests: dict[str, str] = field(default_factory=dict)
    default_limits: dict[str, str] = field(default_factory=dict)


def apply_limit_range(policy: NamespacePolicy, pod: Obj) -> None:
    for c in pod["spec"].get("containers") or []:
        res = c.setdefault("resources", {})
        limits = res.setdefault("limits", {}) if policy.default_limits else res.get("limits")
        for name, value in policy.default_limits.items():
            assert limits is not None
            limits.setdefault(name, value)
        requests = res.setdefault("requests", {}) if (
            policy.default_requests or policy.default_limits) else res.get("requests")
        for name, value in policy.default_requests.items():
            assert requests is not None
            requests.setdefault(name, value)
        for name, value in (res.get("limits") or {}).items():
            if requests is not None:
                requests.setdefault(name, value)
        for part in ("limits", "requests"):
            if res.get(part) == {}:
                del res[part]


def _restricted_violations(spec: Obj) -> list[str]:
    pod_sc = spec.get("securityContext") or {}
    containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
    out: list[str] = []

    def names(pred: Any) -> list[str]:
        return [c.get("name", "?") for c in containers if pred(c.get("securityContext") or {})]

    def quoted(items: list[str]) -> str:
        return ", ".join(f'"{n}"' for n in items)

    if any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")):
        out.append("host namespaces (hostNetwork=true, hostPID=true or hostIPC=true)")
    if any("hostPath" in (v or {}) for v in spec.get("volumes") or []):
        out.append("hostPath volumes")
    bad = names(lambda sc: sc.get("privileged") is True)
    if bad:
        out.append(f"privileged (container {quoted(bad)} must not set "
                   "securityContext.privileged=true)")
    bad = names(lambda sc: sc.get("allowPrivilegeEscalation") is not False)
    if bad:
        out.append(f"allowPrivilegeEscalation != false (container {quoted(bad)} must set "
                   "securityContext.allowPrivilegeEscalation=false)")
    bad = names(lambda sc: "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []))
    if bad:
        out.append(f"unrestricted capabilities (container {quoted(bad)} must set "
                   'securityContext.capabilities.drop=["ALL"])')
    if pod_sc.get("runAsNonRoot") is not True:
        bad = names(lambda sc: sc.get("runAsNonRoot") is not True)
        if bad:
            out.append(f"runAsNonRoot != true (pod or container {quoted(bad)} must set "
                       "securityContext.runAsNonRoot=true)")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in ("RuntimeDefault", "Localhost"):
        bad = names(lambda sc: (sc.get("seccompProfile") or {}).get("type")
                    not in ("RuntimeDefault", "Localhost"))
        if bad:
            out.append(f"seccompProfile (pod or container {quoted(bad)} must set "
                       'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')
    return out


def check_pod_security(policy: NamespacePolicy, name: str, spec: Obj) -> None:
    if policy.pod_security != "restricted":
        return
    violations = _restricted_violations(spec)
    if violations:
        raise ApiError(403, f'pods "{name}" is forbidden: violates PodSecurity '
                            f'"restricted:latest": {", ".join(violations)}',
                       reason="Forbidden", details={"name": name, "kind": "pods"})


def _usage(pod: Obj) -> dict[str, float]:
    out = {"pods": 1.0}
    for c in pod["spec"].get("containers") or []:
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for name, value in (res.get(part) or {}).items():
                key = f"{part}.{name}"
                out[key] = out.get(key, 0.0) + parse_quantity(value)
    return out


def check_quota(policy: NamespacePolicy, name: str, pod: Obj, others: list[Obj]) -> None:
    if not policy.quota:
        return
    wanted = _usage(pod)
    missing = [r for r in policy.quota if r != "pods" and r not in wanted]
    if missing:
        raise ApiError(403, f'pods "{name}" is forbidden: failed quota: {policy.quota_name}: '
                            f"must specify {','.join(sorted(r.split('.', 1)[1] for r in missing))}",
                       reason="Forbidden", details={"name": name, "kind": "pods"})
    used: dict[str, float] = {}
    for other in others:
        if (other.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for key, amount in _usage(other).items():
            used[key] = used.get(key, 0.0) + amount
    over = [r for r, hard in policy.quota.items()
            if used.get(r, 0.0) + wanted.get(r, 0.0) > parse_quantity(hard)]
    if over:
        def fmt(values: dict[str, Any]) -> str:
            return ",".join(f"{r}={values[r]}" for r in sorted(over))

        raise ApiError(
            403, f'pods "{name}" is forbidden: exceeded quota: {policy.quota_name}, '
                 f"requested: {fmt({r: _show(wanted.get(r, 0.0)) for r in over})}, "
                 f"used: {fmt({r: _show(used.get(r, 0.0)) for r in over})}, "
                 f"limited: {fmt(policy.quota)}",
            reason="Forbidden", details={"name": name, "kind": "pods"})


def _show(amount: float) -> str:
    return str(int(amount)) if amount == int(amount) else f"{amount:g}"
