"""What the dashboard and usage recording cost: page times over many calls, the usage write.

    PODFN_DATABASE_URL=postgresql://postgres@127.0.0.1/postgres \
        python benchmarks/dashboard.py [--calls 50000] [--repeat 20]

Creates a scratch database on that server (or an embedded Postgres when
PODFN_DATABASE_URL is unset) with roles of its own, fills it with `--calls`
finished calls spread over the last day (10 functions, a mix of outcomes and
failure reasons, each with one attempt that reported usage) plus 200 queued,
then times, through Flask's test client (no network), the Overview, Calls and
a Function page and the usage API, and, as the runtime role, the runtime
protocol's `usage` write on 500 armed attempts. Prints median and p95 in
milliseconds; everything is dropped afterwards. Results: docs/ui.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from claiming import UNARMED
from psycopg.conninfo import make_conninfo

from podfn.settings import Settings
from podfn_platform import migrations, roles
from podfn_platform.api.app import create_app
from podfn_platform.controller.environment import Credentials
from podfn_platform.database import Database, jsonb
from podfn_platform.submission import NewCalls, record_calls, store_payload
from podfn_runtime.database import RuntimeDatabase

TOKEN = "bench-token"
SEED = """
INSERT INTO podfn_calls (id, function_name, function_digest, args, spec, state, attempt,
                         reason, client_python, client_cloudpickle, created_at, launched_at,
                         started_at, finished_at)
SELECT md5(i::text || %(salt)s), 'fn' || (i %% 10), %(digest)s, '\\x00', '{"cpu": "1"}',
       (ARRAY['succeeded', 'succeeded', 'succeeded', 'failed', 'timed_out', 'cancelled'])[1 + i %% 6],
       1,
       CASE WHEN i %% 6 IN (3, 4) THEN 'reason ' || (i %% 17) END,
       '3.11', '3.1', t, t + interval '1 second', t + interval '2 seconds',
       t + interval '2 seconds' + (i %% 30) * interval '1 second'
FROM generate_series(1, %(n)s) AS i,
     LATERAL (SELECT now() - interval '1 day' * (i::float8 / %(n)s) AS t) s;
INSERT INTO podfn_attempts (call_id, attempt, state, launched_at, started_at, finished_at,
                            peak_bytes, cpu_seconds, wall_seconds)
SELECT id, 1, state, launched_at, started_at, finished_at,
       (50 + random() * 200)::bigint * 1048576, random() * 3, random() * 30
FROM podfn_calls
"""


def timed(fn: Callable[[], object], repeat: int) -> str:
    values = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        values.append((time.perf_counter() - started) * 1000)
    values.sort()
    p95 = values[int(0.95 * (len(values) - 1))]
    return f"median {statistics.median(values):.1f} ms, p95 {p95:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=20)
    ns = parser.parse_args()
    server = os.environ.get("PODFN_DATABASE_URL")
    embedded = None
    if not server:
        from podfn_platform.embedded import EmbeddedPostgres

        workdir = Path(tempfile.mkdtemp(prefix="podfn-bench-ui-"))
        os.chmod(workdir, 0o755)
        embedded = EmbeddedPostgres(workdir / "pgdata", dbname="postgres", delete=True)
        server = embedded.admin_url
    suffix = uuid.uuid4().hex[:8]
    name = f"podfn_bench_{suffix}"
    platform_role, runtime_role = f"podfn_bench_platform_{suffix}", f"podfn_bench_runtime_{suffix}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server, dbname=name)
    try:
        with Database(url, name="podfn-bench") as db:
            migrations.apply(db)
            roles.ensure(db, roles.Roles(platform_role, runtime_role))
            with db.transaction() as tx:
                digest = store_payload(tx, b"f" * 200)
            with psycopg.connect(url, autocommit=True) as conn:
                for statement in SEED.split(";")[:2]:
                    conn.execute(statement, {"n": ns.calls, "digest": digest, "salt": suffix})
                conn.execute("ANALYZE")
            with db.transaction() as tx:
                ids = record_calls(tx, NewCalls("fn0", digest, {}, "3.11", "3.1"),
                                   [b"a"] * 700)
            db.all("claim_queued", {"limit": 500, **UNARMED})
            armed = ids[:500]
            minted = {i: Credentials.mint() for i in armed}
            db.all("arm_attempts", {"ids": armed, "attempts": [1] * len(armed),
                                    "secret_hashes": [minted[i].secret_hash for i in armed],
                                    "token_hashes": [minted[i].token_hash for i in armed]})
            rdb = RuntimeDatabase(make_conninfo(url, user=runtime_role), secret="")
            for call_id in armed:
                rdb.transition("claim", id=call_id, attempt=1, secret=minted[call_id].secret)
            writes = iter(armed)

            def usage_write() -> None:
                call_id = next(writes)
                assert rdb.transition("usage", id=call_id, attempt=1,
                                      secret=minted[call_id].secret, peak_bytes=10**8,
                                      cpu_seconds=1.0, wall_seconds=2.0)["written"]

            print(f"runtime protocol usage write: {timed(usage_write, len(armed))} "
                  f"({len(armed)} attempts, one connection)")
            rdb.close()

            app = create_app(Settings(database_url=url, api_token=TOKEN), db=db)
            client = app.test_client()
            client.post("/ui/signin", data={"token": TOKEN})
            auth = {"Authorization": f"Bearer {TOKEN}"}
            print(f"{ns.calls} finished calls over the last day + 200 queued; "
                  f"{ns.repeat} requests each, Flask test client:")
            for label, path, headers in (
                    ("overview /ui/", "/ui/", {}),
                    ("calls /ui/calls", "/ui/calls", {}),
                    ("calls filtered", "/ui/calls?function=fn3&state=failed&range=24h", {}),
                    ("calls live JSON", "/ui/api/calls", {}),
                    ("function /ui/functions/fn3", "/ui/functions/fn3", {}),
                    ("usage API /v1/functions/fn3/usage", "/v1/functions/fn3/usage", auth),
                    ("usage API last=10000", "/v1/functions/fn3/usage?last=10000", auth)):
                if path.startswith("/ui/functions/"):
                    with db.transaction() as tx:
                        row = tx.one("insert_function_version", {
                            "name": "fn3", "function_digest": digest, "spec": jsonb({"cpu": "1"}),
                            "client_python": "3.11", "client_cloudpickle": "3.1",
                            "deployed_by": "bench"})
                        if row is not None:
                            tx.all("set_live_version", {"name": "fn3", "version": row["version"]})

                def get(path: str = path, headers: dict[str, str] = headers) -> None:
                    response = client.get(path, headers=headers)
                    assert response.status_code == 200, (path, response.status_code)

                print(f"  {label}: {timed(get, ns.repeat)}")
            app.extensions["podfn.waiter"].close()
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for role in (runtime_role, platform_role):
                admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
