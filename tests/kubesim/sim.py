"""``KubeSim``: store + registry + kubelet + HTTP server, started and stopped together."""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from .api import Api
from .faults import Faults
from .kubelet import Kubelet, KubeletConfig
from .server import SimHTTPServer
from .store import Store


class KubeSim:
    """A Kubernetes API stand-in listening on ``host``:``port`` (0 = ephemeral).

    ``base_env`` is the environment every container process starts from (the
    pod's env is laid on top); None means a copy of ``os.environ``.
    ``bookmark_interval`` is the BOOKMARK period of watches that allow them
    (60 s as on a real API server; tests that need them sooner pass less);
    ``gone_mode`` ("event" | "http") how a watch from a compacted version is
    refused (by default a 200 whose first event is an ERROR, as the watch
    cache answers); ``history_limit`` how many events are kept for watch resumption.
    Other keyword arguments go to :class:`KubeletConfig` (``workdir``,
    ``node_capacity``, ``node_labels``, ``node_count``, ``step_delay``,
    ``image_backoff_delay``...).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        base_env: dict[str, str] | None = None,
        bookmark_interval: float = 60.0,
        gone_mode: str = "event",
        history_limit: int = 10_000,
        verbose: bool = False,
        **kubelet_config: Any,
    ) -> None:
        self.host, self._port = host, port
        self.bookmark_interval = bookmark_interval
        self.verbose = verbose
        self.store = Store(history_limit=history_limit)
        self.api = Api(self.store)
        env = dict(os.environ) if base_env is None else dict(base_env)
        self.kubelet = Kubelet(self.api, self.store, KubeletConfig(base_env=env, **kubelet_config))
        self.faults = Faults(self.store, self.kubelet, gone_mode=gone_mode)
        self._httpd: SimHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> KubeSim:
        if self._httpd is not None:
            return self
        self.kubelet.start()
        self._httpd = SimHTTPServer((self.host, self._port), self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="kubesim-http",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end all watches, kill every container process."""
        httpd = self._httpd
        if httpd is None:
            return
        httpd.stopping = True
        self.store.close()
        httpd.shutdown()
        httpd.cut_connections()
        httpd.server_close()  # joins handler threads
        if self._thread is not None:
            self._thread.join()
        self.kubelet.stop()
        self._httpd = None

    def __enter__(self) -> KubeSim:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("KubeSim is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kubeconfig(self, path: str | os.PathLike[str], context: str = "kubesim",
                   namespace: str = "default") -> Path:
        """Write a kubeconfig (JSON, which is YAML) pointing at this server."""
        p = Path(path)
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": "kubesim-dummy-token"}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context,
                                                       "namespace": namespace}}],
            "preferences": {},
        }
        p.write_text(json.dumps(cfg, indent=2))
        return p

    # -- conveniences --------------------------------------------------------

    def namespace_uid(self, namespace: str) -> str:
        """A Namespace's UID: stable for this cluster, new after ``rebuild_cluster``."""
        return str(uuid.uuid5(uuid.UUID(self.store.cluster_uid), namespace)) \
            if namespace != "kube-system" else self.store.cluster_uid

    def set_namespace_policy(self, namespace: str, **policy: Any) -> None:
        """Admission for ``namespace`` (see admission.NamespacePolicy); no arguments lift it."""
        self.faults.set_namespace_policy(namespace, **policy)

    @property
    def resource_version(self) -> str:
        """The current (latest) resourceVersion."""
        return str(self.store.rv)
