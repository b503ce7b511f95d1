"""Issue 11's runtime-side rows, measured again on a throwaway `podfn dev` stack.

    python benchmarks/runtime_faults.py

1. 8 calls in flight (each sleeps 3 s), then pg_terminate_backend of every
   runtime connection: how many succeed, how many user retries are spent.
2. A call that prints 200 MB to its stdout file descriptor: what is left on
   disk in the temp directory, and how long the failure reason is.
3. Calls that each start 3 child processes (one plain, one `setsid`, one
   double-forked and `setsid`) and return: how many of those children are
   still running after the call returned.

Prints one line per row.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from podfn import remote
from podfn.settings import Settings
from podfn_platform.dev import DevStack, free_port


def sleep_then(x: int) -> int:
    time.sleep(3)
    return x


def chatty() -> int:
    chunk = b"z" * 1023 + b"\n"
    for _ in range(200 * 1024):
        os.write(1, chunk)
    return 0


def three_children() -> list[int]:
    plain = subprocess.Popen(["sleep", "600"])
    detached = subprocess.Popen(["sleep", "600"], start_new_session=True)
    read, write = os.pipe()
    subprocess.run([sys.executable, "-c",
                    "import os, sys, time\nif os.fork(): os._exit(0)\nos.setsid()\n"
                    "fd = int(sys.argv[1])\nos.write(fd, str(os.getpid()).encode())\nos.close(fd)\n"
                    "time.sleep(600)",
                    str(write)], pass_fds=[write], check=True)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        orphan = int(fh.read())
    return [plain.pid, detached.pid, orphan]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="podfn-runtime-faults-"))
    os.chmod(workdir, 0o755)
    os.environ["PODFN_PROFILE"] = str(workdir / "profile.json")
    with DevStack(Settings.from_env(), workdir, free_port(), temporary=True).start(
            quiet=True) as stack:
        os.environ.update({"PODFN_URL": stack.url, "PODFN_TOKEN": stack.token})

        calls = [remote(sleep_then).spawn(i) for i in range(8)]
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM podfn_calls WHERE state = 'running'"
                               ).fetchone()[0] < 8:  # type: ignore[index]
                time.sleep(0.05)
            killed = len(conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'podfn-runtime'").fetchall())
            ok = sum(c.result(timeout=60) == i for i, c in enumerate(calls))
            charged = conn.execute("SELECT sum(user_failures) FROM podfn_calls WHERE id = ANY(%s)",
                                   ([c.id for c in calls],)).fetchone()[0]  # type: ignore[index]
        print(f"runtime connections terminated mid-call: {killed} connections of 8 calls; "
              f"{ok} of 8 succeeded, {charged} user retries spent")

        before = set(os.listdir(tempfile.gettempdir()))
        call = remote(chatty).spawn()
        call.result(timeout=120)
        after = set(os.listdir(tempfile.gettempdir())) - before
        files = [n for n in after if n.startswith("podfn-") and not n.startswith("podfn-output-")]
        print(f"200 MB printed: new podfn files in {tempfile.gettempdir()}: {files}; "
              f"stored stdout {len(call.logs().stdout)} characters")

        survivors = 0
        for _ in range(3):
            pids = remote(three_children).remote()
            survivors += sum(alive(pid) for pid in pids)
        print(f"child processes still running after 3 successful calls (3 children each): "
              f"{survivors}")


if __name__ == "__main__":
    main()
