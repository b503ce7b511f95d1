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
   ``ImagePullBackOff`` for good, naming the registry's "not found" (or
   "unauthorized"); images matching a *transient* pattern fail the same way
   with a registry 429 ("toomanyrequests") a given number of times, with
   ``image_backoff_delay`` between tries, then pull;
   kubelet admission: a queued rejection (``reject_admission``) ends the pod
   ``Failed`` with the kubelet's reason (``OutOfcpu``, ``OutOfmemory``,
   ``OutOfpods``, ``UnexpectedAdmissionError``) and no container statuses;
4. env: plain values, ``secretKeyRef``, ``fieldRef`` (metadata.name,
   metadata.namespace, metadata.uid, spec.nodeName, status.podIP,
   metadata.labels/annotations['k']) and ``envFrom.secretRef`` are resolved,
   ``$(VAR)`` references expanded; a missing Secret/key leaves the pod Pending
   with ``CreateContainerConfigError`` until the Secret appears;
5. run: the first container's ``command + args`` runs as a local process
   with the base environment overlaid by the pod's env; output (stdout and
   stderr) is captured for ``/log``; phase Running, podIP, Ready; every
   other container (a sidecar such as ``istio-proxy``) is Running too, and
   keeps running after the first one exits: the pod stays ``Running``, with
   the first container ``terminated``, until it is deleted (SIGTERM ends the
   sidecars with exit 0) - a pod runs until all its containers stop;
6. end: exit 0 -> Succeeded/Completed, else Failed/Error; a failed container
   with ``terminationMessagePolicy: FallbackToLogsOnError`` gets the last 80
   lines (at most 2 KiB) of its output as ``terminated.message``; deletion ->
   SIGTERM, SIGKILL after the grace period, terminal phase, then the final
   delete with grace 0 (the object goes once finalizers are gone);
   ``activeDeadlineSeconds`` -> SIGTERM, SIGKILL after the pod's
   ``terminationGracePeriodSeconds``, Failed/DeadlineExceeded;
7. a lost node (``lose_node``): the process is gone with the node, the pod's
   Ready condition turns False (NodeNotReady) and nothing else happens for
   the toleration (300 s by default, as the default
   ``node.kubernetes.io/unreachable`` toleration); then the taint manager
   adds ``DisruptionTarget`` (DeletionByTaintManager) and deletes the pod
   gracefully - which no kubelet ever confirms, so the object stays
   Terminating (phase Running, or ``Unknown`` if asked) until the Node is
   removed (``remove_lost_nodes``), when pod GC deletes it.

