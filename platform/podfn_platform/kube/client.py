"""The platform's one door to the Kubernetes API, through the official client.

Configured as kubectl is: the in-cluster service account when running in a
pod, else KUBECONFIG / ~/.kube/config (context selectable). Every
`ApiException` and transport error becomes a podfn `KubernetesError`
subclass, so callers decide on podfn's terms: retry (transient), fine
(conflict on create), relist (gone), wait (quota), give up (invalid).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from podfn.errors import (
    ConfigurationError,
    KubernetesAlreadyExists,
    KubernetesConflict,
    KubernetesError,
    KubernetesGone,
    KubernetesInvalid,
    KubernetesNotFound,
    KubernetesQuotaExceeded,
    KubernetesTransient,
    KubernetesUnauthorized,
)

log = logging.getLogger("podfn.kube")

# How long a request may take; a watch gets its own read timeout (see watch()).
_REQUEST_TIMEOUT = (5.0, 30.0)


def _status(exc: ApiException) -> dict[str, Any]:
    """The Status object the API server sent with the error (empty if none)."""
    try:
        body = json.loads(exc.body or "{}")
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


def _status_message(exc: ApiException) -> str:
    return str(_status(exc).get("message") or exc.reason or exc.body or "")


def _retry_after(exc: ApiException) -> float | None:
    headers = exc.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def translate(exc: Exception, what: str) -> KubernetesError:
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = _status_message(exc)
        text = f"{what}: HTTP {status} {message}".strip()
        # The Status `reason` (AlreadyExists, Conflict, Forbidden...), not the HTTP phrase.
        reason = str(_status(exc).get("reason") or exc.reason or "")
        kwargs: dict[str, Any] = {"status": status, "reason": reason,
                                  "retry_after": _retry_after(exc)}
        if status == 409 and reason == "AlreadyExists":
            return KubernetesAlreadyExists(text, **kwargs)
        if status == 409:  # reason Conflict: a concurrent write won; nothing was created
            return KubernetesConflict(text, **kwargs)
        if status == 401:
            return KubernetesUnauthorized(text, **kwargs)
        if status == 404:
            return KubernetesNotFound(text, **kwargs)
        if status == 410:
            return KubernetesGone(text, **kwargs)
        if status == 403 and "exceeded quota" in message:
            return KubernetesQuotaExceeded(text, **kwargs)
        if status == 429 or status >= 500 or status == 0:
            return KubernetesTransient(text, **kwargs)
        return KubernetesInvalid(text, **kwargs)
    return KubernetesTransient(f"{what}: {type(exc).__name__}: {exc}")


_TRANSPORT = (urllib3.exceptions.HTTPError, OSError, ValueError)


def slim(pod: dict[str, Any]) -> dict[str, Any]:
    """The parts of a listed pod that podfn reads (outcomes, reconcile), nothing else.

    A full reconcile holds every pod of the namespace at once; the env,
    volumes, managedFields and the rest of each manifest are most of its
    size and never read after the list.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    return {
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "creationTimestamp",
                                          "deletionTimestamp", "resourceVersion") if k in meta}
        | {"annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                           if k.startswith("podfn.dev/")}},
        "spec": {"activeDeadlineSeconds": spec.get("activeDeadlineSeconds"),
                 "containers": [{k: c.get(k) for k in ("name", "image", "resources")}
                                for c in spec.get("containers") or []]},
        "status": {k: status[k] for k in ("phase", "reason", "message", "startTime")
                   if k in status}
        | {"conditions": [c for c in status.get("conditions") or []
                          if c.get("type") in ("DisruptionTarget", "PodScheduled")],
           "containerStatuses": [{"name": c.get("name"), "state": c.get("state") or {}}
                                 for c in status.get("containerStatuses") or []]},
    }


