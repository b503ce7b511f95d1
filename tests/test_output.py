"""Output captured at the file descriptors, stored as appended chunks; generator items."""

from __future__ import annotations

import os
import subprocess
import sys

import cloudpickle
from test_runtime import run_runtime, submit

from attempts import UNARMED, Runtime, arm
from podfn_platform.database import Database

# The runtime cannot import this test module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def chatty() -> str:
    """Writes every way a call can: none of it is `print`."""
    import ctypes
    import logging
    import os
    import subprocess

    logging.getLogger("mine").warning("named logger warning")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(message)s")
    logging.info("root logger info")
    subprocess.run(["echo", "from a child process"], check=True)
    os.write(1, b"straight to fd 1\n")
    os.write(2, b"straight to fd 2\n")
    libc = ctypes.CDLL(None)
    libc.puts(b"from C")
    libc.fflush(None)
    return "done"


def output_rows(db: Database, call_id: str) -> list[dict[str, object]]:
    with db.transaction() as tx:
        rows = tx._conn.execute(
            "SELECT attempt, stream, char_offset, data FROM podfn_output WHERE call_id = %s "
            "ORDER BY char_offset", (call_id,)).fetchall()
    return [dict(r) for r in rows]


def test_everything_written_to_fds_1_and_2_is_stored_and_the_runtime_log_is_not(
        db: Database, runtime_database_url: str) -> None:
    call_id = submit(db, chatty)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    done = run_runtime(runtime_database_url, call_id, 1, arm(db, call_id, 1).secret)
    assert done.returncode == 0, done.stderr
    row = db.one("get_logs", {"id": call_id})
    assert row is not None and row["state"] == "succeeded"
    for text in ("from a child process\n", "straight to fd 1\n", "from C\n"):
        assert text in row["stdout"]
    for text in ("named logger warning\n", "INFO:root logger info\n", "straight to fd 2\n"):
        assert text in row["stderr"]
    assert "podfn-runtime" not in row["stdout"] + row["stderr"]
    # Still echoed to the process's own output (the pod's log), runtime lines included.
    assert "from C" in done.stdout and "straight to fd 2" in done.stderr
    assert "podfn-runtime INFO running call" in done.stderr
    # The chunks are contiguous and add up to the same text, per stream.
    rows = output_rows(db, call_id)
    offset = 0
    for r in rows:
        assert r["char_offset"] == offset and r["attempt"] == 1
        offset += len(str(r["data"]))
    for stream in ("stdout", "stderr"):
        assert "".join(str(r["data"]) for r in rows if r["stream"] == stream) == row[stream]


def test_appending_a_chunk_twice_stores_it_once(db: Database, runtime_database_url: str) -> None:
    runtime = Runtime(db, runtime_database_url)
    call_id = submit(db, pow, 2, 2)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    assert runtime.claim(call_id, 1) is not None
    for _ in range(2):
        assert runtime.call("append_output", call_id, 1, stream="stdout", offset=0,
                            data="hello\n") is not None
    assert [r["data"] for r in output_rows(db, call_id)] == ["hello\n"]
    # Past the cap, or from a stale attempt, nothing is stored.
    assert runtime.call("append_output", call_id, 1, stream="stdout", offset=1 << 22,
                        data="x") is None
    assert runtime.call("append_output", call_id, 1, stream="stdin", offset=6,
                        data="x") is None
    assert runtime.succeed(call_id, 1) is not None
    assert runtime.call("append_output", call_id, 1, stream="stdout", offset=6,
                        data="late") is None
    assert len(output_rows(db, call_id)) == 1


def numbers(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield {"i": i}


async def async_numbers(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield i * 10


def item_rows(db: Database, call_id: str) -> list[object]:
    with db.transaction() as tx:
        rows = tx._conn.execute("SELECT item_index, data FROM podfn_items WHERE call_id = %s "
                                "ORDER BY item_index", (call_id,)).fetchall()
    assert [r["item_index"] for r in rows] == list(range(len(rows)))
    return [cloudpickle.loads(r["data"]) for r in rows]


def test_generator_items_are_stored_in_order(db: Database, runtime_database_url: str) -> None:
    for fn, expected in ((numbers, [{"i": i} for i in range(5)]),
                         (async_numbers, [i * 10 for i in range(5)])):
        call_id = submit(db, fn, 5)
        db.all("claim_queued", {"limit": 1, **UNARMED})
        done = run_runtime(runtime_database_url, call_id, 1, arm(db, call_id, 1).secret)
        assert done.returncode == 0, done.stderr
        [row] = db.all("finished_calls", {"ids": [call_id], "inline": 1 << 20, "budget": 1 << 20})
        assert row["state"] == "succeeded" and cloudpickle.loads(row["result"]) == 5
        assert item_rows(db, call_id) == expected


def test_yielding_an_index_twice_keeps_the_first(db: Database, runtime_database_url: str) -> None:
    runtime = Runtime(db, runtime_database_url)
    call_id = submit(db, pow, 2, 2)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    assert runtime.claim(call_id, 1) is not None
    assert runtime.call("yield_item", call_id, 1, index=0, data=cloudpickle.dumps("a"))
    assert runtime.call("yield_item", call_id, 1, index=0, data=cloudpickle.dumps("b"))
    assert runtime.call("yield_item", call_id, 1, index=-1, data=b"x") is None
    assert item_rows(db, call_id) == ["a"]


def flood() -> None:
    import sys

    for i in range(30):
        sys.stdout.write(f"{i:06d}" + "y" * 99_994)  # 30 x 100,000 characters
    sys.stdout.write("the end\n")


def test_output_past_the_cap_keeps_the_head_in_chunks_and_the_tail_in_the_columns(
        db: Database, runtime_database_url: str) -> None:
    call_id = submit(db, flood)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    done = run_runtime(runtime_database_url, call_id, 1, arm(db, call_id, 1).secret)
    assert done.returncode == 0, done.stderr[-2000:]
    stored = "".join(str(r["data"]) for r in output_rows(db, call_id))
    assert stored.startswith("000000yyy") and "is not stored" in stored.splitlines()[-1]
    assert len(stored) < (2 << 20) + 200
    row = db.one("get_logs", {"id": call_id})
    assert row is not None
    assert row["stdout"].startswith("[podfn: ") and "earlier characters dropped" in row["stdout"]
    assert row["stdout"].endswith("the end\n")


def big_items():  # type: ignore[no-untyped-def]
    yield b"small"
    yield bytes(5000)


def test_an_item_past_the_result_limit_fails_the_call_without_retries(
        db: Database, runtime_database_url: str) -> None:
    call_id = submit(db, big_items)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    env = {**os.environ, "PODFN_RUNTIME_DATABASE_URL": runtime_database_url,
           "PODFN_ATTEMPT_SECRET": arm(db, call_id, 1).secret}
    done = subprocess.run([sys.executable, "-m", "podfn_runtime", "--call-id", call_id,
                           "--attempt", "1", "--max-result-bytes", "1000"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    row = db.one("get_call", {"id": call_id})
    assert row is not None and row["state"] == "failed" and row["user_failures"] == 0
    assert "item 1 is" in row["reason"] and "limit of 1000 bytes" in row["reason"]
    assert item_rows(db, call_id) == [b"small"]
