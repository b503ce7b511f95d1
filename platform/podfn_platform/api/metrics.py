"""`/metrics` on the API, in the Prometheus text format.

Calls by state and the queue depth come from one SQL query per scrape, so
every API replica and gunicorn worker answers the same numbers (no
per-process counters to add up). The controller's own numbers (launch
latency, watch events, reconcile results) are served by the controller on
`PODFN_CONTROLLER_METRICS_PORT` (`podfn_platform.controller.metrics`).
`/metrics` needs no token: it holds counts, never ids or payloads.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from podfn.errors import DatabaseError
from podfn_platform.api.contract import operation
from podfn_platform.database import Database

STATES = ("queued", "launching", "running", "succeeded", "failed", "timed_out", "cancelled")


class CallsCollector(Collector):
    def __init__(self, db: Database) -> None:
        self._db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("podfn_database_up", "1 if the last scrape could query Postgres")
        try:
            rows = self._db.all("call_counts")
        except DatabaseError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        counts = {state: 0 for state in STATES}
        due = 0
        for row in rows:
            counts[row["state"]] = row["calls"]
            due += row["due"]
        calls = GaugeMetricFamily("podfn_calls", "Calls in Postgres by state", labels=["state"])
        for state, n in counts.items():
            calls.add_metric([state], n)
        yield calls
        yield GaugeMetricFamily("podfn_queue_depth",
                                "Queued calls due to launch now (retries waiting out a backoff excluded)",
                                value=due)


def register(app: Flask, db: Database) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CallsCollector(db))

    @app.get("/metrics")
    @operation("Prometheus metrics: calls by state, queue depth", {200: {
        "description": "Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}}}}, public=True)
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
