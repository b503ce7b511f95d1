"""Fixtures and bounded wait helpers for tests that use kubesim.

Use from a test module with ``from kubesim.pytest_fixtures import *``
(``sim``, ``kubeconfig``, ``v1``), or call the helpers directly. Nothing
here sleeps: waits are watches with a ``timeout_seconds`` bound.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from .sim import KubeSim

Pred = Callable[[dict[str, Any]], bool]


def base_env() -> dict[str, str]:
    """A minimal base environment for container processes."""
    return {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}


@pytest.fixture
def sim() -> Iterator[KubeSim]:
    with KubeSim(base_env=base_env(), bookmark_interval=0.2) as s:
        yield s


@pytest.fixture
def kubeconfig(sim: KubeSim, tmp_path: Path) -> Path:
    return sim.kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def v1(kubeconfig: Path) -> Iterator[client.CoreV1Api]:
    api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig))
    with api_client:
        yield client.CoreV1Api(api_client)


def wait_for_pod(
    v1: client.CoreV1Api, namespace: str, name: str, pred: Pred, timeout: int = 10
) -> dict[str, Any]:
    """Return the pod (raw dict) once ``pred(pod)`` holds; AssertionError after ``timeout``."""
    lst = v1.list_namespaced_pod(namespace, field_selector=f"metadata.name={name}")
    raw = v1.api_client.sanitize_for_serialization(lst.items)
    if raw and pred(raw[0]):
        return dict(raw[0])
    w = watch.Watch()  # type: ignore[no-untyped-call]
    stream = w.stream(  # type: ignore[no-untyped-call]
        v1.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}",
        resource_version=lst.metadata.resource_version,  # type: ignore[union-attr]
        timeout_seconds=timeout)
    try:
        for ev in stream:
            if ev["type"] in ("ADDED", "MODIFIED") and pred(ev["raw_object"]):
                return dict(ev["raw_object"])
    finally:
        stream.close()
    raise AssertionError(f"pod {namespace}/{name}: condition not met within {timeout}s")


def collect_events(
    v1: client.CoreV1Api, namespace: str, until: Callable[[dict[str, Any]], bool],
    timeout: int = 10, **kwargs: Any,
) -> list[dict[str, Any]]:
    """Watch events (``{"type", "raw_object"...}``) up to and including ``until(event)``."""
    w = watch.Watch()  # type: ignore[no-untyped-call]
    out: list[dict[str, Any]] = []
    stream = w.stream(  # type: ignore[no-untyped-call]
        v1.list_namespaced_pod, namespace, timeout_seconds=timeout, **kwargs)
    try:
        for ev in stream:
            out.append(ev)
            if until(ev):
                return out
    finally:
        stream.close()
    raise AssertionError(f"watch ended before the awaited event; got {[e['type'] for e in out]}")


def phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase", ""))


def container_state(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return dict(statuses[0].get("state") or {})


def condition(pod: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}
