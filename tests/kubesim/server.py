"""HTTP front end: the pod subset of the Kubernetes REST API, plus watch.

Routes (``{ns}`` any namespace; namespaces are not objects here):

* ``GET /version``, ``/api``, ``/api/v1``, ``/apis``, ``/healthz``, ``/readyz``, ``/livez``
* ``/api/v1/namespaces/{ns}/pods``: GET list/watch, POST create
* ``/api/v1/namespaces/{ns}/pods/{name}``: GET, PUT, PATCH, DELETE
* ``/api/v1/namespaces/{ns}/pods/{name}/status``: GET, PUT, PATCH
* ``/api/v1/namespaces/{ns}/pods/{name}/log``: GET (text/plain; container,
  tailLines, limitBytes, follow)
* ``/api/v1/namespaces/{ns}``: GET a Namespace (any name exists; the
  ``kube-system`` one's UID is the cluster's identity, new after
  ``rebuild_cluster``)
* ``/api/v1/pods``: GET list/watch across namespaces; the same for secrets
  (``/api/v1/namespaces/{ns}/secrets[/{name}]``, ``/api/v1/secrets``)
* the deprecated ``/api/v1/watch/...`` paths (= ``?watch=true``)
* ``/_sim/faults[/<method>]``: fault injection, see faults.py

Watch: HTTP/1.1 chunked body of newline-delimited JSON events. resourceVersion
unset or "0" -> synthetic ADDED for the current matching objects, then live
events; N -> every retained event after N, in order; older than the
compaction point -> 410 (HTTP Status or ERROR event, per the gone mode).
Selector transitions follow the watch cache: an object that stops matching
is sent as DELETED (its previous state with the new resourceVersion), one
that starts matching as ADDED. ``timeoutSeconds`` ends the stream cleanly;
``allowWatchBookmarks`` adds BOOKMARK events carrying only
``metadata.resourceVersion``, as the watch cache sends them: every
``bookmark_interval`` seconds (60 by default, a minute as on a real server;
tests that need them sooner ask for less) and once 2 s before the watch's
deadline. A watch from a version the server has not reached (another
cluster's history, after a rebuild or an etcd restore) gets no bookmarks and
no events until the server gets there: it is silent.

Lists: ``limit`` and ``continue`` page them (store.py); a continue token
older than the compaction point gets 410 Expired. Creates and updates of
pods follow ``fieldValidation`` (api.py).

Simplifications: no authentication/authorization (any bearer token is
accepted), JSON only (no protobuf/CBOR/YAML, no Table output), no
``resourceVersionMatch``, no ``remainingItemCount``, no
``sendInitialEvents``; a watch from a version newer than the current one
waits for it silently (a real API server may answer "Too large resource
version" after a few seconds instead); without ``timeoutSeconds`` a
watch lasts 30 minutes.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ApiError
from .selectors import Selector
from .store import Event, Obj

if TYPE_CHECKING:
    from .sim import KubeSim

_ROUTE = re.compile(
    r"^/api/v1(?P<watch>/watch)?(?:/namespaces/(?P<ns>[^/]+))?/(?P<res>pods|secrets)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>status|log))?)?/?$"
)
_NAMESPACE = re.compile(r"^/api/v1/namespaces/(?P<ns>[a-z0-9-]+)/?$")
_KIND = {"pods": "Pod", "secrets": "Secret"}
_TRUE = ("true", "1")


def _resource_list() -> Obj:
    def res(name: str, kind: str, verbs: list[str], namespaced: bool = True) -> Obj:
        return {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
                "verbs": verbs}

    crud = ["create", "delete", "get", "list", "patch", "update", "watch"]
    return {
        "kind": "APIResourceList", "groupVersion": "v1",
        "resources": [
            res("pods", "Pod", crud) | {"singularName": "pod", "shortNames": ["po"]},
            res("pods/log", "Pod", ["get"]),
            res("pods/status", "Pod", ["get", "patch", "update"]),
            res("secrets", "Secret", crud) | {"singularName": "secret"},
        ],
    }


class SimHTTPServer(ThreadingHTTPServer):
    """Tracks live connections so ``stop()`` can cut idle keep-alives and watches."""

    daemon_threads = True
    block_on_close = True

    def __init__(self, addr: tuple[str, int], sim: KubeSim) -> None:
        self.sim = sim
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        self.stopping = False
        super().__init__(addr, Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.conns_lock:
            self.conns.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.conns_lock:
                self.conns.discard(request)

    def cut_connections(self) -> None:
        with self.conns_lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # client went away mid-response; nothing to report


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SimHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.sim.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- plumbing ------------------------------------------------------------

    def _send_json(self, code: int, body: Any, headers: dict[str, str] | None = None,
                   warnings: list[str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        for warning in warnings or []:
            self.send_header("Warning", '299 - "' + warning.replace('"', '\\"') + '"')
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: ApiError) -> None:
        headers = {}
        if err.retry_after is not None:
            headers["Retry-After"] = str(err.retry_after)
        self._send_json(err.code, err.status(), headers)

    def _start_chunked(self, content_type: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise ApiError(400, f"couldn't decode the request body as JSON: {e}") from e

    def _handle(self, method: str) -> None:
        sim = self.server.sim
        try:
            body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
            if sim.faults.request_latency:
                time.sleep(sim.faults.request_latency)
            url = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            self._route(method, unquote(url.path), q, body)
        except ApiError as e:
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug in the simulator: answer like an apiserver would
            self._send_error(ApiError(500, f"kubesim internal error: {e!r}"))

    def _route(self, method: str, path: str, q: dict[str, str], body: Any) -> None:
        sim = self.server.sim
        if path.startswith("/_sim/faults"):
            name = path[len("/_sim/faults"):].strip("/")
            if method == "GET" and not name:
                self._send_json(200, {"faults": list(sim.faults.HTTP_METHODS)})
                return
            if method != "POST":
                raise ApiError(405, "use POST /_sim/faults/<name>")
            self._send_json(200, {"result": sim.faults.call(name, body or {})})
            return
        static = {
            "/version": {"major": "1", "minor": "31", "gitVersion": "v1.31.0-kubesim",
                         "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
                         "goVersion": "", "compiler": "gc", "platform": "linux/amd64"},
            "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{sim.port}"}]},
            "/api/v1": _resource_list(),
            "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
        }
        if method == "GET" and path.rstrip("/") in static:
            self._send_json(200, static[path.rstrip("/")])
            return
        if method == "GET" and path in ("/healthz", "/readyz", "/livez"):
            self._send_text(b"ok")
            return
        if method == "GET" and (nsm := _NAMESPACE.match(path)):
            self._send_json(200, {"kind": "Namespace", "apiVersion": "v1", "metadata": {
                "name": nsm["ns"], "uid": sim.namespace_uid(nsm["ns"]), "resourceVersion": "1"},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
            return
        m = _ROUTE.match(path)
        if not m:
            raise ApiError(404, "the server could not find the requested resource")
        ns, res, name, sub = m["ns"], m["res"], m["name"], m["sub"]
        watch = bool(m["watch"]) or q.get("watch", "").lower() in _TRUE
        if res == "secrets" and sub:
            raise ApiError(404, "the server could not find the requested resource")
        verb = {
            "GET": "get" if name else ("watch" if watch else "list"),
            "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete",
        }[method]
        if (name is None and verb not in ("list", "watch", "create")) or (
                name is not None and verb == "create") or (ns is None and verb != "list"
                                                           and verb != "watch"):
            raise ApiError(405, "the server does not allow this method on the requested "
                                "resource")
        fault = sim.faults.take_failure(verb, f"{res}/{sub}" if sub else res)
        if fault is not None:
            raise fault
        api = sim.api
        if verb == "watch":
            self._watch(res, ns, q)
        elif verb == "list":
            if q.get("continue") and sim.faults.take_continue_expiry():
                raise ApiError(410, "The provided continue parameter is too old to display a "
                                    "consistent list result. You can start a new list without "
                                    "the continue parameter.", reason="Expired")
            limit = q.get("limit", "")
            if limit and not limit.isdigit():
                raise ApiError(400, f"limit: Invalid value: {limit!r}")
            self._send_json(200, api.list(res, ns, q.get("labelSelector"),
                                          q.get("fieldSelector"), int(limit or 0) or None,
                                          q.get("continue") or None))
        elif verb == "create":
            warnings = api.strip_unknown(res, body, q.get("fieldValidation") or "Warn")
            self._send_json(201, api.create(res, ns, body), warnings=warnings)
        elif verb == "get" and sub == "log":
            self._log(ns, name, q)
        elif verb == "get":
            self._send_json(200, api.get(res, ns, name))
        elif verb == "patch":
            self._send_json(200, api.patch(res, ns, name, self.headers.get("Content-Type", ""),
                                           body, sub))
        elif verb == "update":
            warnings = api.strip_unknown(res, body, q.get("fieldValidation") or "Warn")
            self._send_json(200, api.replace(res, ns, name, body, sub), warnings=warnings)
        elif verb == "delete":
            opts = body if isinstance(body, dict) else {}
            grace = opts.get("gracePeriodSeconds", q.get("gracePeriodSeconds"))
            self._send_json(200, api.delete(
                res, ns, name, None if grace in (None, "") else int(grace),
                opts.get("preconditions")))

    # -- logs ------------------------------------------------------------------

    def _send_text(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _log(self, ns: str, name: str, q: dict[str, str]) -> None:
        kubelet = self.server.sim.kubelet
        tail = int(q["tailLines"]) if q.get("tailLines") else None
        limit = int(q["limitBytes"]) if q.get("limitBytes") else None
        data = kubelet.read_log(ns, name, q.get("container"), tail, limit)
        if q.get("follow", "").lower() not in _TRUE:
            self._send_text(data)
            return
        self._start_chunked("text/plain")
        if data:
            self._chunk(data)
        worker = kubelet.worker(ns, name)
        sent = len(worker.log) if tail is None and limit is None else None
        while sent is not None and not self.server.stopping:
            with worker.log_lock:
                new = bytes(worker.log[sent:])
            if new:
                self._chunk(new)
                sent += len(new)
            elif worker.proc is None or (worker.proc.poll() is not None and not (
                    worker.reader and worker.reader.is_alive())):
                break
            else:
                worker.wake.wait(0.05)
        self._end_chunked()

    # -- watch -----------------------------------------------------------------

    def _watch(self, res: str, ns: str | None, q: dict[str, str]) -> None:
        sim, store, faults = self.server.sim, self.server.sim.store, self.server.sim.faults
        selector = Selector(res, q.get("labelSelector"), q.get("fieldSelector"))
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else 1800.0
        bookmarks = q.get("allowWatchBookmarks", "").lower() in _TRUE
        rv_param = q.get("resourceVersion", "")
        lines: list[bytes] = []
        ahead = False  # asked for a version this server has not reached
        if rv_param not in ("", "0"):
            try:
                last = int(rv_param)
            except ValueError:
                raise ApiError(400, f"resourceVersion: Invalid value: {rv_param!r}") from None
            ahead = last > store.rv
            try:
                store.check_watch_start(last)
            except ApiError as e:
                if faults.gone_mode == "http":
                    raise
                self._start_chunked()
                self._chunk(self._event_line("ERROR", e.status()))
                self._end_chunked()
                return
        else:
            items, last = store.list_objects(res, ns)
            lines = [self._event_line("ADDED", o) for o in items if selector.matches(o)]
        with faults.lock:
            faults.open_watches += 1
            generation = faults.drop_generation
        try:
            self._start_chunked()
            for line in lines:
                self._send_event(line)
            deadline = time.monotonic() + timeout
            pre_deadline = deadline - 2.0  # the watch cache's bookmark before the deadline
            pre_sent = pre_deadline <= time.monotonic()
            next_bookmark = time.monotonic() + sim.bookmark_interval
            while not self.server.stopping:
                if faults.drop_generation != generation:
                    self._drop(faults.drop_partial)
                    return
                try:
                    events = store.events_after(last)
                except ApiError as e:  # fell behind the retained history
                    self._chunk(self._event_line("ERROR", e.status()))
                    break
                for ev in events:
                    last = ev.rv
                    out = self._convert(ev, res, ns, selector)
                    if out is None:
                        continue
                    self._send_event(self._event_line(*out))
                now = time.monotonic()
                if now >= deadline:
                    break
                ahead = ahead and last > store.rv
                if bookmarks and (now >= next_bookmark or (not pre_sent and now >= pre_deadline)):
                    pre_sent = pre_sent or now >= pre_deadline
                    if not ahead:  # no bookmark can name a version not reached yet
                        self._chunk(self._event_line("BOOKMARK", {
                            "kind": _KIND[res], "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(last)}}))
                    next_bookmark = now + sim.bookmark_interval
                wait = deadline - now
                if bookmarks:
                    due = min(next_bookmark, deadline if pre_sent else pre_deadline)
                    wait = min(wait, max(0.0, due - now))
                store.wait(last, wait)
            self._end_chunked()
        finally:
            with faults.lock:
                faults.open_watches -= 1

    def _send_event(self, line: bytes) -> None:
        self.server.sim.faults.hold_watch_event()
        self._chunk(line)

    @staticmethod
    def _event_line(type_: str, obj: Obj) -> bytes:
        return json.dumps({"type": type_, "object": obj}).encode() + b"\n"

    @staticmethod
    def _convert(ev: Event, res: str, ns: str | None, sel: Selector) -> tuple[str, Obj] | None:
        """The watch cache's event conversion, including selector transitions."""
        if ev.resource != res or (ns is not None and ev.namespace != ns):
            return None
        cur_ok = ev.type != "DELETED" and sel.matches(ev.obj)
        prev_ok = ev.prev is not None and sel.matches(ev.prev)
        if cur_ok:
            return ("MODIFIED" if prev_ok else "ADDED"), ev.obj
        if prev_ok and ev.prev is not None:
            obj = json.loads(json.dumps(ev.prev))
            obj["metadata"]["resourceVersion"] = str(ev.rv)
            return "DELETED", obj
        return None

    def _drop(self, partial: bool) -> None:
        if partial:
            self._chunk(b'{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","meta')
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self._end_chunked()
        self.close_connection = True
