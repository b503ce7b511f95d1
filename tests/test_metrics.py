"""/metrics on the API (from Postgres) and the controller's own metrics endpoint."""

from __future__ import annotations

import logging
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from test_forkserver import wait_for

from conftest import TEST_TOKEN, Platform, platform_settings
from podfn import remote
from podfn.errors import CallFailed
from podfn.settings import Settings
from podfn_platform.api.app import create_app
from podfn_platform.controller import metrics
from podfn_platform.controller.state import MemoryStore
from podfn_platform.database import Database
from podfn_platform.kube.watcher import PodWatcher


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def api(database_url: str, db: Database) -> Iterator[FlaskClient]:
    app = create_app(platform_settings(database_url), db=db)
    yield app.test_client()
    app.extensions["podfn.waiter"].close()


def submit(client: FlaskClient) -> str:
    import io
    import json

    meta = {"function_name": "f", "spec": {}, "client": {"python": "3.11.7", "cloudpickle": "3.1.2"}}
    response = client.post("/v1/calls", data={
        "meta": json.dumps(meta), "function": (io.BytesIO(b"fn"), "function"),
        "args": [(io.BytesIO(b"args"), "a0")]},
        headers={"Authorization": f"Bearer {TEST_TOKEN}"}, content_type="multipart/form-data")
    assert response.status_code in (200, 201, 202), response.get_data(as_text=True)
    body = response.get_json()
    return str(body["id"] if "id" in body else body["calls"][0]["id"])


def test_api_metrics_count_calls_by_state_and_the_queue(api: FlaskClient, db: Database) -> None:
    _, second, third = submit(api), submit(api), submit(api)
    with db.connect() as conn:
        conn.execute("UPDATE podfn_calls SET not_before = now() + interval '1 hour' WHERE id = %s",
                     (second,))
        conn.execute("UPDATE podfn_calls SET state = 'cancelled', finished_at = now() WHERE id = %s",
                     (third,))
    response = api.get("/metrics")  # no token: counts only
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    found = samples(response.get_data(as_text=True))
    assert found[("podfn_calls", (("state", "queued"),))] == 2
    assert found[("podfn_calls", (("state", "cancelled"),))] == 1
    assert found[("podfn_calls", (("state", "running"),))] == 0
    assert found[("podfn_queue_depth", ())] == 1  # the other waits out its backoff
    assert found[("podfn_database_up", ())] == 1


def test_api_metrics_say_when_the_database_is_down(database_url: str) -> None:
    db = Database(database_url, name="podfn-metrics-test").open()
    app = create_app(platform_settings(database_url), db=db)
    db.close()
    try:
        found = samples(app.test_client().get("/metrics").get_data(as_text=True))
    finally:
        app.extensions["podfn.waiter"].close()
    assert found == {("podfn_database_up", ()): 0}


@remote
def double(x: int) -> int:
    return 2 * x


@remote
def crash() -> None:
    import os

    os._exit(3)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.e2e
def test_controller_counts_launches_and_reconcile_results(platform: Platform) -> None:
    launches = value("podfn_launch_seconds_count")
    failed = value("podfn_reconcile_results_total", kind="exited", state="failed")
    # The controller counts after its own step: the client may have the outcome a
    # moment before the counter moves (no event to await in this process's registry).
    assert double.remote(21) == 42
    wait_for(lambda: value("podfn_launch_seconds_count") == launches + 1)
    assert value("podfn_launch_seconds_sum") > 0
    # A process that dies without a result: the controller records the exit, counted once.
    with pytest.raises(CallFailed, match="code 3"):
        crash.remote()
    assert value("podfn_launch_seconds_count") == launches + 2
    # Counted right after the write the client saw (it names the row's new state): the
    # controller thread may not have got there yet.
    wait_for(lambda: value("podfn_reconcile_results_total", kind="exited",
                           state="failed") > failed, what="the exit to be counted")
    assert value("podfn_reconcile_results_total", kind="exited", state="failed") == failed + 1


class FakeStream:
    def __init__(self, events: list[dict[str, Any]], then: threading.Event) -> None:
        self._events, self._then = events, then

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from self._events
        self._then.set()

    def close(self) -> None:
        pass


class FakeKube:
    namespace = "jobs"

    def __init__(self, done: threading.Event) -> None:
        self.done = done

    def cluster_identity(self) -> str:
        return "fake-cluster"

    def list_pods(self, selector: str) -> tuple[list[dict[str, Any]], str]:
        return [], "1"

    def watch_pods(self, selector: str, rv: str, **_: Any) -> FakeStream:
        pod = {"metadata": {"name": "p", "resourceVersion": "2"}}
        return FakeStream([{"type": "ADDED", "object": pod}, {"type": "MODIFIED", "object": pod},
                           {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "3"}}}],
                          self.done)




def test_watcher_counts_events_by_type_and_relists() -> None:
    before = {t: value("podfn_watch_events_total", type=t) for t in ("ADDED", "MODIFIED", "BOOKMARK")}
    relists = value("podfn_watch_relists_total")
    done = threading.Event()
    watcher = PodWatcher(FakeKube(done), selector="x", store=MemoryStore(),  # type: ignore[arg-type]
                         on_event=lambda *_: None, on_relist=lambda *_: None)
    done_then_stop = threading.Thread(target=lambda: (done.wait(10), watcher.stop()))
    done_then_stop.start()
    watcher.run()
    done_then_stop.join(10)
    assert value("podfn_watch_relists_total") == relists + 1
    assert value("podfn_watch_events_total", type="ADDED") >= before["ADDED"] + 1
    assert value("podfn_watch_events_total", type="MODIFIED") >= before["MODIFIED"] + 1
    assert value("podfn_watch_events_total", type="BOOKMARK") == before["BOOKMARK"]  # not counted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_controller_metrics_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    assert metrics.serve(0) is None
    assert Settings.from_env({}).controller_metrics_port == 9090
    port = free_port()
    server = metrics.serve(port, addr="127.0.0.1")
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"podfn_launch_seconds", "podfn_watch_events", "podfn_watch_relists",
                "podfn_reconcile_results"} <= names
        with caplog.at_level(logging.WARNING, logger="podfn.controller"):
            assert metrics.serve(port, addr="127.0.0.1") is None  # taken: run on without
        assert "cannot serve controller metrics" in caplog.text
    finally:
        server.shutdown()
        server.server_close()

