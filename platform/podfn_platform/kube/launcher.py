"""The Kubernetes launcher: one pod per attempt, followed through the pod event stream.

Airflow's KubernetesExecutor, with Postgres as the only state: pods are
created concurrently (bounded, rate limited) under deterministic names, the
watcher turns pod events into `Exit`s, and a periodic (or after-410) full
reconcile compares every unfinished call with the pods that exist, so a
missed event cannot strand a call. Pods outlive a controller restart; the
next controller adopts them.

Warm workers (docs/warm-workers.md): a pod launched for attempt `<call>/<n>`
may go on to run further calls of its pool, which its runtime claims itself.
The launcher keeps such a pod under the key it was launched with (its name
never changes) while the controller points it, through `rebind`, at the
attempt it runs now; every exit of the pod is reported with that attempt
and the worker's name, and the controller maps it to what is in flight. A
warm pod has no activeDeadlineSeconds (it would cut its later calls short):
when Postgres says the call it runs is past its `timeout` (`rebind`), the
launcher deletes the pod and reports the timeout. A relist finds warm pods
by their `podfn.dev/worker` annotation, so a restarted controller adopts
them, busy or idle.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from podfn.errors import (
    KubernetesAlreadyExists,
    KubernetesError,
    KubernetesInvalid,
    KubernetesQuotaExceeded,
    KubernetesTransient,
    KubernetesUnauthorized,
)
from podfn.settings import Settings
from podfn_platform.controller.launcher import Attempt, Exit, Unfinished, worker_origin
from podfn_platform.kube import outcomes
from podfn_platform.kube.client import KubeClient
from podfn_platform.kube.manifest import (
    CONTAINER,
    SELECTOR,
    PodSettings,
    attempt_of,
    build_pod,
    pod_name,
    worker_of,
)
from podfn_platform.kube.ratelimit import RateLimiter
from podfn_platform.kube.watcher import PodWatcher, Store

log = logging.getLogger("podfn.kube.launcher")

Key = tuple[str, int]

_CREATE_TRIES = 8
_DELETE_GRACE_SECONDS = 5


def pod_key(attempt: Attempt) -> Key:
    """The attempt a pod was launched for: a warm worker's name, else the attempt itself.

    A warm worker is named `<call id>/<attempt>` after its first call; a standing
    worker (`min_workers`) has no first call and was launched as `(<its name>, 0)`.
    """
    if attempt.worker:
        call_id, number = worker_origin(attempt.worker)
        if call_id is None or number is None:
            return (attempt.worker, 0)
        return (call_id, number)
    return attempt.key


def _container_started(pod: dict[str, Any]) -> datetime | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            started = ((status.get("state") or {}).get("running") or {}).get("startedAt")
            return datetime.fromisoformat(started.replace("Z", "+00:00")) if started else None
    return None


def _finished_at(pod: dict[str, Any]) -> datetime | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        finished = ((status.get("state") or {}).get("terminated") or {}).get("finishedAt")
        if finished:
            return datetime.fromisoformat(finished.replace("Z", "+00:00"))
    return None


class KubernetesLauncher:
    def __init__(self, kube: KubeClient, settings: Settings, store: Store, *,
                 wake: Any, pod_settings: PodSettings | None = None) -> None:
        self._kube = kube
        self._settings = settings
        self._pods = pod_settings or PodSettings(
            namespace=kube.namespace, runtime_image=settings.runtime_image,
            database_secret=settings.runtime_database_secret,
            max_result_bytes=settings.max_result_bytes,
            image_pull_seconds=math.ceil(settings.image_pull_timeout_seconds))
        self._wake = wake
        self._lock = threading.Lock()
        # By the key the pod was launched for (pod_key): for a warm worker, the
        # attempt it runs now (or ran last), under the key of its first.
        self._active: dict[Key, Attempt] = {}
        self._deadlines: dict[Key, float] = {}  # warm pods: the current call's timeout
        self._adopted_all = False  # a full reconcile has found every pod of ours
        self._creating: set[Key] = set()
        self._stopping: set[Key] = set()
        self._exits: list[Exit] = []
        self._delete_at: dict[str, float] = {}
        self._created: dict[Key, float] = {}  # when our create call returned
        self._deadline_set: set[Key] = set()  # activeDeadlineSeconds lowered once running
        self._lingering: set[str] = set()  # pods whose outcome came while they still ran
        self._want_full = False
        self._relisted: tuple[list[dict[str, Any]], float] | None = None
        self._closed = False
        self._next_reconcile = time.monotonic() + settings.reconcile_seconds
        self._pool = ThreadPoolExecutor(max_workers=settings.pod_create_concurrency,
                                        thread_name_prefix="podfn-pods")
        self._limiter = RateLimiter(settings.pod_create_qps, settings.pod_create_burst)
        self.watcher = PodWatcher(kube, selector=SELECTOR, store=store,
                                  on_event=self._on_event, on_relist=self._on_relist,
                                  timeout_seconds=settings.watch_timeout_seconds)
        self._watch_thread = threading.Thread(target=self.watcher.run, name="podfn-watch",
                                              daemon=True)

    # -- launching ----------------------------------------------------------

    def start(self) -> None:
        self._watch_thread.start()

    def launch(self, attempt: Attempt) -> str:
        name = pod_name(attempt.call_id, attempt.attempt)
        try:
            manifest = build_pod(call_id=attempt.call_id, attempt=attempt.attempt,
                                 function_name=attempt.function_name, spec=attempt.spec,
                                 client_python=attempt.client_python, settings=self._pods,
                                 runtime_env=attempt.env, worker=attempt.worker)
        except (TypeError, ValueError, AttributeError) as exc:
            self._report(attempt.key, "fatal", f"cannot build the pod manifest: {exc}",
                         attempt=attempt)
            return name
        with self._lock:
            self._active[attempt.key] = attempt
            self._creating.add(attempt.key)
        self._submit(self._create, attempt, manifest)
        return name

    def _create(self, attempt: Attempt, manifest: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        backoff = 0.2
        try:
            for tries in range(1, _CREATE_TRIES + 1):
                self._limiter.acquire()
                try:
                    self._kube.create_pod(manifest)
                    log.info("created pod %s", name)
                    break
                except KubernetesAlreadyExists:
                    log.info("pod %s already exists (a repeated create)", name)
                    break
                except KubernetesUnauthorized as exc:
                    # The controller's credentials, not the call: read them again and retry;
                    # if they stay refused, put the call back without spending anything.
                    if tries == _CREATE_TRIES:
                        self._report(attempt.key, "deferred", "the controller's Kubernetes "
                                     f"credentials are refused: {exc}",
                                     delay=self._settings.quota_retry_seconds)
                        return
                    log.warning("creating pod %s: %s; reloading credentials", name, exc)
                    self._kube.reload_credentials()
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                except KubernetesTransient as exc:  # 429, 5xx, broken connection, 409 Conflict
                    if tries == _CREATE_TRIES:
                        self._report(attempt.key, "disrupted",
                                     f"could not create pod {name} after {tries} tries: {exc}")
                        return
                    pause = exc.retry_after if exc.retry_after is not None else backoff
                    log.warning("creating pod %s: %s; retrying in %.1fs", name, exc, pause)
                    time.sleep(pause)
                    backoff = min(backoff * 2, 10.0)
                except KubernetesQuotaExceeded as exc:
                    self._report(attempt.key, "deferred", f"waiting for quota: {exc}",
                                 delay=self._settings.quota_retry_seconds)
                    return
                except KubernetesInvalid as exc:
                    self._report(attempt.key, "fatal", f"the Kubernetes API rejected pod {name}: "
                                                   f"{exc}")
                    return
        finally:
            with self._lock:
                self._creating.discard(attempt.key)
                self._created[attempt.key] = time.monotonic()
                stopping = attempt.key in self._stopping
        if stopping:
            self._delete(name)

    # -- what the watcher sees ------------------------------------------------

    def _report(self, key: Key, kind: str, reason: str, *, exit_code: int | None = None,
                delay: float = 0.0, attempt: Attempt | None = None) -> None:
        """Report the end of the pod launched for `key` once; later news of it is ignored.

        The exit names what the pod runs now (a warm worker's current attempt);
        `attempt` reports one the launcher does not hold (found by a reconcile).
        """
        with self._lock:
            ended = self._active.pop(key, None) or attempt
            if ended is None:
                return
            self._stopping.discard(key)
            self._created.pop(key, None)
            self._deadlines.pop(key, None)
            self._exits.append(Exit(ended, kind, reason, exit_code=exit_code, delay=delay))
        self._wake()

    def _outcome(self, attempt: Attempt, pod: dict[str, Any]) -> outcomes.Outcome | None:
        found = outcomes.outcome(pod, pending_timeout=self._settings.pending_timeout_seconds,
                                 image_pull_timeout=self._settings.image_pull_timeout_seconds,
                                 timeout=attempt.spec.get("timeout"))
        if found is not None and (pod.get("status") or {}).get("phase") not in (
                "Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp"):
            with self._lock:  # still running (a sidecar): settle deletes it at once
                self._lingering.add(pod["metadata"]["name"])
        if found is not None and found.kind == "exited" and found.exit_code == 0 and \
                attempt.worker:
            # A warm worker exits 0 when idle or done: the controller records it
            # against the call it runs, if any (none after its last call).
            found = outcomes.Outcome("exited", f"warm worker pod {pod['metadata']['name']} "
                                     "exited (code 0) while running the call, without "
                                     "recording its result", 0)
        return found

    def _start_deadline(self, attempt: Attempt, pod: dict[str, Any]) -> None:
        """Once the container runs, count the `timeout` from then, not from the pull.

        The manifest's activeDeadlineSeconds is the timeout plus the image
        pull timeout (the deadline counts from the kubelet accepting the
        pod, pull included); lowering it, which the API allows, to the time
        the container took to start plus the timeout makes the pull free.
        """
        timeout = attempt.spec.get("timeout")
        status = pod.get("status") or {}
        running = next((((c.get("state") or {}).get("running") or {}).get("startedAt")
                        for c in status.get("containerStatuses") or []
                        if c.get("name") == CONTAINER), None)
        current = (pod.get("spec") or {}).get("activeDeadlineSeconds")
        if not timeout or not running or not status.get("startTime") or not current:
            return
        with self._lock:
            if attempt.key in self._deadline_set:
                return
            self._deadline_set.add(attempt.key)
        started = datetime.fromisoformat(running.replace("Z", "+00:00"))
        accepted = datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
        wanted = max(1, math.ceil((started - accepted).total_seconds()) + math.ceil(timeout))
        if wanted < current:
            log.info("pod %s runs: activeDeadlineSeconds %d -> %d (the timeout from now)",
                     pod["metadata"]["name"], current, wanted)
            self._submit(self._lower_deadline, pod["metadata"]["name"], wanted)

    def _lower_deadline(self, name: str, seconds: int) -> None:
        try:
            self._kube.set_active_deadline(name, seconds)
        except KubernetesError as exc:
            log.warning("could not lower the deadline of pod %s (%s); its timeout counts "
                        "from the image pull", name, exc)

    def _start_warm_deadline(self, key: Key, attempt: Attempt, pod: dict[str, Any]) -> None:
        """A warm pod's first call: wake the controller around its timeout, counted
        from the container's start, even if nothing else wakes it until then (the
        controller's `rebind` decides, from the attempt's recorded start)."""
        timeout = attempt.spec.get("timeout")
        started = _container_started(pod)
        if not timeout or started is None or attempt.key != key:
            return
        ran = max(0.0, (datetime.now(UTC) - started).total_seconds())
        with self._lock:
            if self._active.get(key) is not attempt or key in self._deadlines:
                return
            self._deadlines[key] = time.monotonic() - ran + timeout
        self._wake()  # to sleep no longer than the deadline

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        key = attempt_of(pod)
        if key is None:
            return
        with self._lock:
            attempt = self._active.get(key)
            stopping = key in self._stopping
        if attempt is None:
            return
        found = self._outcome(attempt, pod)
        if found is not None and found.kind == "disrupted" and stopping:
            found = None  # our own delete (cancelled, superseded) under way
        if kind == "DELETED" and found is None:
            if stopping:
                self._report(key, "stopped", "stopped by the controller")
            else:
                name = pod["metadata"]["name"]
                self._report(key, "disrupted",
                             f"pod {name} was deleted before it finished (node lost, or "
                             "deleted by someone else)")
            return
        if found is not None:
            self._report(key, found.kind, found.reason, exit_code=found.exit_code)
        elif not stopping and attempt.worker:
            self._start_warm_deadline(key, attempt, pod)
        elif not stopping:
            self._start_deadline(attempt, pod)

    def _on_relist(self, pods: list[dict[str, Any]], listed_at: float) -> None:
        """The watcher relisted (after 410): reconcile against that list, not a second one."""
        with self._lock:
            self._want_full = True
            self._relisted = (pods, listed_at)
        self._wake()

    # -- the controller's turn ------------------------------------------------

    def _held_key(self, key: Key) -> Key | None:
        """The pod key of the pod running attempt `key` (with the lock held)."""
        return next((k for k, a in self._active.items() if a.key == key),
                    key if key in self._active else None)

    def stop(self, key: Key) -> None:
        with self._lock:
            held = self._held_key(key)
            if held is None or held in self._stopping:
                return
            key = held
            self._stopping.add(key)
            creating = key in self._creating
        if not creating:  # else _create deletes it once created
            self._submit(self._delete, pod_name(*key), _DELETE_GRACE_SECONDS)

    def _submit(self, fn: Any, *args: Any) -> None:
        """Run `fn` on the pod-request pool; after close() the next controller will do it."""
        with self._lock:
            if self._closed:
                return
            self._pool.submit(fn, *args)

    def _delete(self, name: str, grace: int | None = None) -> None:
        try:
            self._kube.delete_pod(name, grace_seconds=grace)
        except KubernetesError as exc:
            log.warning("could not delete pod %s (%s); the next reconcile tries again", name, exc)

    def active(self) -> list[Attempt]:
        with self._lock:
            return list(self._active.values())

    def exits(self) -> list[Exit]:
        with self._lock:
            out, self._exits = self._exits, []
        return out

    # -- warm workers (docs/warm-workers.md) ---------------------------------

    @property
    def workers_known(self) -> bool:
        """Whether every warm pod of ours is followed (a full reconcile has listed them):
        until then an attempt whose worker is not held may only not be adopted yet."""
        return self._adopted_all

    def workers(self) -> dict[str, Attempt]:
        """Warm workers by name: those followed, and those whose exit is not yet taken
        (their in-flight attempt is recorded through the exit, not as an orphan)."""
        with self._lock:
            out = {a.worker: a for a in self._active.values() if a.worker}
            out.update({e.attempt.worker: e.attempt for e in self._exits if e.attempt.worker})
        return out

    def rebind(self, worker: str, attempt: Attempt | None, running_seconds: float) -> None:
        """The warm worker `worker` runs `attempt` now (running for `running_seconds`),
        or nothing (None: idle, no deadline).

        The call's `timeout` is enforced here, from what Postgres says the worker
        runs, never from the launcher's own clock alone: a worker that finished
        its call in time and sits idle, or moved on to another call, is not
        killed for the old call's deadline. The deadline only wakes the
        controller (`next_deadline`) so that it asks again in time.
        """
        key = pod_key(Attempt("", 0, "", {}, "", worker=worker))
        with self._lock:
            held = self._active.get(key)
            if held is None or key in self._stopping:
                return
            if attempt is None:
                self._deadlines.pop(key, None)
                return
            moved = attempt.key != held.key
            if moved:
                held = self._active[key] = dataclasses.replace(attempt, worker=worker)
            timeout = attempt.spec.get("timeout")
            if not timeout or attempt.state != "running":  # not started: its pod may pull
                if moved:
                    self._deadlines.pop(key, None)
                return
            # Counted from the attempt's recorded start (not its pod's image pull).
            self._deadlines[key] = time.monotonic() - running_seconds + timeout
            if running_seconds < timeout:
                return
            self._lingering.add(pod_name(*key))  # settle deletes it at once
        log.info("call %s attempt %d ran past its timeout in warm pod %s; deleting the pod",
                 held.call_id, held.attempt, pod_name(*key))
        self._report(key, "timeout", f"timed out after {timeout:g} s (the `timeout` hint; "
                     f"warm worker pod {pod_name(*key)} deleted)")

    def settle(self, exit_: Exit) -> None:
        """Delete the pod now, or after `keep_failed_pods_seconds` if it failed while running."""
        key = pod_key(exit_.attempt)
        name = pod_name(*key)
        with self._lock:
            lingering = name in self._lingering
            self._lingering.discard(name)
            self._deadline_set.discard(key)
        keep = exit_.kind in ("timeout", "disrupted") or (
            exit_.kind == "exited" and exit_.exit_code != 0)
        if keep and not lingering:  # a pod still running holds its node's resources
            with self._lock:
                self._delete_at[name] = time.monotonic() + self._settings.keep_failed_pods_seconds
        else:
            self._submit(self._delete, name)

    def next_deadline(self) -> float | None:
        now = time.monotonic()
        with self._lock:
            times = [self._next_reconcile, *self._delete_at.values(), *self._deadlines.values()]
        return max(0.0, min(times) - now)

    def reconcile(self, unfinished: Unfinished, *, full: bool) -> None:
        now = time.monotonic()
        with self._lock:
            due_deletes = [n for n, at in self._delete_at.items() if at <= now]
            for name in due_deletes:
                del self._delete_at[name]
            full = full or self._want_full or now >= self._next_reconcile
        for name in due_deletes:
            self._submit(self._delete, name)
        if not full:
            return
        with self._lock:
            relisted, self._relisted = self._relisted, None
        if relisted is not None:
            pods, listed_at = relisted
        else:
            listed_at = time.monotonic()
            try:
                pods, _ = self._kube.list_pods(SELECTOR)
            except KubernetesError as exc:
                log.warning("reconcile could not list pods (%s); trying again next turn", exc)
                if isinstance(exc, KubernetesUnauthorized):
                    self._kube.reload_credentials()
                return
        with self._lock:
            self._want_full = False
            self._next_reconcile = now + self._settings.reconcile_seconds
        self._reconcile(pods, unfinished(), listed_at)

    def _reconcile(self, pods: list[dict[str, Any]], unfinished: list[Attempt],
                   listed_at: float) -> None:
        by_key = {k: p for p in pods if (k := attempt_of(p)) is not None}
        wanted = {a.key for a in unfinished}
        now = datetime.now(UTC)
        for attempt in unfinished:
            pod = by_key.get(attempt.key)
            with self._lock:
                # A pod we created after the list began may simply not be in it yet.
                busy = attempt.key in self._creating or (
                    self._created.get(attempt.key, -1.0) >= listed_at)
                held = self._active.get(attempt.key)
                if pod is not None and held is None:  # adopt (e.g. after a restart)
                    held = self._active[attempt.key] = dataclasses.replace(
                        attempt, worker=worker_of(pod))
            if pod is not None and held is not None:
                found = self._outcome(held, pod)
                if found is not None:
                    self._report(attempt.key, found.kind, found.reason,
                                 exit_code=found.exit_code, attempt=held)
                elif held.worker:
                    self._start_warm_deadline(attempt.key, held, pod)
                else:  # (its Running event may have been missed, or come before a restart)
                    self._start_deadline(attempt, pod)
                continue
            if busy:
                continue
            age = (now - attempt.launched_at).total_seconds() if attempt.launched_at else 0.0
            if attempt.state == "running":
                self._report(attempt.key, "disrupted",
                             f"pod {pod_name(*attempt.key)} vanished while running",
                             attempt=attempt)
            elif age >= self._settings.launch_grace_seconds:
                self._report(attempt.key, "disrupted",
                             f"no pod for attempt {attempt.attempt} after {age:.0f} s; "
                             "relaunching", attempt=attempt)
        self._reconcile_workers(by_key, wanted, listed_at)
        with self._lock:
            mine = set(self._active) | self._creating | {pod_key(e.attempt) for e in self._exits}
            kept = set(self._delete_at)
        for key, pod in by_key.items():
            name = pod["metadata"]["name"]
            if key in wanted or key in mine or name in kept:
                continue
            phase = (pod.get("status") or {}).get("phase")
            if pod["metadata"].get("deletionTimestamp"):
                continue
            if phase == "Failed":
                finished = _finished_at(pod)
                age = (now - finished).total_seconds() if finished else 0.0
                if age < self._settings.keep_failed_pods_seconds:
                    continue
            log.info("deleting pod %s (%s; its call is finished or moved on)", name, phase)
            self._submit(self._delete, name)
        self._adopted_all = True

    def _reconcile_workers(self, by_key: dict[Key, dict[str, Any]], wanted: set[Key],
                           listed_at: float) -> None:
        """Warm pods whose first call is over: adopt those we do not follow (a restart),
        report those we follow that are gone (a DELETED event missed).

        What an adopted worker runs now is the controller's to find (`rebind`);
        until then it is held under the attempt it was launched for."""
        with self._lock:
            mine = set(self._active) | self._creating | {pod_key(e.attempt) for e in self._exits}
            kept = set(self._delete_at)
            vanished = [k for k, a in self._active.items()
                        if a.worker and k not in by_key and k not in wanted
                        and k not in self._creating and k not in self._stopping
                        and self._created.get(k, -1.0) < listed_at]
        for key in vanished:
            self._report(key, "disrupted", f"warm worker pod {pod_name(*key)} vanished")
        for key, pod in by_key.items():
            worker = worker_of(pod)
            if not worker or key in wanted or key in mine or pod["metadata"]["name"] in kept \
                    or pod["metadata"].get("deletionTimestamp"):
                continue
            annotations = pod["metadata"].get("annotations") or {}
            adopted = Attempt(call_id=key[0], attempt=key[1],
                              function_name=annotations.get("podfn.dev/function", ""),
                              spec={}, client_python="", state="running", worker=worker)
            with self._lock:
                self._active[key] = adopted
            log.info("adopted warm worker pod %s", pod["metadata"]["name"])
            found = self._outcome(adopted, pod)
            if found is not None:
                self._report(key, found.kind, found.reason, exit_code=found.exit_code)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.watcher.stop()
        if self._watch_thread.is_alive():
            self._watch_thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._kube.close()
