"""Object storage with one global resourceVersion and a bounded event history.

This plays the part of etcd plus the API server's watch cache:

* every write (create, modify, delete) takes the next value of one global
  counter as its resourceVersion, so versions are monotonic across all
  resources, like etcd revisions; they are handed out as strings and clients
  must treat them as opaque;
* a no-op update does not bump the resourceVersion and emits no event (the
  API server skips writes that change nothing);
* every write appends an event ``(rv, type, object, previous object)`` to the
  history; watchers replay it from any retained version;
* the *compaction point* ``compact_rv``: a watch that starts from a version
  older than it gets 410 Gone/Expired. History beyond ``history_limit`` events
  is dropped and moves the compaction point; ``expire()`` moves it to "now"
  without touching the history, so watches already streaming keep going (as
  they would off the watch cache) while new watches from old versions fail;
* an object whose ``deletionTimestamp`` is set, whose finalizers are empty and
  whose ``deletionGracePeriodSeconds`` is 0 is removed at once (generic
  graceful-deletion + finalizer semantics of the registry).

* pages: ``list_page`` serves ``limit``/``continue`` lists in key order; a
  continue token carries the first page's resourceVersion and expires (410)
  once that version is older than the compaction point;
* ``rebuild()`` starts a new cluster at the same address: a new identity
  (the ``kube-system`` namespace UID), no objects, versions from 1 again.

Simplifications: one in-memory process, no persistence, no storage
versions; pages after the first are cut from the *current* objects (a real
server reads them from etcd at the first page's revision, a consistent
snapshot) while still reporting the first page's resourceVersion;
resources are identified by their plural name only ("pods", "secrets"),
namespaces need not exist.
"""

from __future__ import annotations

import base64
import bisect
import copy
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, already_exists, expired, not_found

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (resource, namespace, name)


