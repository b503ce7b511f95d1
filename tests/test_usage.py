"""What each call really used: recorded by the runtime, summarised against the hints."""

from __future__ import annotations

import json

import httpx
from click.testing import CliRunner
from test_runtime import run_runtime, submit

from attempts import UNARMED, arm
from conftest import TEST_TOKEN, Platform
from podfn import remote
from podfn.cli import cli
from podfn_platform import usage
from podfn_platform.database import Database

MiB = 2**20


def test_the_runtime_records_peak_memory_cpu_and_wall_time(db: Database,
                                                           runtime_database_url: str) -> None:
    def hungry(megabytes: int, cpu_seconds: float) -> int:
        """Hold `megabytes` of memory and keep a core busy for `cpu_seconds` (nested, so
        cloudpickle sends it by value: the runtime cannot import this module)."""
        import time

        block = bytearray(megabytes * 2**20)
        for i in range(0, len(block), 4096):  # touch every page, so it is resident
            block[i] = 1
        end = time.process_time() + cpu_seconds
        n = 0
        while time.process_time() < end:
            n += 1
        return len(block)

    call_id = submit(db, hungry, 200, 0.5)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    done = run_runtime(runtime_database_url, call_id, 1, arm(db, call_id, 1).secret)
    assert done.returncode == 0, done.stderr
    [attempt] = db.all("get_attempts", {"id": call_id})
    assert attempt["state"] == "succeeded"
    assert 200 * MiB <= attempt["peak_bytes"] < 2048 * MiB
    assert 0.45 <= attempt["cpu_seconds"] < 30
    assert attempt["wall_seconds"] >= 0.45


def test_usage_needs_the_attempts_secret_and_a_running_attempt(db: Database,
                                                               runtime_database_url: str) -> None:
    call_id = submit(db, pow, 2, 3)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    secret = arm(db, call_id, 1).secret
    assert run_runtime(runtime_database_url, call_id, 1, secret).returncode == 0
    with Database(runtime_database_url, name="podfn-test-runtime") as runtime, \
            runtime.session("t") as session:
        [row] = session.execute("SELECT podfn_runtime_v1.usage(%s, 1, %s, 1, 1, 1) AS w",
                                (call_id, secret))
    assert row["w"] is False  # the outcome spent the secret
    [attempt] = db.all("get_attempts", {"id": call_id})
    assert attempt["peak_bytes"] != 1


def test_suggestions_round_up_with_headroom() -> None:
    assert usage.suggest_memory(100 * MiB) == "128Mi"   # 125Mi -> next 16Mi
    assert usage.suggest_memory(1 * MiB) == "32Mi"      # never below the platform's floor
    assert usage.suggest_cpu(0.01) == "50m"
    assert usage.suggest_cpu(0.5) == "600m"
    assert usage.suggest_cpu(2.5) == "3"


@remote(memory="1Gi", cpu="2")
def measured(megabytes: int) -> int:
    block = bytearray(megabytes * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


def test_the_api_and_cli_compare_usage_with_the_hints(platform: Platform) -> None:
    calls = [measured.spawn(64) for _ in range(3)]
    assert [c.result(timeout=60) for c in calls] == [64 * MiB] * 3
    headers = {"Authorization": f"Bearer {TEST_TOKEN}"}
    got = httpx.get(f"{platform.url}/v1/functions/measured/usage?last=10", headers=headers).json()
    assert got["calls"] == 3 and got["hints"] == {"cpu": "2", "memory": "1Gi"}
    assert 64 * MiB <= got["peak_bytes"]["p50"] <= got["peak_bytes"]["p95"] < 1024 * MiB
    suggested = got["suggested"]
    assert suggested["memory"].endswith("Mi") and int(suggested["memory"][:-2]) < 1024
    assert "memory hint 1Gi" in suggested["why"]
    bad = httpx.get(f"{platform.url}/v1/functions/measured/usage?last=0", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "last"

    runner = CliRunner()
    listed = runner.invoke(cli, ["functions", "--usage", "--output", "json"])
    assert listed.exit_code == 0, listed.output
    [row] = [u for u in json.loads(listed.output) if u["function"] == "measured"]
    assert row["suggested"] == suggested
    table = runner.invoke(cli, ["functions", "--usage"])
    assert "SUGGEST MEMORY" in table.output and suggested["memory"] in table.output
    shown = runner.invoke(cli, ["call", calls[0].id])
    assert shown.exit_code == 0 and "PEAK MEM" in shown.output and "Mi" in shown.output
