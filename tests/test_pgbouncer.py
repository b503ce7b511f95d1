"""The runtime protocol through a real PgBouncer in transaction pooling mode (docs/deploy.md).

Every running call holds a database connection; at scale they go through a
pooler that hands a server connection to a client for one transaction only.
The runtime keeps no session state and prepares nothing server-side, so its
calls work there. Needs the `pgbouncer` binary (Debian: `apt-get install
pgbouncer`); skipped, saying so, when it is absent.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from conftest import platform_settings, running_platform
from podfn import remote
from podfn_platform.controller.local import LocalLauncher
from podfn_platform.database import Database

pytestmark = pytest.mark.e2e

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pooler_user(host: str) -> str:
    """Whom pgbouncer runs as when we are root: `nobody`, unless Postgres listens on a
    Unix socket in a private directory (the embedded server's data directory, mode
    0700): then the directory's owner, the only user that can reach the socket."""
    if host.startswith("/"):
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name
        if owner != "root":
            return owner
    return "nobody"


@pytest.fixture
def pgbouncer(runtime_database_url: str) -> Iterator[str]:
    """PgBouncer (transaction pooling, 2 server connections) in front of this test's database;
    the runtime role's URL through it."""
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed: apt-get install pgbouncer")
    target = conninfo_to_dict(runtime_database_url)
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="podfn-pgbouncer-"))
    os.chmod(workdir, 0o755)
    (workdir / "users.txt").write_text(f'"{target["user"]}" ""\n')
    (workdir / "pgbouncer.ini").write_text(f"""
[databases]
{target["dbname"]} = host={target.get("host", "127.0.0.1")} port={target.get("port", 5432)}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "users.txt"}
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits,application_name
logfile = {workdir / "pgbouncer.log"}
""")
    for path in workdir.iterdir():
        os.chmod(path, 0o644)
    os.chmod(workdir, 0o777)  # pgbouncer may drop to `nobody` and must write its log
    command = [PGBOUNCER, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        command[1:1] = ["-u", _pooler_user(target.get("host", ""))]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = proc.stdout.read().decode() if proc.stdout else ""
                    log = (workdir / "pgbouncer.log")
                    pytest.fail(f"pgbouncer did not start: {output} "
                                f"{log.read_text() if log.exists() else ''}")
                time.sleep(0.05)
        yield make_conninfo(runtime_database_url, host="127.0.0.1", port=str(port))
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)


@remote
def chatty(i: int) -> int:
    import time as t

    print(f"call {i} starts")
    t.sleep(1.2)  # long enough for an output write while running
    print(f"call {i} ends")
    return i * i


def test_calls_run_through_pgbouncer_in_transaction_mode(
        pgbouncer: str, database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    wake = threading.Event()
    launcher = LocalLauncher(pgbouncer, on_exit=wake.set)
    with running_platform(platform_settings(database_url), db, launcher, wake, monkeypatch):
        calls = [chatty.spawn(i) for i in range(8)]  # 8 runtimes share 2 server connections
        assert [c.result(timeout=90) for c in calls] == [i * i for i in range(8)]
        assert "call 3 ends" in calls[3].logs().stdout
        failing = remote(lambda: 1 / 0).spawn()
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=60)
