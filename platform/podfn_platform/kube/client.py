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
    KubernetesConflict,
    KubernetesError,
    KubernetesGone,
    KubernetesInvalid,
    KubernetesNotFound,
    KubernetesQuotaExceeded,
    KubernetesTransient,
)

log = logging.getLogger("podfn.kube")

# How long a request may take; a watch gets its own read timeout (see watch()).
_REQUEST_TIMEOUT = (5.0, 30.0)


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason or "")
    except (ValueError, AttributeError):
        return str(exc.reason or exc.body or "")


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
        kwargs: dict[str, Any] = {"status": status, "reason": exc.reason,
                                  "retry_after": _retry_after(exc)}
        if status == 409:
            return KubernetesConflict(text, **kwargs)
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


class KubeClient:
    """Pods (and the Secrets tests need) in one namespace."""

    def __init__(self, namespace: str, *, kubeconfig: str | None = None,
                 context: str | None = None) -> None:
        self.namespace = namespace
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
        self.api_client = k8s.ApiClient(configuration)
        self.core = k8s.CoreV1Api(self.api_client)
        log.info("Kubernetes API at %s (%s), namespace %s", configuration.host, source, namespace)

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
        """The pods and the list's resourceVersion (to watch from)."""
        response = self._call("list pods", self.core.list_namespaced_pod, self.namespace,
                              label_selector=label_selector, _preload_content=False)
        body = json.loads(response.data)
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

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
        except KubernetesConflict:
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
