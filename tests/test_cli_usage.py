"""CLI and HTTP rough edges: exit code 2 for usage errors, JSON for unknown routes and
methods, a header hint for `curl -d`, help layout, lazy imports, names, unchanged deploys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from conftest import TEST_TOKEN, Platform
from podfn import remote
from podfn.cli import cli
from podfn.http import APIClient

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
APP = """
from podfn import remote

@remote
def add(a, b):
    return a + b
"""


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def deployed(api_only: str, tmp_path: Path) -> Path:
    app = tmp_path / "app.py"
    app.write_text(APP)
    result = run("deploy", str(app))
    assert result.exit_code == 0 and "deployed add version 1 (live)" in result.output
    return app


def test_usage_errors_exit_2(deployed: Path) -> None:
    not_an_object = run("invoke", "add", "[1,2]")
    assert not_an_object.exit_code == 2
    assert '\'{"args": [1,2]}\'' in not_an_object.output
    unknown_version = run("rollback", "add", "--to", "99")
    assert unknown_version.exit_code == 2 and "version must be one of" in unknown_version.output
    assert run("invoke", "add", '{"bogus": 1}').exit_code == 2  # the API's 400


def test_an_unchanged_redeploy_changes_nothing(deployed: Path, api_only: str) -> None:
    again = run("deploy", str(deployed))
    assert again.exit_code == 0, again.output
    assert "add is unchanged: version 1 stays live" in again.output
    with APIClient(api_only, TEST_TOKEN) as client:
        assert [v["version"] for v in client.function("add")["versions"]] == [1]
    deployed.write_text(APP.replace("a + b", "b + a"))
    assert "deployed add version 2 (live)" in run("deploy", str(deployed)).output


def test_unknown_paths_and_methods_answer_with_our_json(api_only: str) -> None:
    missing = httpx.get(f"{api_only}/v1/nothing-here", headers=AUTH)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert "no such endpoint: /v1/nothing-here" in missing.json()["error"]["message"]
    wrong = httpx.delete(f"{api_only}/v1/calls/wait", headers=AUTH)
    assert wrong.status_code == 405 and wrong.headers["content-type"] == "application/json"
    assert "POST" in wrong.headers["allow"]
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_a_form_encoded_body_is_told_which_header_to_send(api_only: str) -> None:
    # What `curl -d '{"ids": ["x"]}' URL` sends.
    response = httpx.post(f"{api_only}/v1/calls/wait", content=b'{"ids": ["x"]}',
                          headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    assert "Content-Type: application/json" in response.json()["error"]["message"]


@pytest.mark.parametrize("command", [["invoke"], ["cancel"], ["token", "create"], ["deploy"]])
def test_help_examples_are_indented_once(command: list[str]) -> None:
    text = run(*command, "--help").output
    [example] = [line for line in text.splitlines() if line.lstrip().startswith("Example")]
    assert example.startswith("  Example") and not example.startswith("   "), text
    assert "\n      Exit codes" not in text and "\n  Exit codes:" in text


def test_logs_cancel_and_revoke_have_json_output(api_only: str) -> None:
    with APIClient(api_only, TEST_TOKEN) as client:
        client.create_token("billing", ["invoke"])
        [call_id] = client.submit(function_name="f", function=b"fn", args=[b"a"], spec={},
                                  versions={"python": "3.11.7", "cloudpickle": "3.1.2"})
    logs = run("logs", call_id, "--output", "json")
    assert json.loads(logs.output)["state"] == "queued"
    assert run("logs", call_id, "--follow", "--output", "json").exit_code == 2
    assert json.loads(run("cancel", call_id, "-o", "json").output)["cancelled"] is True
    assert json.loads(run("token", "revoke", "billing", "-o", "json").output)["name"] == "billing"


def test_import_podfn_does_not_import_httpx() -> None:
    code = "import sys, podfn; print(sorted(m for m in ('httpx', 'tqdm', 'asyncio') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@remote
def add(a: int, b: int) -> int:
    return a + b


@pytest.mark.e2e
def test_remote_calls_and_deployed_calls_share_one_name(platform: Platform) -> None:
    assert add.name == add.deploy_name == "add"
    add.deploy()
    assert add.remote(1, 2) == 3
    assert podfn_lookup_add().remote(2, 2) == 4
    listed = run("calls", "--function", "add", "-o", "json")
    assert len(json.loads(listed.output)) == 2


def podfn_lookup_add() -> object:
    import podfn
    return podfn.Function.lookup("add")
