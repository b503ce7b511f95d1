"""`podfn controller`: build the launcher the settings name and run the loop until SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading

from podfn.errors import ConfigurationError
from podfn.settings import Settings
from podfn_platform.controller import metrics
from podfn_platform.controller.launcher import Launcher
from podfn_platform.controller.local import LocalLauncher
from podfn_platform.controller.loop import Controller
from podfn_platform.controller.state import StateStore
from podfn_platform.database import Database
from podfn_platform.roles import runtime_database_url

log = logging.getLogger("podfn.controller")


def build_launcher(settings: Settings, db: Database, wake: threading.Event) -> Launcher:
    if settings.launcher == "local":
        return LocalLauncher(runtime_database_url(settings), on_exit=wake.set,
                             forkserver=settings.local_forkserver,
                             secrets_dir=settings.local_secrets_dir,
                             max_result_bytes=settings.max_result_bytes,
                             write_retry_seconds=settings.runtime_write_retry_seconds)
    if settings.launcher == "kubernetes":
        from podfn_platform.kube.client import KubeClient
        from podfn_platform.kube.launcher import KubernetesLauncher

        kube = KubeClient(settings.namespace, context=settings.kube_context,
                          page_size=settings.list_page_size)
        return KubernetesLauncher(kube, settings, StateStore(db), wake=wake.set)
    raise ConfigurationError(f"PODFN_LAUNCHER={settings.launcher!r} is not a launcher")


def build(settings: Settings) -> tuple[Controller, Database]:
    # Not waiting for the database: a controller started while it is down stands by
    # until it can seek leadership, instead of exiting.
    db = Database(settings.require_database_url(), max_size=4, name="podfn-controller").open(
        wait=False)
    wake = threading.Event()
    return Controller(settings, db, build_launcher(settings, db, wake), wake), db


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run a controller in this process; SIGTERM and SIGINT stop it cleanly."""
    stop = stop or threading.Event()
    controller, db = build(settings)

    def stop_now(*_: object) -> None:
        stop.set()
        controller.wake.set()  # do not sleep out the sweep interval

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop_now)
    metrics_server = metrics.serve(settings.controller_metrics_port, settings.controller_metrics_host)
    try:
        controller.run(stop)
    finally:
        db.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
