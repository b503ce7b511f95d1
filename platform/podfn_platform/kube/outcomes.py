"""What a pod's status means for its attempt, with a reason a user can act on.

Pure: a pod object (as the API returns it) in, an `Outcome` (or None while
the attempt is still going) out. The kinds follow `launcher.Exit`:
"exited" spends the user's retries, "timeout" is final, "disrupted" is
retried by the platform, "fatal" fails at once (retrying cannot help).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from podfn_platform.kube.manifest import CONTAINER
from podfn_runtime.main import EXIT_DISRUPTED

IMAGE_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                          "ErrImageNeverPull", "RegistryUnavailable"})
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError",
                           "RunContainerError"})


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
    return dict(statuses[0]) if statuses else {}


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


def outcome(pod: dict[str, Any], *, now: datetime | None = None,
            pending_timeout: float = 300.0) -> Outcome | None:
    """The attempt's outcome from its pod, or None while it is still on its way."""
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    phase = status.get("phase")
    container = _container_status(pod)
    terminated = (container.get("state") or {}).get("terminated") or {}
    waiting = (container.get("state") or {}).get("waiting") or {}
    disruption = _condition(pod, "DisruptionTarget")

    if phase == "Succeeded":
        return Outcome("exited", f"pod {name} succeeded without recording a result "
                                 "(exit code 0)", 0)
    if phase == "Failed":
        pod_reason = status.get("reason")
        message = status.get("message") or ""
        if pod_reason == "DeadlineExceeded":
            deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
            return Outcome("timeout", f"timed out after {deadline} s (the `timeout` hint; "
                                      "pod activeDeadlineSeconds)")
        if pod_reason in ("Evicted", "Preempting", "Shutdown", "Terminated", "NodeLost") or (
                disruption and disruption.get("status") == "True"):
            detail = message or (disruption or {}).get("message") or pod_reason or "disrupted"
            why = pod_reason or (disruption or {}).get("reason") or "DisruptionTarget"
            return Outcome("disrupted", f"pod {name} was disrupted ({why}): {detail}",
                           terminated.get("exitCode"))
        code = terminated.get("exitCode")
        if code == EXIT_DISRUPTED:  # the runtime could not reach the database: not the user's
            return Outcome("disrupted", f"pod {name}: the runtime could not reach the database "
                                        f"to record the outcome (exit code {code})", code)
        if terminated.get("reason") == "OOMKilled":
            limit = _memory_limit(pod)
            return Outcome("exited", f"OOMKilled: memory limit {limit}" if limit
                           else "OOMKilled: the container ran out of memory", code)
        reason = terminated.get("reason") or pod_reason or "Error"
        text = f"pod {name} failed: container exited with code {code} ({reason})"
        detail = terminated.get("message") or message
        if detail:
            text += f": {detail.strip()[-1500:]}"
        return Outcome("exited", text, code)
    if phase == "Pending":
        wait_reason = waiting.get("reason")
        if wait_reason in IMAGE_ERRORS:
            return Outcome("fatal", f"cannot pull image {_image(pod)!r}: {wait_reason}: "
                                    f"{waiting.get('message') or ''}".rstrip(": "))
        if wait_reason in CONFIG_ERRORS:
            return Outcome("fatal", f"pod {name} cannot start its container: {wait_reason}: "
                                    f"{waiting.get('message') or ''}".rstrip(": "))
        scheduled = _condition(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and \
                scheduled.get("reason") == "Unschedulable":
            since = (_parse_time(scheduled.get("lastTransitionTime"))
                     or _parse_time(pod.get("metadata", {}).get("creationTimestamp")))
            now = now or datetime.now(UTC)
            if since is not None and (now - since).total_seconds() >= pending_timeout:
                return Outcome("fatal", f"unschedulable for more than {pending_timeout:g} s: "
                                        f"{scheduled.get('message') or 'no node fits'}")
    return None