@dataclass(frozen=True)
class Event:
    """One write, as the watch cache keeps it."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    resource: str
    namespace: str
    name: str
    obj: Obj  # object after the write (for DELETED: last state, with the deletion rv)
    prev: Obj | None = field(default=None)  # object before the write


def _should_remove(obj: Obj) -> bool:
    meta = obj.get("metadata", {})
    return (
        meta.get("deletionTimestamp") is not None
        and not meta.get("finalizers")
        and meta.get("deletionGracePeriodSeconds") == 0
    )


class Store:
    """Thread-safe object store; all methods return deep copies."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self.cond = threading.Condition()
        self.rv = 1
        self.compact_rv = 1
        self.history_limit = history_limit
        self._objects: dict[Key, Obj] = {}
        self._events: list[Event] = []
        self._event_rvs: list[int] = []
        self._floor = 1  # events with rv > _floor are physically retained
        self._listeners: list[Callable[[Event], None]] = []
        self._sorted: list[Key] | None = None  # keys in order, for pages; None = stale
        self.cluster_uid = str(uuid.uuid4())
        self.closed = False

    # -- listeners ---------------------------------------------------------

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn(event)`` after each write (outside the lock)."""
        self._listeners.append(fn)

    def _notify(self, events: list[Event]) -> None:
        for ev in events:
            for fn in list(self._listeners):
                fn(ev)

    # -- internals (lock held) --------------------------------------------

    def _record(self, type_: str, key: Key, obj: Obj, prev: Obj | None) -> Event:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        ev = Event(self.rv, type_, key[0], key[1], key[2], copy.deepcopy(obj), prev)
        self._events.append(ev)
        self._event_rvs.append(ev.rv)
        if len(self._events) > self.history_limit:
            drop = len(self._events) - self.history_limit // 2
            self._floor = self._events[drop - 1].rv
            self.compact_rv = max(self.compact_rv, self._floor)
            del self._events[:drop]
            del self._event_rvs[:drop]
        self.cond.notify_all()
        return ev

    def _remove_locked(self, key: Key) -> Event:
        obj = self._objects.pop(key)
        self._sorted = None
        return self._record("DELETED", key, copy.deepcopy(obj), obj)

    # -- CRUD ----------------------------------------------------------------

    def create(self, resource: str, obj: Obj) -> Obj:
        meta = obj["metadata"]
        key = (resource, meta["namespace"], meta["name"])
        with self.cond:
            if key in self._objects:
                raise already_exists(resource, meta["name"])
            stored = copy.deepcopy(obj)
            self._objects[key] = stored
            self._sorted = None
            ev = self._record("ADDED", key, stored, None)
        self._notify([ev])
        return copy.deepcopy(ev.obj)

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        with self.cond:
            obj = self._objects.get((resource, namespace, name))
            if obj is None:
                raise not_found(resource, name)
            return copy.deepcopy(obj)

    def try_get(self, resource: str, namespace: str, name: str) -> Obj | None:
        with self.cond:
            obj = self._objects.get((resource, namespace, name))
            return None if obj is None else copy.deepcopy(obj)

    def list_objects(
        self, resource: str, namespace: str | None = None
    ) -> tuple[list[Obj], int]:
        """All objects of ``resource`` (optionally one namespace) and the list's rv."""
        with self.cond:
            items = [
                copy.deepcopy(o)
                for (res, ns, _), o in sorted(self._objects.items())
                if res == resource and (namespace is None or ns == namespace)
            ]
            return items, self.rv

    def list_page(
        self, resource: str, namespace: str | None, limit: int, token: str | None,
        matches: Callable[[Obj], bool],
    ) -> tuple[list[Obj], int, str | None]:
        """Up to ``limit`` matching objects after the token's key: (items, rv, next token).

        A token whose resourceVersion is older than the compaction point gets
        410 Expired, as an etcd-compacted continue does.
        """
        with self.cond:
            if token:
                try:
                    state = json.loads(base64.urlsafe_b64decode(token.encode()))
                    rv, start = int(state["rv"]), tuple(state["start"])
                except (ValueError, KeyError, TypeError) as e:
                    raise ApiError(400, f"continue key is not valid: {e}") from None
                if rv < self.compact_rv:
                    raise ApiError(
                        410, "The provided continue parameter is too old to display a "
                        "consistent list result. You can start a new list without the continue "
                        "parameter.", reason="Expired")
            else:
                rv, start = self.rv, (resource, "", "")
            if self._sorted is None:
                self._sorted = sorted(self._objects)
            keys = self._sorted
            i = bisect.bisect_right(keys, start) if token else bisect.bisect_left(keys, start)
            items: list[Obj] = []
            last: Key | None = None
            while i < len(keys) and keys[i][0] == resource:
                key = keys[i]
                i += 1
                if namespace is not None and key[1] != namespace:
                    continue
                obj = self._objects[key]
                if not matches(obj):
                    continue
                if len(items) == limit:
                    break
                items.append(copy.deepcopy(obj))
                last = key
            else:
                last = None  # ran out: no next page
            more = last is not None and len(items) == limit
            following = None
            if more and last is not None:
                following = base64.urlsafe_b64encode(
                    json.dumps({"rv": rv, "start": list(last)}).encode()).decode()
            return items, rv, following

    def seed(self, resource: str, objs: list[Obj]) -> int:
        """Put objects in place without events (as if there before any watch began).

        For benchmarks: 100,000 creates over HTTP would measure the create
        path, and each ADDED event would give the kubelet a worker thread.
        Seeded objects get a uid and one shared resourceVersion; no listener
        hears of them, so no kubelet drives them. Returns that version.
        """
        with self.cond:
            self.rv += 1
            for obj in objs:
                meta = obj["metadata"]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta["resourceVersion"] = str(self.rv)
                self._objects[(resource, meta["namespace"], meta["name"])] = obj
            self._sorted = None
            self.compact_rv = max(self.compact_rv, self.rv)  # no history before this
            self.cond.notify_all()
            return self.rv

    def rebuild(self) -> str:
        """A new cluster: new identity, no objects, no history, versions from 1."""
        with self.cond:
            self.cluster_uid = str(uuid.uuid4())
            self._objects.clear()
            self._sorted = None
            self._events.clear()
            self._event_rvs.clear()
            self.rv = self.compact_rv = self._floor = 1
            self.cond.notify_all()
            return self.cluster_uid

    def update(
        self, resource: str, namespace: str, name: str, fn: Callable[[Obj], Obj | None]
    ) -> tuple[Obj, bool]:
        """Atomically apply ``fn`` to a copy of the object and store its result.

        ``fn`` may raise :class:`ApiError` or return None to abort without a
        write. Returns ``(object, exists)``: exists is False when the update
        removed the object (deletion requested, grace 0, no finalizers left);
        the object is then its last state.
        """
        key = (resource, namespace, name)
        with self.cond:
            cur = self._objects.get(key)
            if cur is None:
                raise not_found(resource, name)
            new = fn(copy.deepcopy(cur))
            if new is None:
                return copy.deepcopy(cur), True
            new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            if new == cur:
                return copy.deepcopy(cur), True
            self._objects[key] = new
            if _should_remove(new):
                ev = self._remove_locked(key)
                exists = False
            else:
                ev = self._record("MODIFIED", key, new, cur)
                exists = True
        self._notify([ev])
        return copy.deepcopy(ev.obj), exists

    def remove(self, resource: str, namespace: str, name: str) -> Obj:
        """Remove the object now (DELETED event); returns its last state."""
        with self.cond:
            key = (resource, namespace, name)
            if key not in self._objects:
                raise not_found(resource, name)
            ev = self._remove_locked(key)
        self._notify([ev])
        return copy.deepcopy(ev.obj)

    # -- history -------------------------------------------------------------

    def check_watch_start(self, rv: int) -> None:
        """Raise 410 Expired if a watch may not start from ``rv``."""
        with self.cond:
            if rv < self.compact_rv:
                raise expired(rv, self.compact_rv)

    def events_after(self, rv: int) -> list[Event]:
        """Retained events with version > ``rv``; 410 if some were dropped."""
        with self.cond:
            if rv < self._floor:
                raise expired(rv, self._floor)
            i = bisect.bisect_right(self._event_rvs, rv)
            return self._events[i:]

    def wait(self, after_rv: int, timeout: float | None) -> None:
        """Block until a write newer than ``after_rv``, a ``poke()``, or timeout."""
        with self.cond:
            if self.rv > after_rv or self.closed:
                return
            self.cond.wait(timeout)

    def poke(self) -> None:
        """Wake every waiter (used by faults and shutdown)."""
        with self.cond:
            self.cond.notify_all()

    def expire(self) -> int:
        """Move the compaction point to the current version; returns it."""
        with self.cond:
            self.compact_rv = self.rv
            return self.rv

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


__all__ = ["ApiError", "Event", "Obj", "Store"]
