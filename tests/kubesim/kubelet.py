"""Scheduler + kubelet stand-in: moves each pod through its lifecycle.

For every new pod one worker thread does what the scheduler and the kubelet
would, each step a status write (a MODIFIED event with a new resourceVersion):

1. schedule: ``spec.nodeName`` + condition PodScheduled True, or PodScheduled
   False/Unschedulable (``0/3 nodes are available: 3 Insufficient
   nvidia.com/gpu.``) when the fault is on, the nodeSelector does not match,
   or the pod's requests exceed the configured node capacity; retried when
   the fault is cleared;
2. kubelet accepts it: startTime, hostIP, Initialized, containers waiting
   ``ContainerCreating``;
3. image pull: images matching a failure pattern (default
   ``does-not-exist``) leave the pod Pending with ``ErrImagePull`` then
   ``ImagePullBackOff``;
4. env: plain values, ``secretKeyRef``, ``fieldRef`` (metadata.name,
   metadata.namespace, metadata.uid, spec.nodeName, status.podIP,
   metadata.labels/annotations['k']) and ``envFrom.secretRef`` are resolved,
   ``$(VAR)`` references expanded; a missing Secret/key leaves the pod Pending
   with ``CreateContainerConfigError`` until the Secret appears;
5. run: the first container's ``command + args`` runs as a local process
   with the base environment overlaid by the pod's env; output (stdout and
   stderr) is captured for ``/log``; phase Running, podIP, Ready;
6. end: exit 0 -> Succeeded/Completed, else Failed/Error; deletion ->
   SIGTERM, SIGKILL after the grace period, terminal phase, then the final
   delete with grace 0 (the object goes once finalizers are gone);
   ``activeDeadlineSeconds`` -> killed, Failed/DeadlineExceeded.

Simplifications: one node; restartPolicy is always treated as Never (no
restarts, whatever the spec says); only the first container runs a process,
every container reports that container's state; a container without
``command`` and ``args`` runs no process and stays Running until the pod is
deleted; ``args`` without ``command`` are run as the command (no image
entrypoints); images are never pulled; no probes, init containers, volumes,
resource enforcement or cgroups (OOMKill is a fault, not memory accounting);
scheduling checks each pod against the node capacity alone (no bin packing
across pods); ports and podIPs are fake.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from .api import TERMINAL, Api, now_rfc3339
from .errors import ApiError
from .store import Event, Obj, Store

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "P": 1e15, "E": 1e18}


def parse_quantity(q: Any) -> float:
    """Parse a resource.Quantity (``500m``, ``2Gi``, ``1e3``) to a float."""
    s = str(q).strip()
    for suf in sorted(_SUFFIX, key=len, reverse=True):
        if s.endswith(suf) and not (suf == "E" and re.fullmatch(r"[\d.]+[eE]\d+", s)):
            return float(s[: -len(suf)]) * _SUFFIX[suf]
    return float(s)


@dataclass
class KubeletConfig:
    """Knobs of the scheduler/kubelet stand-in (all mutable at runtime)."""

    base_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    workdir: str | None = None
    node_name: str = "kubesim-node"
    node_count: int = 3  # only used in scheduler messages
    node_capacity: dict[str, str] = field(default_factory=dict)  # e.g. {"nvidia.com/gpu": "0"}
    node_labels: dict[str, str] = field(default_factory=dict)
    step_delay: float = 0.0  # pause between lifecycle steps
    image_backoff_delay: float = 0.05  # ErrImagePull -> ImagePullBackOff
    image_pull_failures: list[str] = field(default_factory=lambda: ["does-not-exist"])
    unschedulable_message: str | None = None


class _Interrupt(Exception):
    def __init__(self, kind: str, **info: Any) -> None:
        super().__init__(kind)
        self.kind = kind
        self.info = info


def _cond(type_: str, status: bool, reason: str | None = None, message: str | None = None
          ) -> Obj:
    c: Obj = {"type": type_, "status": "True" if status else "False",
              "lastProbeTime": None, "lastTransitionTime": now_rfc3339()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def _set_conditions(status: Obj, *conds: Obj) -> None:
    existing = {c["type"]: c for c in status.get("conditions") or []}
    for c in conds:
        old = existing.get(c["type"])
        if old and old.get("status") == c["status"]:
            c["lastTransitionTime"] = old.get("lastTransitionTime")
        existing[c["type"]] = c
    status["conditions"] = list(existing.values())


class PodWorker:
    """Drives one pod (identified by uid) from Pending to a terminal phase."""

    def __init__(self, kubelet: Kubelet, namespace: str, name: str, uid: str) -> None:
        self.k, self.ns, self.name, self.uid = kubelet, namespace, name, uid
        self.wake = threading.Event()
        self.fault: _Interrupt | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None
        self.log = bytearray()
        self.log_lock = threading.Lock()
        self.started = False  # a container process (or idle container) started
        self.deadline: float | None = None
        self.started_at: str | None = None
        self.accepted_at: float | None = None
        self.thread = threading.Thread(target=self._run, name=f"kubelet-{name}", daemon=True)

    # -- helpers -----------------------------------------------------------

    def _pod(self) -> Obj:
        pod = self.k.store.try_get("pods", self.ns, self.name)
        if pod is None or pod["metadata"].get("uid") != self.uid:
            raise _Interrupt("gone")
        return pod

    def _check(self, running: bool = False) -> Obj:
        if self.k.stopping:
            raise _Interrupt("stop")
        if self.fault is not None:
            raise self.fault
        pod = self._pod()
        ads = pod["spec"].get("activeDeadlineSeconds")
        if self.accepted_at is not None and ads:  # re-read: the spec field may be lowered
            self.deadline = self.accepted_at + ads
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _Interrupt("deadline")
        if pod["metadata"].get("deletionTimestamp"):
            raise _Interrupt("deleted", grace=pod["metadata"].get("deletionGracePeriodSeconds", 0))
        if running and self.proc is not None and self.proc.poll() is not None and (
            self.reader is None or not self.reader.is_alive()
        ):
            raise _Interrupt("exited", code=self.proc.returncode)
        return pod

    def _wait(self, seconds: float | None = None, running: bool = False) -> Obj:
        """Wait for a wake-up (or ``seconds``), then re-check interrupts."""
        end = None if seconds is None else time.monotonic() + seconds
        while True:
            pod = self._check(running)
            now = time.monotonic()
            if end is not None and now >= end:
                return pod
            timeout = None if end is None else end - now
            if self.deadline is not None:
                left = max(0.0, self.deadline - now)
                timeout = left if timeout is None else min(timeout, left)
            self.wake.wait(timeout)
            self.wake.clear()
            if end is None:
                return self._check(running)

    def _status(self, fn: Callable[[Obj], None], spec_fn: Callable[[Obj], None] | None = None
                ) -> None:
        def update(cur: Obj) -> Obj:
            if cur["metadata"].get("uid") != self.uid:
                raise _Interrupt("gone")
            status = cur.setdefault("status", {})
            fn(status)
            if spec_fn:
                spec_fn(cur["spec"])
            return cur

        try:
            self.k.store.update("pods", self.ns, self.name, update)
        except ApiError as e:
            raise _Interrupt("gone") from e

    def _containers(self, pod: Obj, state: Obj, ready: bool = False) -> list[Obj]:
        out = []
        for c in pod["spec"]["containers"]:
            cs: Obj = {"name": c["name"], "image": c.get("image", ""), "imageID": "",
                       "ready": ready, "restartCount": 0, "started": "running" in state,
                       "state": state, "lastState": {}}
            if self.started:
                cs["containerID"] = f"kubesim://{self.uid}-{c['name']}"
                cs["imageID"] = f"{c.get('image', '')}@sha256:{'0' * 64}"
            out.append(cs)
        return out

    def _set_waiting(self, reason: str, message: str | None = None) -> None:
        pod = self._pod()
        state: Obj = {"waiting": {"reason": reason}}
        if message:
            state["waiting"]["message"] = message
        self._status(lambda st: st.__setitem__("containerStatuses", self._containers(pod, state)))

    # -- lifecycle -----------------------------------------------------------

    def _run(self) -> None:
        try:
            code = self._lifecycle()
            self._terminal(code)
        except _Interrupt as it:
            with contextlib.suppress(_Interrupt):
                self._interrupted(it)
        finally:
            self._kill(signal.SIGKILL)
            self._reap()
            pod = self.k.store.try_get("pods", self.ns, self.name)
            if pod is None or pod["metadata"].get("uid") != self.uid:
                self.k.forget(self.uid)

    def _lifecycle(self) -> int:
        pod = self._check()
        # 1. scheduling
        while (why := self.k.unschedulable_reason(pod)) is not None:
            cur = next((c for c in pod["status"].get("conditions") or []
                        if c["type"] == "PodScheduled"), None)
            if not cur or cur.get("message") != why:
                cond = _cond("PodScheduled", False, "Unschedulable", why)

                def unschedulable(st: Obj, c: Obj = cond) -> None:
                    _set_conditions(st, c)

                self._status(unschedulable)
            pod = self._wait()
        self._status(
            lambda st: _set_conditions(st, _cond("PodScheduled", True)),
            lambda spec: spec.__setitem__("nodeName", self.k.config.node_name),
        )
        pod = self._wait(self.k.config.step_delay)
        # 2. accepted by the kubelet; activeDeadlineSeconds counts from here (startTime)
        self.accepted_at = time.monotonic()

        def accept(st: Obj) -> None:
            st["hostIP"] = "10.0.0.1"
            st["hostIPs"] = [{"ip": "10.0.0.1"}]
            st["startTime"] = now_rfc3339()
            _set_conditions(
                st, _cond("PodReadyToStartContainers", False), _cond("Initialized", True),
                _cond("Ready", False, "ContainersNotReady",
                      "containers with unready status: "
                      f"[{' '.join(c['name'] for c in pod['spec']['containers'])}]"),
                _cond("ContainersReady", False, "ContainersNotReady"),
            )
            st["containerStatuses"] = self._containers(pod, {"waiting": {
                "reason": "ContainerCreating"}})

        self._status(accept)
        pod = self._wait(self.k.config.step_delay)
        # 3. image pull
        container = pod["spec"]["containers"][0]
        bad = next((c["image"] for c in pod["spec"]["containers"]
                    if any(p in c.get("image", "") for p in self.k.config.image_pull_failures)),
                   None)
        if bad is not None:
            self._set_waiting("ErrImagePull", f'rpc error: code = NotFound desc = failed to pull '
                              f'and unpack image "{bad}": not found')
            self._wait(self.k.config.image_backoff_delay)
            self._set_waiting("ImagePullBackOff", f'Back-off pulling image "{bad}"')
            while True:
                self._wait()
        # 4. env
        while True:
            env, error = self.k.resolve_env(pod, container)
            if error is None:
                break
            if pod["status"]["containerStatuses"][0]["state"].get("waiting", {}).get(
                    "message") != error:
                self._set_waiting("CreateContainerConfigError", error)
            pod = self._wait()
        # 5. run
        argv = [self.k.expand(a, env) for a in
                (container.get("command") or []) + (container.get("args") or [])]
        self.started = True
        if argv:
            try:
                self.proc = subprocess.Popen(
                    argv, env=env, cwd=self.k.config.workdir, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                raise _Interrupt("start_error", message=str(e)) from e
            self.reader = threading.Thread(target=self._read_output, daemon=True,
                                           name=f"kubelet-log-{self.name}")
            self.reader.start()
        started_at = now_rfc3339()
        ip = self.k.next_ip()

        def running(st: Obj) -> None:
            st["phase"] = "Running"
            st["podIP"], st["podIPs"] = ip, [{"ip": ip}]
            _set_conditions(st, _cond("PodReadyToStartContainers", True),
                            _cond("Ready", True), _cond("ContainersReady", True))
            st["containerStatuses"] = self._containers(
                pod, {"running": {"startedAt": started_at}}, ready=True)

        self._status(running)
        self.started_at = started_at
        while True:
            try:
                self._wait(running=True)
            except _Interrupt as it:
                if it.kind == "exited":
                    return int(it.info["code"])
                raise

    def _read_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stream = cast(io.BufferedReader, self.proc.stdout)
        for chunk in iter(lambda: stream.read1(65536), b""):
            with self.log_lock:
                self.log.extend(chunk)
        self.proc.wait()
        self.wake.set()

    # -- endings -------------------------------------------------------------

    def _terminal(self, code: int, reason: str | None = None, pod_reason: str | None = None,
                  message: str | None = None, extra: list[Obj] | None = None) -> None:
        pod = self._pod()
        finished = now_rfc3339()
        if self.started:
            term: Obj = {"exitCode": code, "reason": reason or ("Completed" if code == 0 else
                                                                 "Error"),
                         "startedAt": self.started_at or finished,
                         "finishedAt": finished, "containerID":
                             f"kubesim://{self.uid}-{pod['spec']['containers'][0]['name']}"}
        else:
            term = {"exitCode": 137, "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated",
                    "startedAt": None, "finishedAt": None}
            code = 137

        def fn(st: Obj) -> None:
            st["phase"] = "Succeeded" if code == 0 else "Failed"
            if pod_reason:
                st["reason"] = pod_reason
            if message:
                st["message"] = message
            done = "PodCompleted"
            _set_conditions(st, _cond("PodReadyToStartContainers", False),
                            _cond("Ready", False, done), _cond("ContainersReady", False, done),
                            *(extra or []))
            st["containerStatuses"] = self._containers(pod, {"terminated": term})

        self._status(fn)
        self._final_delete_if_deleting()

    def _final_delete_if_deleting(self) -> None:
        pod = self._pod()
        if pod["metadata"].get("deletionTimestamp"):
            with contextlib.suppress(ApiError):
                self.k.api.delete("pods", self.ns, self.name, grace=0,
                                  preconditions={"uid": self.uid})

    def _interrupted(self, it: _Interrupt) -> None:
        if it.kind in ("stop", "gone"):
            return
        if it.kind == "deleted":
            code = self._graceful_stop(float(it.info.get("grace") or 0))
            self._terminal(code)
        elif it.kind == "deadline":
            self._kill(signal.SIGKILL)
            self._terminal(137, pod_reason="DeadlineExceeded",
                           message="Pod was active on the node longer than the specified "
                                   "deadline")
        elif it.kind == "oom":
            self._kill(signal.SIGKILL)
            self._terminal(137, reason="OOMKilled")
        elif it.kind == "evict":
            self._kill(signal.SIGKILL)
            self._terminal(137, pod_reason="Evicted", message=it.info["message"],
                           extra=[_cond("DisruptionTarget", True, it.info["reason"],
                                        it.info["message"])])
        elif it.kind == "start_error":
            self.started = True
            self._terminal(128, reason="StartError", message=None)
        elif it.kind == "lose_node":
            self._kill(signal.SIGKILL)
            with contextlib.suppress(ApiError):
                self.k.store.remove("pods", self.ns, self.name)

    def _graceful_stop(self, grace: float) -> int:
        if self.proc is None:
            return 0 if self.started else 137
        self._kill(signal.SIGTERM)
        end = time.monotonic() + grace
        while self.proc.poll() is None and not self.k.stopping:
            left = end - time.monotonic()
            if left <= 0:
                break
            self.wake.wait(left)
            self.wake.clear()
        self._kill(signal.SIGKILL)
        return self._reap()

    def _kill(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def _reap(self) -> int:
        """Wait for the process and its output reader; returns a shell-style exit code."""
        if self.proc is None:
            return 0
        code = self.proc.wait()
        if self.reader is not None:
            self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return 128 - code if code < 0 else code

    def interrupt(self, kind: str, **info: Any) -> None:
        self.fault = _Interrupt(kind, **info)
        self.wake.set()


class Kubelet:
    """Owns the pod workers; notified of every store write."""

    def __init__(self, api: Api, store: Store, config: KubeletConfig) -> None:
        self.api, self.store, self.config = api, store, config
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = False
        self._ips = itertools.count(2)

    def start(self) -> None:
        self.store.add_listener(self._on_event)

    def stop(self) -> None:
        self.stopping = True
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.wake.set()
        for w in workers:
            w.thread.join(10)
            w._kill(signal.SIGKILL)
            w._reap()

    def _on_event(self, ev: Event) -> None:
        if self.stopping:
            return
        if ev.resource == "secrets":
            self.wake_all()
            return
        uid = ev.obj["metadata"].get("uid", "")
        with self.lock:
            worker = self.workers.get(uid)
            if ev.type == "ADDED" and worker is None:
                worker = PodWorker(self, ev.namespace, ev.name, uid)
                self.workers[uid] = worker
                worker.thread.start()
            elif ev.type == "DELETED" and worker is not None and not worker.thread.is_alive():
                del self.workers[uid]
        if worker is not None:
            worker.wake.set()

    def forget(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

    def wake_all(self) -> None:
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.wake.set()

    def worker(self, namespace: str, name: str) -> PodWorker:
        pod = self.store.get("pods", namespace, name)
        with self.lock:
            w = self.workers.get(pod["metadata"]["uid"])
        if w is None:
            raise ApiError(404, f'pods "{name}" not found')
        return w

    def next_ip(self) -> str:
        n = next(self._ips)
        return f"10.244.{(n // 250) % 256}.{n % 250 + 2}"

    # -- scheduling ------------------------------------------------------------

    def unschedulable_reason(self, pod: Obj) -> str | None:
        n = self.config.node_count
        if self.config.unschedulable_message is not None:
            return self.config.unschedulable_message
        labels = {"kubernetes.io/hostname": self.config.node_name, "kubernetes.io/os": "linux",
                  **self.config.node_labels}
        selector = pod["spec"].get("nodeSelector") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            return (f"0/{n} nodes are available: {n} node(s) didn't match Pod's node "
                    "affinity/selector.")
        wanted: dict[str, float] = {}
        for c in pod["spec"]["containers"]:
            res = c.get("resources") or {}
            amounts = {**(res.get("limits") or {}), **(res.get("requests") or {})}
            for r, q in amounts.items():
                wanted[r] = wanted.get(r, 0.0) + parse_quantity(q)
        short = []
        for r, amount in sorted(wanted.items()):
            cap = self.config.node_capacity.get(r)
            if cap is None and "/" not in r:
                continue  # cpu/memory/ephemeral-storage unlimited unless configured
            if amount > parse_quantity(cap or 0):
                short.append(r)
        if short:
            return f"0/{n} nodes are available: " + ", ".join(
                f"{n} Insufficient {r}" for r in short) + "."
        return None

    # -- env -----------------------------------------------------------------

    @staticmethod
    def expand(value: str, env: dict[str, str]) -> str:
        """Kubernetes ``$(VAR)`` expansion; ``$$`` escapes; unknown refs stay."""
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            return env.get(m.group(1), m.group(0))

        return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", repl, value)

    def _secret_value(self, ns: str, ref: Obj) -> tuple[str | None, str | None]:
        name, key = ref.get("name", ""), ref.get("key", "")
        secret = self.store.try_get("secrets", ns, name)
        if secret is None:
            return None, None if ref.get("optional") else f'secret "{name}" not found'
        data = secret.get("data") or {}
        if key not in data:
            return None, (None if ref.get("optional")
                          else f"couldn't find key {key} in Secret {ns}/{name}")
        return base64.b64decode(data[key]).decode("utf-8", "replace"), None

    def resolve_env(self, pod: Obj, container: Obj) -> tuple[dict[str, str], str | None]:
        """Base env + container env; returns (env, error message or None)."""
        ns = pod["metadata"]["namespace"]
        env = dict(self.config.base_env)
        own: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            ref = src.get("secretRef")
            if not ref:
                continue
            secret = self.store.try_get("secrets", ns, ref.get("name", ""))
            if secret is None:
                if not ref.get("optional"):
                    return env, f'secret "{ref.get("name", "")}" not found'
                continue
            for k, v in (secret.get("data") or {}).items():
                own[src.get("prefix", "") + k] = base64.b64decode(v).decode("utf-8", "replace")
        for var in container.get("env") or []:
            name = var.get("name", "")
            if "value" in var or "valueFrom" not in var:
                own[name] = self.expand(str(var.get("value", "")), own)
                continue
            vf = var["valueFrom"]
            if "secretKeyRef" in vf:
                value, error = self._secret_value(ns, vf["secretKeyRef"])
                if error:
                    return env, error
                if value is not None:
                    own[name] = value
            elif "fieldRef" in vf:
                own[name] = self._field(pod, vf["fieldRef"].get("fieldPath", ""))
        env.update(own)
        return env, None

    @staticmethod
    def _field(pod: Obj, path: str) -> str:
        meta = pod["metadata"]
        if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        simple = {
            "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"), "spec.nodeName": pod["spec"].get("nodeName"),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
            "status.podIP": pod["status"].get("podIP"), "status.hostIP": "10.0.0.1",
        }
        return str(simple.get(path) or "")

    # -- logs ------------------------------------------------------------------

    def read_log(self, namespace: str, name: str, container: str | None = None,
                 tail_lines: int | None = None, limit_bytes: int | None = None) -> bytes:
        pod = self.store.get("pods", namespace, name)
        names = [c["name"] for c in pod["spec"]["containers"]]
        if container is None and len(names) > 1:
            raise ApiError(400, f"a container name must be specified for pod {name}, "
                                f"choose one of: [{' '.join(names)}]")
        container = container or names[0]
        if container not in names:
            raise ApiError(400, f"container {container} is not valid for pod {name}")
        with self.lock:
            w = self.workers.get(pod["metadata"]["uid"])
        if w is None or not w.started:
            statuses = pod.get("status", {}).get("containerStatuses") or []
            reason = next((s["state"]["waiting"].get("reason", "") for s in statuses
                           if s["name"] == container and "waiting" in s["state"]),
                          "ContainerCreating")
            raise ApiError(400, f'container "{container}" in pod "{name}" is waiting to start: '
                                f"{reason}")
        if container != names[0]:
            return b""
        with w.log_lock:
            data = bytes(w.log)
        if tail_lines is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail_lines:]) if tail_lines > 0 else b""
        if limit_bytes is not None:
            data = data[:limit_bytes]
        return data

    # -- faults ----------------------------------------------------------------

    def interrupt(self, namespace: str, name: str, kind: str, **info: Any) -> None:
        self.worker(namespace, name).interrupt(kind, **info)

    def set_unschedulable(self, message: str | None) -> None:
        self.config.unschedulable_message = message
        self.wake_all()


__all__ = ["TERMINAL", "Kubelet", "KubeletConfig", "PodWorker", "parse_quantity"]
