"""Pod status -> attempt outcome, each with a reason a user can act on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from podfn_platform.kube.outcomes import outcome


def pod(phase: str, *, reason: str | None = None, message: str | None = None,
        terminated: dict[str, Any] | None = None, waiting: dict[str, Any] | None = None,
        conditions: list[dict[str, Any]] | None = None, memory: str | None = "256Mi",
        deadline: int | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if terminated:
        state["terminated"] = terminated
    if waiting:
        state["waiting"] = waiting
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or [],
                              "containerStatuses": [{"name": "runtime", "state": state}]}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    container: dict[str, Any] = {"name": "runtime", "image": "img:1"}
    if memory:
        container["resources"] = {"limits": {"memory": memory}}
    spec: dict[str, Any] = {"containers": [container]}
    if deadline:
        spec["activeDeadlineSeconds"] = deadline
    return {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec, "status": status}


def test_running_and_pending_are_still_going() -> None:
    assert outcome(pod("Running")) is None
    assert outcome(pod("Pending", waiting={"reason": "ContainerCreating"})) is None


def test_succeeded_without_a_result_is_a_failure_the_controller_checks() -> None:
    found = outcome(pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed"}))
    assert found is not None and found.kind == "exited" and found.exit_code == 0
    assert "without recording a result" in found.reason


def test_oomkilled_names_the_limit() -> None:
    found = outcome(pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"}))
    assert found is not None
    assert (found.kind, found.reason, found.exit_code) == (
        "exited", "OOMKilled: memory limit 256Mi", 137)


def test_error_exit_code() -> None:
    found = outcome(pod("Failed", terminated={"exitCode": 3, "reason": "Error",
                                              "message": "Traceback ...\nValueError: x"}))
    assert found is not None and found.kind == "exited" and found.exit_code == 3
    assert "exited with code 3 (Error)" in found.reason and "ValueError: x" in found.reason


def test_deadline_exceeded_is_a_timeout() -> None:
    found = outcome(pod("Failed", reason="DeadlineExceeded", deadline=60))
    assert found is not None and found.kind == "timeout" and "60 s" in found.reason


@pytest.mark.parametrize("status", [
    {"reason": "Evicted", "message": "The node was low on resource: memory."},
    {"conditions": [{"type": "DisruptionTarget", "status": "True",
                     "reason": "PreemptionByScheduler", "message": "preempted"}]},
])
def test_evictions_and_preemptions_are_disruptions(status: dict[str, Any]) -> None:
    found = outcome(pod("Failed", terminated={"exitCode": 137, "reason": "Error"}, **status))
    assert found is not None and found.kind == "disrupted"


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"])
def test_image_problems_fail_fast_naming_the_image(reason: str) -> None:
    found = outcome(pod("Pending", waiting={"reason": reason, "message": "not found"}))
    assert found is not None and found.kind == "fatal"
    assert "'img:1'" in found.reason and reason in found.reason


def test_config_error_fails_fast() -> None:
    found = outcome(pod("Pending", waiting={"reason": "CreateContainerConfigError",
                                            "message": 'secret "podfn-database" not found'}))
    assert found is not None and found.kind == "fatal" and "podfn-database" in found.reason


def test_unschedulable_only_after_the_pending_timeout() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    p = pod("Pending", conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
    assert outcome(p, now=since + timedelta(seconds=10), pending_timeout=60) is None
    found = outcome(p, now=since + timedelta(seconds=61), pending_timeout=60)
    assert found is not None and found.kind == "fatal"
    assert "Insufficient nvidia.com/gpu" in found.reason


def test_a_sidecar_does_not_hide_the_end_of_podfns_container() -> None:
    p = pod("Running", terminated={"exitCode": 0, "reason": "Completed"})
    p["status"]["containerStatuses"].append({"name": "istio-proxy", "state": {"running": {}}})
    found = outcome(p)
    assert found is not None and (found.kind, found.exit_code) == ("exited", 0)
    p["status"]["containerStatuses"][0]["state"] = {"running": {}}
    assert outcome(p) is None


@pytest.mark.parametrize(("phase", "extra"), [
    ("Running", {"deletionTimestamp": "2026-01-01T00:05:00Z"}),
    ("Running", {"conditions": [{"type": "DisruptionTarget", "status": "True",
                                 "reason": "DeletionByTaintManager",
                                 "message": "Taint manager: deleting due to NoExecute taint"}]}),
    ("Unknown", {}),
])
def test_lost_node_limbo_is_a_disruption(phase: str, extra: dict[str, Any]) -> None:
    p = pod(phase, conditions=extra.get("conditions"))
    if "deletionTimestamp" in extra:
        p["metadata"]["deletionTimestamp"] = extra["deletionTimestamp"]
    found = outcome(p)
    assert found is not None and found.kind == "disrupted"


@pytest.mark.parametrize("reason", ["OutOfcpu", "OutOfmemory", "OutOfpods",
                                    "UnexpectedAdmissionError"])
def test_kubelet_admission_rejections_are_disruptions(reason: str) -> None:
    p = pod("Failed", reason=reason, message="Pod was rejected: Node didn't have enough resource")
    del p["status"]["containerStatuses"]
    found = outcome(p)
    assert found is not None and found.kind == "disrupted" and reason in found.reason


def test_killed_while_terminating_is_a_disruption_not_the_users_failure() -> None:
    p = pod("Failed", terminated={"exitCode": 143, "reason": "Error"})
    p["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    found = outcome(p)
    assert found is not None and found.kind == "disrupted"


def test_transient_pull_errors_wait_until_the_pull_timeout() -> None:
    busy = "429 Too Many Requests - Server message: toomanyrequests: rate limit"
    p = pod("Pending", waiting={"reason": "ImagePullBackOff", "message": busy})
    p["status"]["startTime"] = "2026-01-01T00:00:00Z"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert outcome(p, now=start + timedelta(seconds=10), image_pull_timeout=60) is None
    found = outcome(p, now=start + timedelta(seconds=61), image_pull_timeout=60)
    assert found is not None and found.kind == "fatal" and "toomanyrequests" in found.reason


@pytest.mark.parametrize("message", [
    'failed to resolve reference "r/x:1": r/x:1: not found',
    "pull access denied, repository does not exist or may require authorization: "
    "authorization failed: 401 Unauthorized",
])
def test_permanent_pull_errors_fail_at_once(message: str) -> None:
    found = outcome(pod("Pending", waiting={"reason": "ErrImagePull", "message": message}))
    assert found is not None and found.kind == "fatal" and message in found.reason


def test_deadline_reason_names_the_timeout_hint_not_the_pod_deadline() -> None:
    found = outcome(pod("Failed", reason="DeadlineExceeded", deadline=302), timeout=2)
    assert found is not None and found.kind == "timeout" and "after 2 s" in found.reason


def test_exit_75_is_a_disruption_not_the_users_failure() -> None:
    """The runtime exits 75 when the database stayed unreachable: the platform retries it."""
    got = outcome(pod("Failed", terminated={"exitCode": 75, "reason": "Error"}))
    assert got is not None and got.kind == "disrupted" and got.exit_code == 75
    assert "could not reach the database" in got.reason
