"""The API contract: /openapi.json documents every route, and schemathesis finds nothing wrong.

The fuzz test runs the schemathesis CLI (every check, every phase, a fixed
seed) against the real app served on a loopback port, with the test database.
benchmarks/fuzz_api.py runs the same longer, with a random seed.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from flask import Flask
from openapi_spec_validator import validate

from conftest import TEST_TOKEN, ThreadedServer, platform_settings
from podfn_platform.api import contract, schemas
from podfn_platform.api.app import create_app
from podfn_platform.api.errors import APIError
from podfn_platform.api.openapi import document
from podfn_platform.database import Database


@pytest.fixture
def app(database_url: str, db: Database) -> Iterator[Flask]:
    app = create_app(platform_settings(database_url, max_wait_seconds=0.5), db=db)
    yield app
    app.extensions["podfn.waiter"].close()


def test_the_document_is_valid_openapi(app: Flask) -> None:
    validate(document(app))


def test_every_route_is_documented(app: Flask) -> None:
    paths = document(app)["paths"]
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("ui."):
            continue  # the dashboard's pages and their JSON are not the public API
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path in paths, f"{rule.rule} is not in the OpenAPI document"
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths[path], f"{method} {path} is not documented"
    assert app.test_client().get("/openapi.json").json == document(app)


def test_the_meta_part_is_a_json_object(app: Flask) -> None:
    body = document(app)["paths"]["/v1/calls"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]
    assert form["encoding"]["meta"] == {"contentType": "application/json"}
    assert form["schema"]["properties"]["meta"] == {"$ref": "#/components/schemas/SubmitMeta"}


def test_created_things_are_linked_to_the_operations_that_take_them(app: Flask) -> None:
    paths = document(app)["paths"]
    operations = {op["operationId"] for item in paths.values() for op in item.values()}
    for path, status in (("/v1/calls", "201"), ("/v1/functions", "201"), ("/v1/tokens", "201")):
        links = paths[path]["post"]["responses"][status]["links"]
        assert links and all(link["operationId"] in operations for link in links.values())


def test_every_example_in_the_document_is_valid_by_its_schema(app: Flask) -> None:
    components = document(app)["components"]["schemas"]
    examples = [(name, e) for name, schema in components.items()
                for e in schema.get("examples", [])]
    assert len(examples) >= 8
    for name, example in examples:
        validator = jsonschema_rs.Draft202012Validator(
            {"$ref": f"#/components/schemas/{name}", "components": {"schemas": components}})
        assert validator.is_valid(example), (name, example)


def _submit(app: Flask, spec: dict[str, Any]) -> Any:
    meta = {"function_name": "example.double", "client": schemas.CLIENT, "spec": spec}
    return app.test_client().post(
        "/v1/calls", headers={"Authorization": f"Bearer {TEST_TOKEN}"},
        data={"meta": json.dumps(meta), "function": (io.BytesIO(b"f"), "function"),
              "args": [(io.BytesIO(b"a"), "args")]})


@pytest.mark.parametrize(("spec", "field"), [
    ({"node_selector": {"pool": "gpu a"}}, "spec.node_selector.pool"),  # not a label value
    ({"labels": {"team": "x" * 64}}, "spec.labels.team"),
    ({"node_selector": {"pool\n": "gpu"}}, "spec.node_selector"),  # ECMA-262's `$`
    ({"tolerations": [["gpu"]]}, "spec.tolerations.0"),
    ({"tolerations": [{"key": "gpu", "operator": "Sometimes"}]}, "spec.tolerations.0.operator"),
    ({"tolerations": [{"key": "gpu", "tolerance": 1}]}, "spec.tolerations.0.tolerance"),
    ({"cpu": "1e3m"}, "spec.cpu"),
])
def test_the_api_refuses_what_the_document_forbids(app: Flask, spec: dict[str, Any],
                                                   field: str) -> None:
    response = _submit(app, spec)
    assert response.status_code == 422, response.json
    assert response.json["error"]["field"] == field


def test_a_refused_pattern_is_said_in_the_fields_words(app: Flask) -> None:
    message = _submit(app, {"node_selector": {"pool": "-gpu"}}).json["error"]["message"]
    assert message.startswith('spec.node_selector.pool: "-gpu" is not a Kubernetes label value')


def test_the_api_takes_what_the_document_allows(app: Flask) -> None:
    spec = {"node_selector": {"pool": "gpu-a100", "zone": ""}, "cpu": "0.5", "memory": "1.5Gi",
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
                            {"operator": "Exists"}]}
    assert _submit(app, spec).status_code == 201


@pytest.mark.parametrize(("name", "valid"), [
    ("example.double", True), ("données.moyenne", True), ("a b", True), ("...", True),
    ("a\n", False), (" a", False), ("..", False), ("a/b", False), ("a\u200bb", False),
])
def test_function_names_mean_the_same_in_python_and_ecma(name: str, valid: bool) -> None:
    meta = {"name": name, "client": schemas.CLIENT}
    if valid:
        assert contract.validate(schemas.DeployMeta, meta, "meta").name == name
    else:
        with pytest.raises(APIError) as refused:
            contract.validate(schemas.DeployMeta, meta, "meta")
        assert refused.value.status == 422


def test_a_405_names_the_allowed_methods(app: Flask) -> None:
    response = app.test_client().delete("/v1/calls/wait",
                                        headers={"Authorization": f"Bearer {TEST_TOKEN}"})
    assert response.status_code == 405
    assert response.headers["Allow"] and "POST" in response.headers["Allow"]
    assert response.json["error"]["code"] == "method_not_allowed"


def schemathesis_command(url: str, *, seed: int | None, examples: int) -> list[str]:
    st = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    command = [st, "run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {TEST_TOKEN}",
               "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
               "--max-examples", str(examples), "--request-timeout", "30", "--no-color"]
    if seed is not None:
        command += ["--seed", str(seed)]
    return command


def schemathesis_env() -> dict[str, str]:
    """The environment for the schemathesis CLI: our hooks (tests/schemathesis_frames.py)
    make bodies for the framed submissions."""
    tests = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_frames", "PYTHONPATH": path}


def test_schemathesis_finds_no_failures(app: Flask, tmp_path: Path) -> None:
    with ThreadedServer(app) as server:
        run = subprocess.run(schemathesis_command(server.url, seed=15, examples=8),
                             capture_output=True, text=True, cwd=tmp_path, timeout=110,
                             env=schemathesis_env())
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
