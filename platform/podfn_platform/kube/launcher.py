"""The Kubernetes launcher: one pod per attempt, followed through the pod event stream.

Airflow's KubernetesExecutor, with Postgres as the only state: pods are
created concurrently (bounded, rate limited) under deterministic names, the
watcher turns pod events into `Exit`s, and a periodic (or after-410) full
reconcile compares every unfinished call with the pods that exist, so a
missed event cannot strand a call. Pods outlive a controller restart; the
next controller adopts them.
"""

from __future__ import annotations

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
from podfn_platform.controller.launcher import Attempt, Exit, Unfinished
from podfn_platform.kube import outcomes
from podfn_platform.kube.client import KubeClient
from podfn_platform.kube.manifest import (
    CONTAINER,
    SELECTOR,
    PodSettings,
    attempt_of,
    build_pod,
    pod_name,
)
from podfn_platform.kube.ratelimit import RateLimiter
from podfn_platform.kube.watcher import PodWatcher, Store

log = logging.getLogger("podfn.kube.launcher")

Key = tuple[str, int]

_CREATE_TRIES = 8
_DELETE_GRACE_SECONDS = 5


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
        self._active: dict[Key, Attempt] = {}
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
                                 runtime_env=attempt.env)
        except (TypeError, ValueError, AttributeError) as exc:
            self._report(attempt, "fatal", f"cannot build the pod manifest: {exc}", force=True)
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
                        self._report(attempt, "deferred", "the controller's Kubernetes "
                                     f"credentials are refused: {exc}",
                                     delay=self._settings.quota_retry_seconds)
                        return
                    log.warning("creating pod %s: %s; reloading credentials", name, exc)
                    self._kube.reload_credentials()
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                except KubernetesTransient as exc:  # 429, 5xx, broken connection, 409 Conflict
                    if tries == _CREATE_TRIES:
                        self._report(attempt, "disrupted",
                                     f"could not create pod {name} after {tries} tries: {exc}")
                        return
                    pause = exc.retry_after if exc.retry_after is not None else backoff
                    log.warning("creating pod %s: %s; retrying in %.1fs", name, exc, pause)
                    time.sleep(pause)
                    backoff = min(backoff * 2, 10.0)
                except KubernetesQuotaExceeded as exc:
                    self._report(attempt, "deferred", f"waiting for quota: {exc}",
                                 delay=self._settings.quota_retry_seconds)
                    return
                except KubernetesInvalid as exc:
                    self._report(attempt, "fatal", f"the Kubernetes API rejected pod {name}: "
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

    def _report(self, attempt: Attempt, kind: str, reason: str, *, exit_code: int | None = None,
                delay: float = 0.0, force: bool = False) -> None:
        """Report the attempt's end once; later news of the same attempt is ignored."""
        with self._lock:
            if self._active.pop(attempt.key, None) is None and not force:
                return
            self._stopping.discard(attempt.key)
            self._created.pop(attempt.key, None)
            self._exits.append(Exit(attempt, kind, reason, exit_code=exit_code, delay=delay))
        self._wake()

    def _outcome(self, attempt: Attempt, pod: dict[str, Any]) -> outcomes.Outcome | None:
        found = outcomes.outcome(pod, pending_timeout=self._settings.pending_timeout_seconds,
                                 image_pull_timeout=self._settings.image_pull_timeout_seconds,
                                 timeout=attempt.spec.get("timeout"))
        if found is not None and (pod.get("status") or {}).get("phase") not in (
                "Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp"):
            with self._lock:  # still running (a sidecar): settle deletes it at once
                self._lingering.add(pod["metadata"]["name"])
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
                self._report(attempt, "stopped", "stopped by the controller")
            else:
                name = pod["metadata"]["name"]
                self._report(attempt, "disrupted",
                             f"pod {name} was deleted before it finished (node lost, or "
                             "deleted by someone else)")
            return
        if found is not None:
            self._report(attempt, found.kind, found.reason, exit_code=found.exit_code)
        elif not stopping:
            self._start_deadline(attempt, pod)

    def _on_relist(self, pods: list[dict[str, Any]], listed_at: float) -> None:
        """The watcher relisted (after 410): reconcile against that list, not a second one."""
        with self._lock:
            self._want_full = True
            self._relisted = (pods, listed_at)
        self._wake()

    # -- the controller's turn ------------------------------------------------

    def stop(self, key: Key) -> None:
        with self._lock:
            if key not in self._active or key in self._stopping:
                return
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

    def settle(self, exit_: Exit) -> None:
        """Delete the pod now, or after `keep_failed_pods_seconds` if it failed while running."""
        name = pod_name(*exit_.attempt.key)
        with self._lock:
            lingering = name in self._lingering
            self._lingering.discard(name)
            self._deadline_set.discard(exit_.attempt.key)
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
            times = [self._next_reconcile, *self._delete_at.values()]
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
                known = attempt.key in self._active
                if pod is not None and not known:
                    self._active[attempt.key] = attempt  # adopt (e.g. after a restart)
            if pod is not None:
                found = self._outcome(attempt, pod)
                if found is not None:
                    self._report(attempt, found.kind, found.reason, exit_code=found.exit_code,
                                 force=True)
                else:  # (its Running event may have been missed, or come before a restart)
                    self._start_deadline(attempt, pod)
                continue
            if busy:
                continue
            age = (now - attempt.launched_at).total_seconds() if attempt.launched_at else 0.0
            if attempt.state == "running":
                self._report(attempt, "disrupted",
                             f"pod {pod_name(*attempt.key)} vanished while running",
                             force=True)
            elif age >= self._settings.launch_grace_seconds:
                self._report(attempt, "disrupted",
                             f"no pod for attempt {attempt.attempt} after {age:.0f} s; "
                             "relaunching", force=True)
        with self._lock:
            mine = set(self._active) | self._creating | {e.attempt.key for e in self._exits}
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

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.watcher.stop()
        if self._watch_thread.is_alive():
            self._watch_thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._kube.close()
