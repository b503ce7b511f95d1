"""Follow the pod event stream: list, then watch, resuming where the last watch stopped.

- The last processed resourceVersion is kept in Postgres (at most once per
  second and at the end of every stream), so a restarted controller resumes
  the watch from it and misses nothing the server still remembers; events
  seen twice are harmless, since handling is idempotent. It is kept under
  the cluster's identity (the `kube-system` namespace UID) and the
  namespace: a version of a rebuilt or restored cluster is another history,
  and its numbers mean nothing here.
- A watch from a version the server never reached (another history) is
  not refused: it is silent. Bookmarks are requested, and a server sends
  one at least before the watch's deadline, so a stream that ends without
  a single event or bookmark means our version is not in the server's
  history: relist.
- 410 Gone, as an HTTP status or as an ERROR event, however many times in a
  row, means the history is gone: relist, hand the full list over for a
  reconcile, and watch from the list's resourceVersion.
- resourceVersions are opaque strings, only stored and sent back.
- A stream that goes quiet past its read timeout is a dead connection:
  reconnect with backoff, as after any transport error or a 429/5xx.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from podfn.errors import (
    KubernetesError,
    KubernetesGone,
    KubernetesTransient,
    KubernetesUnauthorized,
)
from podfn_platform.controller import metrics
from podfn_platform.kube.client import KubeClient, WatchStream

log = logging.getLogger("podfn.kube.watcher")

_PERSIST_EVERY = 1.0
_BACKOFF_MAX = 30.0


class Store(Protocol):
    def get(self, key: str) -> str | None: ...
    def put(self, key: str, value: str) -> None: ...


class PodWatcher:
    def __init__(self, kube: KubeClient, *, selector: str, store: Store,
                 on_event: Callable[[str, dict[str, Any]], None],
                 on_relist: Callable[[list[dict[str, Any]], float], None],
                 timeout_seconds: int = 60) -> None:
        self._kube = kube
        self._selector = selector
        self._store = store
        self._key: str | None = None  # needs the cluster's identity: see key()
        self._on_event = on_event
        self._on_relist = on_relist
        self._timeout = timeout_seconds
        self._stored: str | None = None
        self._stored_at = 0.0
        self.resumed_from: str | None = None
        self.relists = 0
        self.silent_streams = 0
        self.events = 0
        self.connected = threading.Event()
        self._stream: WatchStream | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        """End the watch now, even mid-stream."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def key(self) -> str:
        """Where the resourceVersion is stored: per cluster identity and namespace."""
        if self._key is None:
            cluster = self._kube.cluster_identity()
            self._key = f"kubernetes.pods.resourceVersion.{cluster}.{self._kube.namespace}"
        return self._key

    def _persist(self, rv: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if rv != self._stored and (force or now - self._stored_at >= _PERSIST_EVERY):
            self._store.put(self.key(), rv)
            self._stored, self._stored_at = rv, now

    def _relist(self) -> str:
        started = time.monotonic()
        pods, rv = self._kube.list_pods(self._selector)
        self.relists += 1
        metrics.WATCH_RELISTS.inc()
        log.info("listed %d pods at resourceVersion %s", len(pods), rv)
        self._on_relist(pods, started)  # (the pods, and when the list was asked for)
        self._persist(rv, force=True)
        return rv

    def _resume_point(self) -> str | None:
        """The stored version of this cluster's history, retried until the API answers."""
        backoff = 0.1
        while not self._stop.is_set():
            try:
                rv = self._store.get(self.key())
            except KubernetesError as exc:
                log.warning("cannot tell which cluster this is (%s); retrying in %.1fs", exc,
                            backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if rv is not None:
                self.resumed_from = rv
                log.info("resuming the pod watch from stored resourceVersion %s", rv)
            return rv
        return None

    def run(self) -> None:
        stop = self._stop
        rv = self._resume_point()
        backoff = 0.1
        while not stop.is_set():
            started = time.monotonic()
            heard = False
            try:
                if rv is None:
                    rv = self._relist()
                    started = time.monotonic()
                self.connected.set()
                self._stream = self._kube.watch_pods(self._selector, rv,
                                                     timeout_seconds=self._timeout,
                                                     read_timeout=self._timeout + 15)
                if stop.is_set():
                    break
                for event in self._stream:
                    heard = True
                    kind = event.get("type")
                    obj = event.get("object") or {}
                    if kind == "ERROR":
                        raise KubernetesTransient(f"watch error event: {obj.get('message')}")
                    if kind != "BOOKMARK":
                        self.events += 1
                        metrics.WATCH_EVENTS.labels(str(kind)).inc()
                        self._on_event(str(kind), obj)
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    self._persist(rv)
                    backoff = 0.1
                    if stop.is_set():
                        break
                self._persist(rv, force=True)
                if not heard and not stop.is_set() and \
                        time.monotonic() - started >= self._timeout - 1.0:
                    # Not even the bookmark a server sends before the deadline: our
                    # version is not of this server's history (a rebuilt or restored
                    # cluster). Watching from it again would be silent again.
                    self.silent_streams += 1
                    log.warning("the pod watch from resourceVersion %s stayed silent for %d s "
                                "(no bookmark); relisting", rv, self._timeout)
                    rv = None
            except KubernetesGone as exc:
                log.warning("resourceVersion %s expired (%s); relisting", rv, exc)
                rv = None
            except KubernetesUnauthorized as exc:
                self.connected.clear()
                log.warning("pod watch refused (%s); reloading credentials, retrying in %.1fs",
                            exc, backoff)
                self._kube.reload_credentials()
                stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            except (KubernetesTransient, ValueError) as exc:
                self.connected.clear()
                if rv is not None and not heard and \
                        time.monotonic() - started >= self._timeout:
                    # Silent until the read timeout: the same as a silent stream.
                    self.silent_streams += 1
                    log.warning("the pod watch from resourceVersion %s stayed silent (%s); "
                                "relisting", rv, exc)
                    rv = None
                    continue
                log.warning("pod watch interrupted (%s); reconnecting in %.1fs", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            except Exception:
                if stop.is_set():
                    break
                self.connected.clear()
                log.exception("pod watch failed; reconnecting in %.1fs", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
        self.connected.clear()
