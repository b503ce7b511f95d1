"""Warm workers (docs/warm-workers.md): one runtime runs many calls of its own pool.

End to end with the local launcher: the worker's pid tells calls of the same
worker apart, Postgres's attempts table says which worker ran each attempt.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from conftest import Platform
from podfn import remote
from podfn.errors import CallTimeout
from podfn_platform.database import Database

pytestmark = pytest.mark.e2e


@remote(max_calls_per_worker=None, idle_timeout=2)
def pid_of(i: int) -> int:
    return os.getpid()


def _attempts(db: Database, ids: list[str]) -> list[dict[str, Any]]:
    with db.connect(name="podfn-test") as conn:
        return conn.execute(
            "SELECT call_id, attempt, state, ref, worker FROM podfn_attempts "
            "WHERE call_id = ANY(%s) ORDER BY launched_at", (ids,)).fetchall()


def test_a_worker_runs_several_calls_in_one_process(platform: Platform) -> None:
    pids = [pid_of.remote(i) for i in range(5)]
    assert len(set(pids)) == 1, f"sequential calls should share one warm worker: {pids}"