class KubeClient:
    """Pods (and the Secrets tests need) in one namespace."""

    def __init__(self, namespace: str, *, kubeconfig: str | None = None,
                 context: str | None = None, page_size: int = 500) -> None:
        self.namespace = namespace
        self.page_size = page_size
        self._kubeconfig, self._context = kubeconfig, context
        self.api_client, self.core, self.host = self._connect()

    def _connect(self) -> tuple[k8s.ApiClient, k8s.CoreV1Api, str]:
        """Read the configuration (and its credentials) afresh."""
        kubeconfig, context = self._kubeconfig, self._context
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            source = "in-cluster service account"
        except k8s_config.ConfigException:
            try:
                k8s_config.load_kube_config(config_file=kubeconfig, context=context,
                                            client_configuration=configuration)
            except (k8s_config.ConfigException, OSError) as exc:
                raise ConfigurationError(
                    f"no Kubernetes configuration: {exc}. Run inside a cluster, or set "
                    "KUBECONFIG (and PODFN_KUBE_CONTEXT) as for kubectl"
                ) from exc
            source = f"kubeconfig {kubeconfig or '(default)'} context {context or '(current)'}"
        configuration.retries = False  # we retry on our own terms
        api_client = k8s.ApiClient(configuration)
        log.info("Kubernetes API at %s (%s), namespace %s", configuration.host, source,
                 self.namespace)
        return api_client, k8s.CoreV1Api(api_client), str(configuration.host)

    def reload_credentials(self) -> None:
        """After a 401: read the token again (a projected service-account token or a
        kubeconfig's is rotated on disk); requests after this use the new one."""
        old = self.api_client
        self.api_client, self.core, self.host = self._connect()
        old.close()

    def close(self) -> None:
        self.api_client.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=_REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            raise translate(exc, what) from exc
        except _TRANSPORT as exc:
            raise translate(exc, what) from exc

    def create_pod(self, manifest: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        self._call(f"create pod {name}", self.core.create_namespaced_pod, self.namespace,
                   manifest, _preload_content=False)

    def delete_pod(self, name: str, *, grace_seconds: int | None = None) -> None:
        """Delete a pod; one that is already gone is fine."""
        with contextlib.suppress(KubernetesNotFound):
            self._call(f"delete pod {name}", self.core.delete_namespaced_pod, name,
                       self.namespace, grace_period_seconds=grace_seconds,
                       _preload_content=False)

    def list_pods(self, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        """The pods and the list's resourceVersion (to watch from), page by page.

        Pages of `page_size` (`limit`/`continue`, as the API docs' "Retrieving
        large results sets in chunks"); one page at a time is parsed, so a
        list of 100,000 pods never sits in memory as one response. A continue
        token can expire (410) between pages: the list starts again from the
        first page, a few times, before giving up as a transient failure.
        """
        for _ in range(3):
            items: list[dict[str, Any]] = []
            token: str | None = None
            rv: str | None = None
            try:
                while True:
                    kwargs: dict[str, Any] = {"label_selector": label_selector,
                                              "limit": self.page_size}
                    if token:
                        kwargs["_continue"] = token
                    response = self._call("list pods", self.core.list_namespaced_pod,
                                          self.namespace, _preload_content=False, **kwargs)
                    body = json.loads(response.data)
                    items.extend(slim(p) for p in body.get("items") or [])
                    meta = body.get("metadata") or {}
                    rv = rv or str(meta["resourceVersion"])  # the first page's: a snapshot
                    token = meta.get("continue")
                    if not token:
                        return items, rv
            except KubernetesGone as exc:
                if token is None:
                    raise
                log.warning("the continue token expired mid-list (%s); listing again", exc)
        raise KubernetesTransient("list pods: continue tokens kept expiring; try again later")

    def set_active_deadline(self, name: str, seconds: int) -> None:
        """Lower a pod's activeDeadlineSeconds (the API allows lowering it, never raising)."""
        self._call(f"patch pod {name}", self.core.patch_namespaced_pod, name, self.namespace,
                   {"spec": {"activeDeadlineSeconds": seconds}}, _preload_content=False)

    def cluster_identity(self) -> str:
        """Which cluster (and which history of it) this is: the `kube-system` namespace's UID.

        A rebuilt cluster, or one restored from an etcd backup into new
        objects, has a new UID there, so a resourceVersion stored for the
        old one is not reused. Without permission to read that namespace
        (podfn's Role is namespaced) the API server's address stands in.
        """
        try:
            response = self._call("read namespace kube-system", self.core.read_namespace,
                                  "kube-system", _preload_content=False)
            uid = (json.loads(response.data).get("metadata") or {}).get("uid")
            if uid:
                return str(uid)
        except (KubernetesNotFound, KubernetesInvalid, KubernetesUnauthorized,
                ValueError) as exc:
            log.info("cannot read namespace kube-system (%s); the API server's address "
                     "identifies the cluster", exc)
        return self.host

    def watch_pods(self, label_selector: str, resource_version: str, *, timeout_seconds: int,
                   read_timeout: float) -> WatchStream:
        """Raw watch events from `resource_version` until the server ends the stream.

        ERROR events with 410 and HTTP 410 both raise KubernetesGone. A
        stream that stops sending for `read_timeout` seconds raises
        KubernetesTransient (a dead connection, noticed).
        """
        return WatchStream(self.core, self.namespace, label_selector=label_selector,
                           resource_version=resource_version, timeout_seconds=timeout_seconds,
                           read_timeout=read_timeout)

    def create_secret(self, name: str, data: dict[str, str]) -> None:
        """Create (or replace) an Opaque Secret; used by `podfn dev` and tests."""
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "type": "Opaque", "stringData": data}
        try:
            self._call(f"create secret {name}", self.core.create_namespaced_secret,
                       self.namespace, body, _preload_content=False)
        except KubernetesAlreadyExists:
            self._call(f"replace secret {name}", self.core.replace_namespaced_secret, name,
                       self.namespace, body, _preload_content=False)


class WatchStream:
    """One watch request: iterate its events; `close()` from another thread ends it at once.

    The request is made through the official client's generated API
    (`list_namespaced_pod(watch=True)`), and the newline-delimited events are
    parsed here rather than by `kubernetes.watch.Watch`, whose handling of an
    ERROR event needs deserialized objects (it fails with KeyError on raw
    ones) and which silently retries a 410 once.
    """

    def __init__(self, core: Any, namespace: str, *, label_selector: str, resource_version: str,
                 timeout_seconds: int, read_timeout: float) -> None:
        try:
            self._response = core.list_namespaced_pod(
                namespace, label_selector=label_selector, resource_version=resource_version,
                timeout_seconds=timeout_seconds, allow_watch_bookmarks=True, watch=True,
                _preload_content=False, _request_timeout=(_REQUEST_TIMEOUT[0], read_timeout))
        except ApiException as exc:
            raise translate(exc, "watch pods") from exc
        except _TRANSPORT as exc:
            raise translate(exc, "watch pods") from exc
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for line in iter_resp_lines(self._response):
                if not line or line.isspace():
                    continue
                event = json.loads(line)  # a half-written line raises ValueError
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    code = int(status.get("code") or 0)
                    message = f"watch pods: ERROR event {code} {status.get('reason')}: " \
                              f"{status.get('message')}"
                    if code == 410:
                        raise KubernetesGone(message, status=410, reason=status.get("reason"))
                    raise KubernetesTransient(message, status=code, reason=status.get("reason"))
                yield event
        except _TRANSPORT as exc:
            if self._closed:
                return
            raise translate(exc, "watch pods") from exc
        finally:
            self._response.close()
            self._response.release_conn()

    def close(self) -> None:
        """End the stream now (shuts the socket down under a blocked reader)."""
        self._closed = True
        with contextlib.suppress(Exception):
            sock = self._response.connection.sock if self._response.connection else None
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
