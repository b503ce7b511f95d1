"""What the runtime protocol costs a call: `claim` and `succeed` as the runtime role.

    PODFN_DATABASE_URL=postgresql://postgres@127.0.0.1/postgres python benchmarks/protocol.py [--calls 500]

Creates a scratch database on that server (or an embedded Postgres when
PODFN_DATABASE_URL is unset) and a runtime role of its own, records `--calls`
calls, claims and arms them as the controller does, then times what one
runtime sends for each over one connection: the protocol's `claim` (the secret
checked, the payload returned) and `succeed` (the secret checked again, the
result written, NOTIFY). Prints the median and p95 in milliseconds; both are
dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from claiming import UNARMED
from psycopg.conninfo import make_conninfo

from podfn_platform import migrations, roles
from podfn_platform.controller.environment import Credentials
from podfn_platform.database import Database
from podfn_platform.submission import NewCalls, record_calls, store_payload
from podfn_runtime.database import RuntimeDatabase


def quantiles(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[int(0.95 * (len(values) - 1))]
    return f"median {statistics.median(values):.2f} ms, p95 {p95:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    ns = parser.parse_args()
    server = os.environ.get("PODFN_DATABASE_URL")
    embedded = None
    if not server:
        from podfn_platform.embedded import EmbeddedPostgres

        workdir = Path(tempfile.mkdtemp(prefix="podfn-bench-protocol-"))
        os.chmod(workdir, 0o755)
        embedded = EmbeddedPostgres(workdir / "pgdata", dbname="postgres", delete=True)
        server = embedded.admin_url
    suffix = uuid.uuid4().hex[:8]
    name, runtime_role = f"podfn_bench_{suffix}", f"podfn_bench_runtime_{suffix}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server, dbname=name)
    try:
        with Database(url, name="podfn-bench") as db:
            migrations.apply(db)
            roles.ensure(db, roles.Roles(f"podfn_bench_platform_{suffix}", runtime_role))
            with db.transaction() as tx:
                ids = record_calls(tx, NewCalls("f", store_payload(tx, b"f" * 200), {}, "3.11",
                                                "3.1"), [b"a" * 100] * ns.calls)
            db.all("claim_queued", {"limit": ns.calls, **UNARMED})
            minted = {i: Credentials.mint() for i in ids}
            db.all("arm_attempts", {"ids": ids, "attempts": [1] * len(ids),
                                    "secret_hashes": [minted[i].secret_hash for i in ids],
                                    "token_hashes": [minted[i].token_hash for i in ids]})
        rdb = RuntimeDatabase(make_conninfo(url, user=runtime_role), secret="")
        claims, succeeds = [], []
        for call_id in ids:
            secret = minted[call_id].secret
            started = time.perf_counter()
            assert rdb.transition("claim", id=call_id, attempt=1, secret=secret) is not None
            claims.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            assert rdb.transition("succeed", id=call_id, attempt=1, secret=secret, result=b"r",
                                  result_json=None, stdout="", stderr="") is not None
            succeeds.append((time.perf_counter() - started) * 1000)
        rdb.close()
        print(f"runtime protocol, {ns.calls} calls, one connection: claim {quantiles(claims)}; "
              f"succeed {quantiles(succeeds)}")
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for role in (runtime_role, f"podfn_bench_platform_{suffix}"):
                admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
