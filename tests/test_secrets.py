"""Secrets in calls: `env` values never come back out; `secrets=` reach the call, not the platform."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from conftest import TEST_TOKEN, Platform, platform_settings, running_platform
from podfn import remote
from podfn.errors import CallFailed
from podfn.spec import validate
from podfn_platform.api.app import create_app
from podfn_platform.controller.local import LocalLauncher
from podfn_platform.database import Database
from podfn_platform.kube.manifest import PodSettings, build_pod
from test_kubernetes_e2e import NS, Cluster, cluster, kplatform, make_platform  # noqa: F401

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
CLIENT = {"python": "3.11.7", "cloudpickle": "3.1.2"}
VALUE = "hunter2-do-not-show"


@pytest.fixture
def client(database_url: str, db: Database) -> Iterator[FlaskClient]:
    app = create_app(platform_settings(database_url), db=db)
    yield app.test_client()
    app.extensions["podfn.waiter"].close()


def multipart(meta: dict[str, object]) -> dict[str, object]:
    return {"meta": json.dumps(meta), "function": (io.BytesIO(b"fn"), "function"),
            "args": [(io.BytesIO(b"a"), "a0")]}


def test_env_values_are_never_returned(client: FlaskClient) -> None:
    spec = {"env": {"API_KEY": VALUE}, "secrets": ["db-creds"]}
    made = client.post("/v1/calls", data=multipart({"function_name": "f", "spec": spec,
                                                    "client": CLIENT}),
                       headers=AUTH, content_type="multipart/form-data")
    assert made.status_code == 201
    call_id = made.json["calls"][0]["id"]
    deployed = client.post("/v1/functions", data=multipart({"name": "svc", "spec": spec,
                                                            "client": CLIENT}),
                           headers=AUTH, content_type="multipart/form-data")
    assert deployed.status_code == 201
    client.post(f"/v1/calls/{call_id}/cancel", headers=AUTH)
    answers = [client.get(f"/v1/calls/{call_id}", headers=AUTH),
               client.get("/v1/calls", headers=AUTH),
               client.get(f"/v1/calls/{call_id}/result", headers=AUTH),
               client.post("/v1/calls/wait", json={"ids": [call_id]}, headers=AUTH),
               client.get("/v1/functions", headers=AUTH),
               client.get("/v1/functions/svc", headers=AUTH)]
    for answer in answers:
        assert answer.status_code == 200
        assert VALUE not in answer.get_data(as_text=True)
    shown = client.get(f"/v1/calls/{call_id}", headers=AUTH).json["spec"]
    assert shown["env_names"] == ["API_KEY"] and "env" not in shown
    assert shown["secrets"] == ["db-creds"]  # names of Secrets are not secret


def test_secrets_hint_is_validated() -> None:
    assert validate({"secrets": ["a", "b.c", "a"]})["secrets"] == ["a", "b.c"]
    for bad in ("UPPER", "a/b", "", "-x"):
        with pytest.raises(Exception, match="secrets"):
            validate({"secrets": [bad]})


def test_secrets_become_env_from_on_kubernetes_and_env_wins() -> None:
    pod = build_pod(call_id="c1", attempt=1, function_name="f",
                    spec=validate({"secrets": ["db-creds"], "env": {"A": "1"}}),
                    client_python="3.12.1",
                    settings=PodSettings(namespace="jobs", runtime_image="img",
                                         database_secret="podfn-runtime-database"),
                    runtime_env={"A": "1", "PODFN_CALL_ID": "c1"})
    [container] = pod["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "db-creds"}}]
    assert {"name": "A", "value": "1"} in container["env"]


@remote
def read_env(name: str) -> str | None:
    return os.environ.get(name)


def test_local_secrets_come_from_files(database_url: str, runtime_database_url: str, db: Database,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "db-creds").mkdir()
    (tmp_path / "db-creds" / "DB_PASSWORD").write_text("s3cret\n")
    wake = threading.Event()
    launcher = LocalLauncher(runtime_database_url, on_exit=wake.set, secrets_dir=tmp_path)
    with running_platform(platform_settings(database_url), db, launcher, wake, monkeypatch):
        assert read_env.options(secrets=["db-creds"]).remote("DB_PASSWORD") == "s3cret"
        assert read_env.remote("DB_PASSWORD") is None  # only calls that ask for it
        with pytest.raises(CallFailed, match="secret 'nope' not found"):
            read_env.options(secrets=["nope"]).remote("X")


def test_kubernetes_secrets_reach_the_pod(cluster: Cluster,  # noqa: F811
                                          kplatform: Platform) -> None:  # noqa: F811
    cluster.v1.create_namespaced_secret(NS, {"metadata": {"name": "db-creds"},
                                             "stringData": {"DB_PASSWORD": "s3cret"}})
    assert read_env.options(secrets=["db-creds"]).remote("DB_PASSWORD") == "s3cret"
