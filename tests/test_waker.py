"""An idle warm or standing worker's wake-ups (podfn_runtime/worker.py, Waker).

Every new call announces its pool on podfn_queued ('fresh:<pool>'); a worker told
its pool sleeps through another pool's, and wakes for anything else.
"""

from __future__ import annotations

import time

import psycopg

from podfn_runtime.worker import Waker


def _notify(database_url: str, *payloads: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        for payload in payloads:  # delivered together at commit, in this order
            conn.execute("SELECT pg_notify('podfn_queued', %s)", (payload,))


def test_an_idle_worker_sleeps_through_another_pools_new_call(
        database_url: str, runtime_database_url: str) -> None:
    waker = Waker(runtime_database_url, pool="a")
    try:
        _notify(database_url, "fresh:b", "fresh:b")
        started = time.monotonic()
        waker.wait(0.3)
        assert time.monotonic() - started >= 0.3, "woken by another pool's calls"
        _notify(database_url, "fresh:b", "fresh:a", "fresh:b")
        started = time.monotonic()
        waker.wait(30)  # its own pool's call among them: awake at once
        assert time.monotonic() - started < 20, "slept through its own pool's call"
        assert waker._conn is not None
        assert list(waker._conn.notifies(timeout=0)) == []  # (the batch was read whole)
    finally:
        waker.close()


def test_what_may_concern_any_worker_wakes_it() -> None:
    mine = Waker.__new__(Waker)
    mine._mine = "fresh:a"
    assert mine._elsewhere("podfn_queued", "fresh:b")
    for channel, payload in (("podfn_queued", "fresh:a"),  # its own pool's new call
                             ("podfn_queued", ""),  # a map's batch: any pool
                             ("podfn_queued", "4f1c0ffee"),  # a requeue or a retry
                             ("podfn_retired", "standing-1")):
        assert not mine._elsewhere(channel, payload)
    told_nothing = Waker.__new__(Waker)
    told_nothing._mine = None
    assert not told_nothing._elsewhere("podfn_queued", "fresh:b")  # (no PODFN_POOL)