Simplifications: one node; restartPolicy is always treated as Never (no
restarts, whatever the spec says); only the first container runs a process:
the others run none and stay Running until the pod is deleted (a sidecar
that never exits on its own), and a first container without ``command`` and
``args`` does the same; ``args`` without ``command`` are run as the command (no image
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
from .quantity import parse_quantity
from .store import Event, Obj, Store


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
    # pattern -> how many more pulls of a matching image fail with a registry 429
    transient_pull_failures: dict[str, int] = field(default_factory=dict)
    # (pod-name substring, reason, message): the kubelet rejects the next matching pod
    admission_rejections: list[tuple[str, str, str]] = field(default_factory=list)
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
        self.main_term: Obj | None = None  # the first container's end while sidecars run
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

    def _containers(self, pod: Obj, state: Obj, ready: bool = False,
                    sidecars: Obj | None = None) -> list[Obj]:
        """Container statuses: ``state`` for the first, ``sidecars`` (default: the same)
        for the others."""
        out = []
        for i, c in enumerate(pod["spec"]["containers"]):
            own = state if i == 0 or sidecars is None else sidecars
            cs: Obj = {"name": c["name"], "image": c.get("image", ""), "imageID": "",
                       "ready": ready and "running" in own, "restartCount": 0,
                       "started": "running" in own, "state": own, "lastState": {}}
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
            if len(self._pod()["spec"]["containers"]) > 1:
                self._main_exited(code)
                while True:  # the sidecars run on until the pod is deleted
                    self._wait()
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
        rejection = self.k.take_admission_rejection(self.name)
        if rejection is not None:
            raise _Interrupt("rejected", reason=rejection[0], message=rejection[1])
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
            if "unauthorized" in bad:
                why = (f'rpc error: code = Unknown desc = failed to pull and unpack image "{bad}": '
                       "failed to resolve reference: pull access denied, repository does not "
                       "exist or may require authorization: authorization failed: "
                       "401 Unauthorized")
            else:
                why = (f'rpc error: code = NotFound desc = failed to pull and unpack image "{bad}":'
                       f' failed to resolve reference "{bad}": {bad}: not found')
            self._set_waiting("ErrImagePull", why)
            self._wait(self.k.config.image_backoff_delay)
            self._set_waiting("ImagePullBackOff", f'Back-off pulling image "{bad}": '
                              f"ErrImagePull: {why}")
            while True:
                self._wait()
        while (busy := self.k.take_transient_pull(pod)) is not None:
            why = (f'rpc error: code = Unknown desc = failed to pull and unpack image "{busy}": '
                   "failed to copy: httpReadSeeker: failed open: unexpected status code "
                   f"https://registry.example/v2/{busy.split(':')[0]}/manifests: "
                   "429 Too Many Requests - Server message: toomanyrequests: You have reached "
                   "your pull rate limit.")
            self._set_waiting("ErrImagePull", why)
            self._wait(self.k.config.image_backoff_delay)
            self._set_waiting("ImagePullBackOff", f'Back-off pulling image "{busy}": '
                              f"ErrImagePull: {why}")
            self._wait(self.k.config.image_backoff_delay)
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

    def _main_term(self, pod: Obj, code: int, reason: str | None = None) -> Obj:
        """The first container's ``terminated`` state (after it ran, or never having run)."""
        finished = now_rfc3339()
        container = pod["spec"]["containers"][0]
        if not self.started:
            return {"exitCode": 137, "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated",
                    "startedAt": None, "finishedAt": None}
        term: Obj = {"exitCode": code, "reason": reason or ("Completed" if code == 0 else
                                                             "Error"),
                     "startedAt": self.started_at or finished, "finishedAt": finished,
                     "containerID": f"kubesim://{self.uid}-{container['name']}"}
        if code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with self.log_lock:
                tail = b"".join(bytes(self.log).splitlines(keepends=True)[-80:])[-2048:]
            if tail:
                term["message"] = tail.decode("utf-8", "replace")
        return term

    def _main_exited(self, code: int) -> None:
        """The first container ended while sidecars run on: the pod stays Running."""
        pod = self._pod()
        self.main_term = self._main_term(pod, code)
        sidecar_state = {"running": {"startedAt": self.started_at or now_rfc3339()}}
        term = self.main_term

        def fn(st: Obj) -> None:
            _set_conditions(st, _cond("Ready", False, "ContainersNotReady"),
                            _cond("ContainersReady", False, "ContainersNotReady"))
            st["containerStatuses"] = self._containers(pod, {"terminated": term}, ready=True,
                                                       sidecars=sidecar_state)

        self._status(fn)

    def _terminal(self, code: int, reason: str | None = None, pod_reason: str | None = None,
                  message: str | None = None, extra: list[Obj] | None = None) -> None:
        pod = self._pod()
        if self.main_term is not None:  # it had ended before; sidecars end now
            term = self.main_term
            code = int(term["exitCode"]) if reason is None else code
            if reason is not None:  # killed by a fault: that is the container's end
                term = self._main_term(pod, code, reason)
        else:
            term = self._main_term(pod, code, reason)
            code = int(term["exitCode"])
        sidecars: Obj | None = None
        if len(pod["spec"]["containers"]) > 1:
            finished = now_rfc3339()
            sidecars = {"terminated": {"exitCode": 0, "reason": "Completed",
                                       "startedAt": self.started_at or finished,
                                       "finishedAt": finished}}

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
            st["containerStatuses"] = self._containers(pod, {"terminated": term},
                                                       sidecars=sidecars)

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
            grace = float(self._pod()["spec"].get("terminationGracePeriodSeconds", 30))
            code = self._graceful_stop(grace)
            self._terminal(code, pod_reason="DeadlineExceeded",
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
        elif it.kind == "rejected":
            def reject(st: Obj) -> None:
                st["phase"] = "Failed"
                st["reason"], st["message"] = it.info["reason"], it.info["message"]
                st.pop("containerStatuses", None)

            self._status(reject)
        elif it.kind == "lose_node":
            self._node_lost(float(it.info.get("toleration_seconds", 300.0)),
                            str(it.info.get("phase") or "Running"))

    def _node_lost(self, toleration: float, phase: str) -> None:
        """The node stopped answering: NotReady, the toleration, then a Terminating limbo."""
        self._kill(signal.SIGKILL)  # gone with the node; no kubelet reports it
        self._status(lambda st: _set_conditions(
            st, _cond("Ready", False, "NodeNotReady", "Node is not ready")))
        end = time.monotonic() + toleration
        while not self.k.stopping and (left := end - time.monotonic()) > 0:
            self.wake.wait(left)
            self.wake.clear()
        if self.k.stopping:
            return
        cond = _cond("DisruptionTarget", True, "DeletionByTaintManager",
                     "Taint manager: deleting due to NoExecute taint")

        def taint(st: Obj) -> None:
            _set_conditions(st, cond)
            if phase == "Unknown":
                st["phase"] = "Unknown"

        self._status(taint)
        with contextlib.suppress(ApiError):
            self.k.api.delete("pods", self.ns, self.name)
        while not self.k.stopping and not self.k.nodes_removed:
            self.wake.wait()
            self.wake.clear()
        if not self.k.stopping:  # pod GC: the Node object is gone, so is its pod
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
        self.nodes_removed = False  # set by remove_lost_nodes
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

    def take_transient_pull(self, pod: Obj) -> str | None:
        """An image of the pod whose next pull fails with a 429, counting it; else None."""
        with self.lock:
            for c in pod["spec"]["containers"]:
                image = str(c.get("image", ""))
                for pattern, left in self.config.transient_pull_failures.items():
                    if left > 0 and pattern in image:
                        self.config.transient_pull_failures[pattern] = left - 1
                        return image
        return None

    def take_admission_rejection(self, name: str) -> tuple[str, str] | None:
        with self.lock:
            for i, (pattern, reason, message) in enumerate(self.config.admission_rejections):
                if pattern in name:
                    del self.config.admission_rejections[i]
                    return reason, message
        return None

    def remove_lost_nodes(self) -> None:
        self.nodes_removed = True
        self.wake_all()

    def set_unschedulable(self, message: str | None) -> None:
        self.config.unschedulable_message = message
        self.wake_all()


__all__ = ["TERMINAL", "Kubelet", "KubeletConfig", "PodWorker", "parse_quantity"]
