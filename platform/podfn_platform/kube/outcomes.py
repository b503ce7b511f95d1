"""What a pod's status means for its attempt, with a reason a user can act on.

Pure: a pod object (as the API returns it) in, an `Outcome` (or None while
the attempt is still going) out. The kinds follow `launcher.Exit`:
"exited" spends the user's retries, "timeout" is final, "disrupted" is
retried by the platform, "fatal" fails at once (retrying cannot help).

The order of the checks is the point:

1. podfn's container has ended (whatever the pod's phase: a sidecar such as
   `istio-proxy` keeps a pod Running after it) - its exit code decides, in
   `exit_outcome`, the one place exit codes are mapped;
2. the pod is going away without our container having ended - a lost
   node's Terminating limbo (`deletionTimestamp`, `DisruptionTarget`, phase
   `Unknown`), an eviction, a kubelet admission rejection (`OutOfcpu`...,
   no container ever ran) - a disruption, never the user's failure;
3. the container never started: a permanent image or configuration error
   is fatal; a pull that fails transiently (a registry 429) is waited for,
   up to the pull timeout; unschedulable past the pending timeout is fatal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from podfn_platform.kube.manifest import CONTAINER
from podfn_runtime.main import EXIT_DISRUPTED

IMAGE_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                          "ErrImageNeverPull", "RegistryUnavailable"})
# Image errors that no back-off cures, whatever the registry says.
PERMANENT_IMAGE_ERRORS = frozenset({"InvalidImageName", "ErrImageNeverPull"})
# Words of a registry's answer that mean the image will never pull as named.
PERMANENT_PULL_WORDS = ("not found", "manifest unknown", "unauthorized", "denied",
                        "repository does not exist", "authorization failed",
                        "invalid reference format", "no match for platform")
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError",
                           "RunContainerError"})
# Pod-level reasons of a pod the platform lost (node, kubelet, scheduler), not the code.
DISRUPTION_REASONS = frozenset({"Evicted", "Preempting", "Shutdown", "Terminated", "NodeLost",
                                "NodeShutdown", "UnexpectedAdmissionError", "OutOfcpu",
                                "OutOfmemory", "OutOfpods", "OutOfephemeral-storage",
                                "NodeAffinity", "InvalidNodeInfo"})
# Terminated reasons that say the container was lost rather than that it ended.
LOST_CONTAINER_REASONS = frozenset({"ContainerStatusUnknown"})


@dataclass(frozen=True)
class Outcome:
    kind: str
    reason: str
    exit_code: int | None = None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _container_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == CONTAINER:
            return dict(status)
    return dict(statuses[0]) if len(statuses) == 1 else {}


def _memory_limit(pod: dict[str, Any]) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == CONTAINER:
            limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            return str(limit) if limit else None
    return None


def _condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def _image(pod: dict[str, Any]) -> str:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == CONTAINER:
            return str(container.get("image"))
    return "?"


def exit_outcome(name: str, terminated: dict[str, Any], *, pod_reason: str | None = None,
                 pod_message: str = "", memory_limit: str | None = None) -> Outcome:
    """podfn's container ended with `terminated`: the one mapping of exit codes.

    0: the runtime recorded the outcome (if it did not, the call fails: the
    controller's fail is guarded, so a recorded result stands); 75
    (EXIT_DISRUPTED): the runtime could not reach the database, a disruption; OOMKilled
    names the limit; any other code is the attempt's failure, with the log
    tail the kubelet put in the termination message.
    """
    code = terminated.get("exitCode")
    if code == 0:
        return Outcome("exited", f"pod {name} succeeded without recording a result "
                                 "(exit code 0)", 0)
    if code == EXIT_DISRUPTED:  # the runtime could not reach the database: not the user's
        return Outcome("disrupted", f"pod {name}: the runtime could not reach the database "
                                    f"to record the outcome (exit code {code})", code)
    if terminated.get("reason") == "OOMKilled":
        return Outcome("exited", f"OOMKilled: memory limit {memory_limit}" if memory_limit
                       else "OOMKilled: the container ran out of memory", code)
    reason = terminated.get("reason") or pod_reason or "Error"
    text = f"pod {name} failed: container exited with code {code} ({reason})"
    detail = terminated.get("message") or pod_message
    if detail:
        text += f": {detail.strip()[-1500:]}"
    return Outcome("exited", text, code)


def _disrupted(name: str, why: str, detail: str, code: int | None = None) -> Outcome:
    return Outcome("disrupted", f"pod {name} was disrupted ({why}): {detail}", code)


def _image_outcome(pod: dict[str, Any], waiting: dict[str, Any], now: datetime,
                   pull_timeout: float) -> Outcome | None:
    wait_reason = str(waiting.get("reason"))
    message = str(waiting.get("message") or "")
    text = f"cannot pull image {_image(pod)!r}: {wait_reason}: {message}".rstrip(": ")
    if wait_reason in PERMANENT_IMAGE_ERRORS or any(
            word in message.lower() for word in PERMANENT_PULL_WORDS):
        return Outcome("fatal", text)
    status = pod.get("status") or {}
    since = _parse_time(status.get("startTime")) or _parse_time(
        (pod.get("metadata") or {}).get("creationTimestamp"))
    if since is not None and (now - since).total_seconds() >= pull_timeout:
        return Outcome("fatal", f"{text} (still failing after {pull_timeout:g} s, "
                                "PODFN_IMAGE_PULL_TIMEOUT_SECONDS)")
    return None  # a registry 429 or a blip: the kubelet backs off and pulls again


def outcome(pod: dict[str, Any], *, now: datetime | None = None,
            pending_timeout: float = 300.0, image_pull_timeout: float = 300.0,
            timeout: float | None = None) -> Outcome | None:
    """The attempt's outcome from its pod, or None while it is still on its way.

    `timeout` is the call's own `timeout` hint, for the reason of a
    DeadlineExceeded pod (its activeDeadlineSeconds also covers the pull).
    """
    meta = pod.get("metadata") or {}
    name = meta.get("name", "?")
    status = pod.get("status") or {}
    phase = status.get("phase")
    pod_reason = status.get("reason")
    message = status.get("message") or ""
    container = _container_status(pod)
    terminated = (container.get("state") or {}).get("terminated") or {}
    waiting = (container.get("state") or {}).get("waiting") or {}
    disruption = _condition(pod, "DisruptionTarget")
    disrupted = bool(disruption and disruption.get("status") == "True")
    now = now or datetime.now(UTC)

    if phase == "Failed" and pod_reason == "DeadlineExceeded":
        seconds = timeout if timeout else (pod.get("spec") or {}).get("activeDeadlineSeconds")
        return Outcome("timeout", f"timed out after {seconds:g} s (the `timeout` hint; "
                                  "pod activeDeadlineSeconds)" if isinstance(seconds, int | float)
                       else "timed out (pod activeDeadlineSeconds)")
    # 1. podfn's container ended: its exit code decides (unless the node or kubelet
    #    killed it: an eviction or preemption is not the code's doing).
    if phase == "Succeeded" or (terminated and terminated.get("reason")
                                not in LOST_CONTAINER_REASONS):
        if phase == "Failed" and (pod_reason in DISRUPTION_REASONS or disrupted):
            detail = message or (disruption or {}).get("message") or pod_reason or "disrupted"
            why = pod_reason or (disruption or {}).get("reason") or "DisruptionTarget"
            return _disrupted(name, why, detail, terminated.get("exitCode"))
        if meta.get("deletionTimestamp") and terminated.get("exitCode") not in (0, None):
            # Stopped by the deletion (SIGTERM, then SIGKILL): a drain, a lost node, or
            # someone's kubectl delete - not how the code ended by itself.
            return _disrupted(name, "Terminating", "the pod was deleted while its container "
                              f"ran (exit code {terminated.get('exitCode')})",
                              terminated.get("exitCode"))
        return exit_outcome(name, terminated or {"exitCode": 0}, pod_reason=pod_reason,
                            pod_message=message, memory_limit=_memory_limit(pod))
    # 2. going away, or gone, without the container having ended: the platform's doing.
    if phase == "Failed":  # evicted, preempted, rejected at admission, container lost
        why = pod_reason or (disruption or {}).get("reason") or terminated.get("reason") \
            or "no container ran"
        detail = message or (disruption or {}).get("message") or terminated.get("message") \
            or "the pod failed before its container ran"
        return _disrupted(name, why, detail, terminated.get("exitCode"))
    if disrupted:
        return _disrupted(name, (disruption or {}).get("reason") or "DisruptionTarget",
                          (disruption or {}).get("message") or "marked for disruption")
    if phase == "Unknown":
        return _disrupted(name, "Unknown", "the pod's node stopped reporting its state")
    if meta.get("deletionTimestamp"):
        return _disrupted(name, "Terminating", "the pod is being deleted before its container "
                                               "ended (node lost, drained or deleted by someone "
                                               "else)")
    # 3. never started.
    if phase == "Pending":
        wait_reason = waiting.get("reason")
        if wait_reason in IMAGE_ERRORS:
            return _image_outcome(pod, waiting, now, image_pull_timeout)
        if wait_reason in CONFIG_ERRORS:
            return Outcome("fatal", f"pod {name} cannot start its container: {wait_reason}: "
                                    f"{waiting.get('message') or ''}".rstrip(": "))
        scheduled = _condition(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and \
                scheduled.get("reason") == "Unschedulable":
            since = (_parse_time(scheduled.get("lastTransitionTime"))
                     or _parse_time(meta.get("creationTimestamp")))
            if since is not None and (now - since).total_seconds() >= pending_timeout:
                return Outcome("fatal", f"unschedulable for more than {pending_timeout:g} s: "
                                        f"{scheduled.get('message') or 'no node fits'}")
    return None
