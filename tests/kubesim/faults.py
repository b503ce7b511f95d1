"""Fault injection: the ways a real cluster misbehaves, on demand.

Every method is callable in-process (``sim.faults.oom_kill("ns", "pod")``) and
over HTTP from another process as ``POST /_sim/faults/<method>`` with the
keyword arguments as a JSON object body (``{}`` for none); the answer is
``{"result": ...}``. ``GET /_sim/faults`` lists the method names.

Request-level faults
    fail_requests(verb, resource, count=1, code=500, retry_after=1)
        the next ``count`` requests matching verb (get, list, watch, create,
        update, patch, delete or ``*``) and resource (pods, pods/status,
        pods/log, secrets or ``*``) get a Status error; 429 and 503 carry a
        ``Retry-After`` header and ``details.retryAfterSeconds``; 409 is a
        reason ``Conflict`` from quota admission (a concurrent update of the
        ResourceQuota, kubernetes#67761: nothing was created), 401 an
        expired credential.
    set_request_latency(seconds) - sleep before handling every request.
    set_watch_event_latency(seconds) - hold each watch event this long before
        writing it (a held event goes out as soon as the latency is lowered).
    requests_seen(verb, resource) - not a fault: how many such requests came
        in (to see client retries).
Watch faults
    drop_watches(partial=False) - close every open watch stream now: cleanly
        (terminating chunk) or half-written (a partial JSON line, then the
        socket is cut without ending the chunked body); returns how many.
    expire_resource_versions() - move the compaction point to the current
        resourceVersion: new watches from any older version get 410, and so
        do continue tokens of lists made before.
    expire_continue_tokens(count=1) - the next ``count`` continued lists get
        410 Expired (a compaction between two pages); ``continue_tokens_expired``
        counts the lists so refused.
    set_gone_mode("http" | "event") - how a too-old watch is refused: an HTTP
        410 Status response, or a 200 stream whose first event is an ERROR
        with a 410 Expired Status (both happen on real clusters).
Pod faults (see kubelet.py)
    oom_kill(namespace, name), evict(namespace, name, reason=..., message=...),
    lose_node(namespace, name, toleration_seconds=300, phase="Running"|"Unknown")
        and remove_lost_nodes() (the Terminating limbo of a lost node, then
        pod GC once the Node object is removed),
    fail_image_pulls(pattern, transient=0) - permanently ("not found"; an
        image containing "unauthorized" gets a 401), or the next
        ``transient`` pulls fail with a registry 429,
    reject_admission(name_contains="", reason="OutOfcpu", message=None) -
        the kubelet rejects the next matching pod (Failed, no containers),
    set_unschedulable(message=None | str), reset().
Namespace settings
    set_namespace_policy(namespace, pod_security=None, quota={},
        default_requests={}, default_limits={}) - admission (admission.py).
Benchmarks
    seed_pods(namespace, template, count, prefix="seed", status=None) -
        copies of a pod straight into the store (no events, no kubelet).
Cluster faults
    rebuild_cluster() - a new cluster at the same address (new kube-system
        namespace UID, resourceVersions start again, every object gone); a
        watch from a version of the old history waits silently.

Simplification: ``evict`` with reason EvictionByEvictionAPI is modelled like a
kubelet eviction (process killed, pod Failed/Evicted with the
DisruptionTarget condition) - the real Eviction API deletes the pod
gracefully instead; there is no Eviction subresource.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .admission import NamespacePolicy
from .errors import ApiError

if TYPE_CHECKING:
    from .kubelet import Kubelet
    from .store import Store

DEFAULT_UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
ADMISSION_REASONS = {
    "OutOfcpu": "Pod was rejected: Node didn't have enough resource: cpu, requested: 2000, "
                "used: 7000, capacity: 8000",
    "OutOfmemory": "Pod was rejected: Node didn't have enough resource: memory, requested: "
                   "268435456, used: 8321499136, capacity: 8321499136",
    "OutOfpods": "Pod was rejected: Node didn't have enough resource: pods, requested: 1, "
                 "used: 110, capacity: 110",
    "UnexpectedAdmissionError": "Pod was rejected: Allocate failed due to can't allocate "
                                "unhealthy devices nvidia.com/gpu, which is unexpected",
}
DEFAULT_EVICTION = "The node was low on resource: memory. Threshold quantity: 100Mi, " \
    "available: 50Mi. "


@dataclass
class _FailRule:
    verb: str
    resource: str
    remaining: int
    code: int
    retry_after: int


class Faults:
    """Fault switches shared by the HTTP server, the store and the kubelet."""

    HTTP_METHODS = (
        "fail_requests", "set_request_latency", "set_watch_event_latency", "drop_watches",
        "expire_resource_versions", "set_gone_mode", "oom_kill", "evict", "lose_node",
        "fail_image_pulls", "set_unschedulable", "reset", "requests_seen",
        "remove_lost_nodes", "reject_admission", "expire_continue_tokens", "rebuild_cluster",
        "set_namespace_policy", "seed_pods",
    )

    def __init__(self, store: Store, kubelet: Kubelet, gone_mode: str = "http") -> None:
        self.store, self.kubelet = store, kubelet
        self.lock = threading.Lock()
        self.latency_changed = threading.Condition(self.lock)  # wakes held watch events
        self.rules: list[_FailRule] = []
        self.request_latency = 0.0
        self.watch_event_latency = 0.0
        self.gone_mode = gone_mode
        self.drop_generation = 0  # watches compare it with the value they started with
        self.drop_partial = False
        self.open_watches = 0
        self.continue_expiries = 0
        self.continue_tokens_expired = 0  # continued lists answered 410 so far
        self.request_counts: Counter[str] = Counter()  # "verb resource" -> requests seen

    # -- request faults ------------------------------------------------------

    def fail_requests(self, verb: str, resource: str, count: int = 1, code: int = 500,
                      retry_after: int = 1) -> None:
        if code not in (401, 409, 429, 500, 503):
            raise ValueError("code must be 401, 409, 429, 500 or 503")
        with self.lock:
            self.rules.append(_FailRule(verb, resource, count, code, retry_after))

    def take_failure(self, verb: str, resource: str) -> ApiError | None:
        """Count the request and consume a matching failure rule, if any."""
        with self.lock:
            self.request_counts[f"{verb} {resource}"] += 1
            for rule in self.rules:
                if rule.remaining > 0 and rule.verb in ("*", verb) and \
                        rule.resource in ("*", resource):
                    rule.remaining -= 1
                    if rule.code == 429:
                        return ApiError(429, "Too many requests, please try again later.",
                                        retry_after=rule.retry_after)
                    if rule.code == 503:
                        return ApiError(503, "the server is currently unable to handle the "
                                        "request", retry_after=rule.retry_after)
                    if rule.code == 401:
                        return ApiError(401, "Unauthorized")
                    if rule.code == 409:  # quota admission lost a race on its ResourceQuota
                        return ApiError(
                            409, 'Operation cannot be fulfilled on resourcequotas '
                            '"gke-resource-quotas": the object has been modified; please apply '
                            "your changes to the latest version and try again",
                            reason="Conflict",
                            details={"name": "gke-resource-quotas", "kind": "resourcequotas"})
                    return ApiError(500, "Internal error occurred: injected fault")
            return None

    def requests_seen(self, verb: str, resource: str) -> int:
        """How many API requests of this verb and resource arrived (failed ones too)."""
        with self.lock:
            return self.request_counts[f"{verb} {resource}"]

    def set_request_latency(self, seconds: float) -> None:
        self.request_latency = float(seconds)

    def set_watch_event_latency(self, seconds: float) -> None:
        with self.latency_changed:
            self.watch_event_latency = float(seconds)
            self.latency_changed.notify_all()

    def hold_watch_event(self) -> None:
        """Hold an event back for the watch event latency, as it stands while held: an
        event held when the latency goes back to 0 goes out then, not 30 s later."""
        started = time.monotonic()
        with self.latency_changed:
            while (left := started + self.watch_event_latency - time.monotonic()) > 0:
                self.latency_changed.wait(left)

    # -- watch faults ----------------------------------------------------------

    def drop_watches(self, partial: bool = False) -> int:
        with self.lock:
            self.drop_generation += 1
            self.drop_partial = bool(partial)
            n = self.open_watches
        self.store.poke()
        return n

    def expire_continue_tokens(self, count: int = 1) -> None:
        """The next ``count`` list requests that carry a continue token get 410 Expired."""
        with self.lock:
            self.continue_expiries += int(count)

    def take_continue_expiry(self) -> bool:
        with self.lock:
            if self.continue_expiries > 0:
                self.continue_expiries -= 1
                self.continue_tokens_expired += 1
                return True
            return False

    def expire_resource_versions(self) -> str:
        return str(self.store.expire())

    def set_gone_mode(self, mode: str) -> None:
        if mode not in ("http", "event"):
            raise ValueError("mode must be 'http' or 'event'")
        self.gone_mode = mode

    # -- pod faults ------------------------------------------------------------

    def oom_kill(self, namespace: str, name: str) -> None:
        self.kubelet.interrupt(namespace, name, "oom")

    def evict(self, namespace: str, name: str, reason: str = "TerminationByKubelet",
              message: str = DEFAULT_EVICTION) -> None:
        if reason not in ("TerminationByKubelet", "EvictionByEvictionAPI"):
            raise ValueError("reason must be TerminationByKubelet or EvictionByEvictionAPI")
        self.kubelet.interrupt(namespace, name, "evict", reason=reason, message=message)

    def lose_node(self, namespace: str, name: str, toleration_seconds: float = 300.0,
                  phase: str = "Running") -> None:
        if phase not in ("Running", "Unknown"):
            raise ValueError("phase must be Running or Unknown")
        self.kubelet.interrupt(namespace, name, "lose_node",
                               toleration_seconds=float(toleration_seconds), phase=phase)

    def remove_lost_nodes(self) -> None:
        self.kubelet.remove_lost_nodes()

    def fail_image_pulls(self, pattern: str, transient: int = 0) -> None:
        if transient:
            self.kubelet.config.transient_pull_failures[pattern] = int(transient)
        else:
            self.kubelet.config.image_pull_failures.append(pattern)

    def reject_admission(self, name_contains: str = "", reason: str = "OutOfcpu",
                         message: str | None = None) -> None:
        if reason not in ADMISSION_REASONS:
            raise ValueError(f"reason must be one of {', '.join(ADMISSION_REASONS)}")
        self.kubelet.config.admission_rejections.append(
            (name_contains, reason, message or ADMISSION_REASONS[reason]))

    def set_unschedulable(self, message: str | None = DEFAULT_UNSCHEDULABLE) -> None:
        """Refuse to schedule new/pending pods with ``message``; None lifts it."""
        self.kubelet.set_unschedulable(message)

    def seed_pods(self, namespace: str, template: dict[str, Any], count: int,
                  prefix: str = "seed", status: dict[str, Any] | None = None) -> str:
        """Benchmarks: ``count`` copies of ``template`` put straight into the store.

        Copy i is named ``<template name>-<prefix><i>``, its ``podfn.dev/call-id``
        label and annotation (if any) become ``<prefix><i>``; ``status`` is
        its status. No events, no kubelet (store.seed). Returns the version.
        """
        blob = json.dumps(template)
        objs = []
        for i in range(int(count)):
            obj = json.loads(blob)
            meta = obj["metadata"]
            meta["name"] = f"{prefix}{i}-{meta.get('name', 'pod')}"[:253]
            meta["namespace"] = namespace
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            for part in ("labels", "annotations"):
                if "podfn.dev/call-id" in (meta.get(part) or {}):
                    meta[part]["podfn.dev/call-id"] = f"{prefix}{i}"
            obj["status"] = copy.deepcopy(status or {"phase": "Pending"})
            objs.append(obj)
        return str(self.store.seed("pods", objs))

    def rebuild_cluster(self) -> str:
        """Everything anew at the same address; returns the new cluster identity."""
        uid = self.store.rebuild()
        self.kubelet.wake_all()  # their pods are gone
        return uid

    def set_namespace_policy(self, namespace: str, **policy: Any) -> None:
        """Admission for a namespace: pod_security ("restricted"), quota ({"pods": "2"}),
        default_requests / default_limits (a LimitRange); no arguments lift it."""
        if policy:
            self.kubelet.api.policies[namespace] = NamespacePolicy(**policy)
        else:
            self.kubelet.api.policies.pop(namespace, None)


    def reset(self) -> None:
        with self.lock:
            self.rules.clear()
        self.request_latency = 0.0
        self.set_watch_event_latency(0.0)
        self.kubelet.config.image_pull_failures[:] = ["does-not-exist"]
        self.kubelet.config.transient_pull_failures.clear()
        self.kubelet.config.admission_rejections.clear()
        self.kubelet.api.policies.clear()
        self.kubelet.set_unschedulable(None)

    def call(self, method: str, kwargs: dict[str, Any]) -> Any:
        """Dispatch an HTTP fault call; 404 for unknown names, 400 for bad args."""
        if method not in self.HTTP_METHODS:
            raise ApiError(404, f"unknown fault {method!r}")
        try:
            return getattr(self, method)(**kwargs)
        except (TypeError, ValueError) as e:
            raise ApiError(400, str(e)) from e
