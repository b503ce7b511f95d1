"""The short chaos run: ~100 calls, one of each fault, and the history check must pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(sys.platform != "linux", reason="uses the forkserver and /proc")]


def test_short_chaos_run_loses_nothing_doubles_nothing_charges_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODFN_")}
    done = subprocess.run([sys.executable, "benchmarks/chaos.py", "--calls", "100", "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    for fault in ("kill controller", "terminate backends", "kill runtime", "kill api worker",
                  "restart postgres"):
        assert f"| {fault} | 1 |" in done.stdout, done.stdout
    for check in ("lost (submitted, not in the table) | 0 | yes",
                  "results written twice | 0 | yes",
                  "user retries spent on injected faults | 0 | yes"):
        assert check in done.stdout, done.stdout
