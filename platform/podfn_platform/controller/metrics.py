"""The controller's Prometheus metrics, served on `PODFN_CONTROLLER_METRICS_PORT` (0: off).

Counted where they happen: launches and standing workers in `controller.loop`, pod watch events
and relists in `kube.watcher`, reconcile results in `controller.loop.record`.
Calls by state and the queue depth are the API's `/metrics` (from Postgres).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("podfn.controller")

LAUNCH_SECONDS = Histogram(
    "podfn_launch_seconds", "Time to launch one attempt (pod created, or process started)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
LAUNCH_FAILURES = Counter("podfn_launch_failures", "Launches that raised (handed back as disruptions)")
WATCH_EVENTS = Counter("podfn_watch_events", "Pod watch events handled", ["type"])
WATCH_RELISTS = Counter("podfn_watch_relists", "Full pod lists (start, 410 Gone, periodic)")
DATABASE_ERRORS = Counter("podfn_controller_database_errors",
                          "Controller turns abandoned on a database error (retried with backoff)")
STANDING_STARTS = Counter("podfn_standing_worker_starts",
                          "Standing workers started for deployed functions' min_workers")
STANDING_WORKERS = Gauge("podfn_standing_workers",
                         "Standing workers the launcher holds (busy, idle or retiring)")
RECONCILE_RESULTS = Counter(
    "podfn_reconcile_results", "Attempt outcomes recorded: what happened and the call's new state "
    "('unchanged' when a guard found the call already moved on)", ["kind", "state"])


def serve(port: int, addr: str = "127.0.0.1") -> Any:
    """Serve the default registry on `port`; returns the server, or None (port 0, or taken).

    Loopback by default (PODFN_CONTROLLER_METRICS_HOST): the chart opens it
    for Prometheus on purpose. Metrics are not worth stopping a controller for: a port already taken
    (a second controller on one machine) is logged and the controller runs on.
    """
    if not port:
        return None
    try:
        server, _thread = start_http_server(port, addr=addr)
    except OSError as exc:
        log.warning("cannot serve controller metrics on port %d (%s); running without", port, exc)
        return None
    log.info("controller metrics on :%d/metrics", server.server_port)
    return server
