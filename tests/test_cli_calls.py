"""The user-facing `podfn` commands against a running platform, with their exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conftest import Platform
from podfn.cli import cli

pytestmark = pytest.mark.e2e

APP = """
import sys
import time
from podfn import remote

@remote(cpu="250m", memory="256Mi")
def add(a, b):
    print(f"adding {a} and {b}")
    return a + b

@remote
def fails(x):
    raise KeyError(x)

@remote
def chatty(n):
    for i in range(n):
        print(f"line {i}", flush=True)
        time.sleep(0.4)
    return n
"""


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def deployed(platform: Platform, tmp_path: Path) -> Platform:
    app = tmp_path / "app.py"
    app.write_text(APP)
    result = run("deploy", str(app))
    assert result.exit_code == 0, result.output
    assert "deployed add version 1 (live)" in result.output
    return platform


def test_functions_and_rollback(deployed: Platform, tmp_path: Path) -> None:
    listed = run("functions")
    assert listed.exit_code == 0
    assert "add" in listed.output and "cpu=250m memory=256Mi" in listed.output
    as_json = json.loads(run("functions", "--output", "json").output)
    assert {f["name"] for f in as_json} == {"add", "fails", "chatty"}
    app = tmp_path / "app.py"
    app.write_text(APP.replace("return a + b", "return b + a"))  # unchanged code is not redeployed
    assert run("deploy", str(app)).exit_code == 0
    rolled = run("rollback", "add")
    assert rolled.exit_code == 0 and "version 1 is live (was 2)" in rolled.output
    assert run("rollback", "add", "--to", "7").exit_code == 2  # no such version: usage
    assert run("rollback", "ghost").exit_code == 6


def test_invoke_calls_call_and_logs(deployed: Platform) -> None:
    invoked = run("invoke", "add", '{"args": [1, 2]}')
    assert invoked.exit_code == 0 and invoked.output.strip() == "3"
    calls = run("calls", "--function", "add")
    assert calls.exit_code == 0
    lines = calls.output.splitlines()
    assert lines[0].split() == ["ID", "FUNCTION", "STATE", "ATTEMPT", "DURATION", "REASON"]
    call_id = lines[1].split()[0]
    assert "succeeded" in lines[1]
    shown = run("call", call_id)
    assert shown.exit_code == 0 and "state     succeeded" in shown.output
    assert "attempts:" in shown.output
    logs = run("logs", call_id)
    assert logs.exit_code == 0 and "adding 1 and 2" in logs.output
    data = json.loads(run("call", call_id, "-o", "json").output)
    assert data["id"] == call_id and data["attempts"][0]["state"] == "succeeded"


def test_invoke_failure_exit_code_and_message(deployed: Platform) -> None:
    result = CliRunner().invoke(cli, ["invoke", "fails", '{"args": ["k"]}'])
    assert result.exit_code == 1
    assert "builtins.KeyError" in result.output


def test_logs_follow_prints_until_the_end(deployed: Platform) -> None:
    started = run("invoke", "chatty", '{"args": [4]}', "--wait", "0")
    assert started.exit_code == 0 and "follow it with: podfn call" in started.output
    call_id = started.output.split()[1]
    followed = run("logs", call_id, "--follow")
    assert followed.exit_code == 0
    assert followed.output == "".join(f"line {i}\n" for i in range(4))


def test_cancel(deployed: Platform) -> None:
    started = run("invoke", "chatty", '{"args": [100]}', "--wait", "0")
    call_id = started.output.split()[1]
    result = run("cancel", call_id)
    assert result.exit_code == 0 and f"cancelled {call_id}" in result.output
    again = run("cancel", call_id)
    assert "had already finished: cancelled" in again.output


def test_tokens(platform: Platform) -> None:
    made = run("token", "create", "--name", "svc", "--scope", "invoke", "--scope", "read")
    assert made.exit_code == 0
    secret = made.output.splitlines()[1]
    assert secret.startswith("pfn_")
    listed = run("token", "list")
    assert "svc" in listed.output and "invoke,read" in listed.output and secret not in listed.output
    assert run("token", "revoke", "svc").exit_code == 0
    assert run("token", "revoke", "svc").exit_code == 6


def test_exit_codes(deployed: Platform) -> None:
    # One platform for the table: none of these changes anything.
    for args, code in [(("call", "nope"), 6),
                       (("invoke", "ghost", "{}"), 6),
                       (("invoke", "add", "{not json"), 2),
                       (("calls", "--state", "weird"), 2)]:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == code, (args, result.output)


def test_not_authorized_exit_code(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODFN_TOKEN", "wrong")
    result = CliRunner().invoke(cli, ["calls"])
    assert result.exit_code == 5 and "this token was not recognised" in result.output


def test_unreachable_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODFN_URL", "http://127.0.0.1:1")
    result = CliRunner().invoke(cli, ["calls"])
    assert result.exit_code == 3 and "cannot reach the podfn API" in result.output


@pytest.mark.parametrize("command", ["calls", "call", "logs", "cancel", "invoke", "deploy",
                                     "functions", "rollback", "token"])
def test_help_has_an_example_and_the_exit_codes(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Exit codes" in result.output
    if command != "token":
        assert "Example" in result.output
