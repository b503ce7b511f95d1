"""Shared fixtures: a real Postgres, a fresh database per test, a running platform.

Postgres comes from PODFN_TEST_DATABASE_URL when set, else from an embedded
server started for the session. Each test gets its own database cloned from a
migrated template, so no test sees another's rows or an earlier run's. The
clones are made one ahead and dropped behind on a thread of their own
(`Databases`): CREATE and DROP DATABASE wait on the disk and on backends, not
on the test, so they overlap the tests instead of adding to them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient
from psycopg.conninfo import make_conninfo
from werkzeug.serving import BaseWSGIServer, make_server

from podfn.call import close_default_clients
from podfn.settings import Settings
from podfn_platform import migrations, roles
from podfn_platform.api.app import create_app
from podfn_platform.controller.launcher import Launcher
from podfn_platform.controller.local import LocalLauncher
from podfn_platform.controller.loop import Controller
from podfn_platform.database import Database
from podfn_platform.roles import Roles


@pytest.fixture(autouse=True)
def _fresh_api_clients() -> Iterator[None]:
    """Each test's PODFN_URL is its own server: drop pooled connections to the last one."""
    yield
    close_default_clients()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = os.environ.get("PODFN_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from podfn_platform.embedded import EmbeddedPostgres

    workdir = Path(tempfile.mkdtemp(prefix="podfn-test-pg-"))
    os.chmod(workdir, 0o755)
    server = EmbeddedPostgres(workdir / "pgdata", dbname="postgres", delete=True)
    try:
        yield server.admin_url
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="session")
def db_roles(postgres_url: str) -> Iterator[Roles]:
    """Platform and runtime roles of this test session's own (roles are cluster-wide).

    Their names go to PODFN_PLATFORM_ROLE / PODFN_RUNTIME_ROLE for every process
    the tests start, and they are dropped at the end, so concurrent or earlier
    runs on the same Postgres never share one.
    """
    suffix = uuid.uuid4().hex[:10]
    found = Roles(f"podfn_platform_{suffix}", f"podfn_runtime_{suffix}")
    saved = {k: os.environ.get(k) for k in ("PODFN_PLATFORM_ROLE", "PODFN_RUNTIME_ROLE")}
    os.environ["PODFN_PLATFORM_ROLE"] = found.platform
    os.environ["PODFN_RUNTIME_ROLE"] = found.runtime
    try:
        yield found
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        with _admin(postgres_url) as conn:
            for role in (found.runtime, found.platform):
                try:
                    conn.execute(f'DROP ROLE IF EXISTS "{role}"')
                except psycopg.Error as exc:  # still granted in a database a test left behind
                    print(f"could not drop role {role}: {exc}")


@pytest.fixture(scope="session")
def template_db(postgres_url: str, db_roles: Roles) -> Iterator[str]:
    name = f"podfn_template_{uuid.uuid4().hex[:12]}"
    with _admin(postgres_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with Database(make_conninfo(postgres_url, dbname=name), name="podfn-template") as db:
        migrations.apply(db)
        roles.ensure(db, db_roles)
    yield name
    with _admin(postgres_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _create_database(postgres_url: str, template: str | None = None) -> str:
    name = f"podfn_test_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with _admin(postgres_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    return name


def _drop_database(postgres_url: str, name: str) -> None:
    with _admin(postgres_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Databases:
    """Copies of the template for one test each: the next one made while a test runs,
    the last one dropped while the next test runs (one thread, in that order)."""

    def __init__(self, postgres_url: str, template: str) -> None:
        self._url, self._template = postgres_url, template
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="podfn-test-dbs")
        self._next = self._thread.submit(_create_database, postgres_url, template)
        self._drops: list[concurrent.futures.Future[None]] = []

    def take(self) -> str:
        name = self._next.result()
        self._next = self._thread.submit(_create_database, self._url, self._template)
        return name

    def give_back(self, name: str) -> None:
        self._drops.append(self._thread.submit(_drop_database, self._url, name))
        done = [d for d in self._drops if d.done()]
        for drop in done:
            drop.result()  # a drop that failed fails the test that gives the next one back
            self._drops.remove(drop)

    def close(self) -> None:
        """Drop the spare copy and wait for every drop (the roles go after the databases)."""
        self._drops.append(self._thread.submit(lambda: _drop_database(self._url,
                                                                      self._next.result())))
        self._thread.shutdown(wait=True)
        for drop in self._drops:
            drop.result()


@pytest.fixture(scope="session")
def databases(postgres_url: str, template_db: str) -> Iterator[Databases]:
    found = Databases(postgres_url, template_db)
    yield found
    found.close()


@contextmanager
def scratch_database(postgres_url: str, template: str | None = None) -> Iterator[str]:
    """A database of one test's own (a copy of `template`, if given), dropped after it."""
    name = _create_database(postgres_url, template)
    try:
        yield make_conninfo(postgres_url, dbname=name)
    finally:
        _drop_database(postgres_url, name)


@pytest.fixture
def empty_database_url(postgres_url: str, db_roles: Roles) -> Iterator[str]:
    """A brand-new database with no tables."""
    with scratch_database(postgres_url) as url:
        yield url


@pytest.fixture
def database_url(postgres_url: str, databases: Databases) -> Iterator[str]:
    """A migrated database of this test's own."""
    name = databases.take()
    try:
        yield make_conninfo(postgres_url, dbname=name)
    finally:
        databases.give_back(name)


@pytest.fixture
def runtime_database_url(database_url: str, db_roles: Roles) -> str:
    """This test's database as the runtime role: what code inside a call connects with."""
    return make_conninfo(database_url, user=db_roles.runtime)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    with Database(database_url, name="podfn-test") as database:
        yield database


@dataclass(frozen=True)
class Refuser:
    client: FlaskClient
    db: Database


@pytest.fixture(scope="module")
def refuser(postgres_url: str, databases: Databases) -> Iterator[Refuser]:
    """One API app (Flask's test client) on one database for a module's requests that
    must be refused: none of them may store anything, so they can share it, and each
    still checks that nothing was stored."""
    name = databases.take()
    url = make_conninfo(postgres_url, dbname=name)
    try:
        with Database(url, name="podfn-test") as db:
            app = create_app(platform_settings(url), db=db)
            yield Refuser(app.test_client(), db)
            app.extensions["podfn.waiter"].close()
    finally:
        databases.give_back(name)


class ThreadedServer:
    """The API app served on a loopback port from a thread (tests only)."""

    def __init__(self, app: object) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # Polled for shutdown every 50 ms (the default 0.5 s is paid at every teardown).
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class Platform:
    url: str
    token: str
    settings: Settings
    db: Database
    controller: Controller


TEST_TOKEN = "test-token"


def platform_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, Any] = {"database_url": database_url, "api_token": TEST_TOKEN,
                              "sweep_seconds": 1.0, "max_wait_seconds": 30.0, **overrides}
    return Settings(**values)


@contextmanager
def running_platform(settings: Settings, db: Database, launcher: Launcher, wake: threading.Event,
                     monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """API (in a thread) + controller (in a thread) over `db`, found through PODFN_URL/TOKEN."""
    app = create_app(settings, db=db)
    stop = threading.Event()
    with ThreadedServer(app) as server:
        if settings.runtime_api_url is None:  # nested calls reach this test's API
            settings = dataclasses.replace(settings, runtime_api_url=server.url)
        controller = Controller(settings, db, launcher, wake)
        thread = threading.Thread(target=controller.run, args=(stop,), daemon=True)
        monkeypatch.setenv("PODFN_URL", server.url)
        monkeypatch.setenv("PODFN_TOKEN", TEST_TOKEN)
        thread.start()
        try:
            assert controller.is_active.wait(10), "the controller did not become active"
            yield Platform(server.url, TEST_TOKEN, settings, db, controller)
        finally:
            stop.set()
            wake.set()
            thread.join(15)
            app.extensions["podfn.waiter"].close()
    assert not thread.is_alive(), "the controller did not stop"



def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """`predicate()`'s first truthy value, polled every 50 ms; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(0.05)


@pytest.fixture
def api_only(database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The API alone (in a thread), for tests that run controllers as processes."""
    app = create_app(platform_settings(database_url), db=db)
    with ThreadedServer(app) as server:
        monkeypatch.setenv("PODFN_URL", server.url)
        monkeypatch.setenv("PODFN_TOKEN", TEST_TOKEN)
        yield server.url
    app.extensions["podfn.waiter"].close()


@contextmanager
def local_platform(database_url: str, runtime_database_url: str, db: Database,
                   monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Iterator[Platform]:
    """API + controller with the local launcher on this test's database; `overrides`
    are settings (e.g. max_concurrency=2)."""
    wake = threading.Event()
    launcher = LocalLauncher(runtime_database_url, on_exit=wake.set)
    with running_platform(platform_settings(database_url, **overrides), db, launcher, wake,
                          monkeypatch) as running:
        yield running


@pytest.fixture
def platform(database_url: str, runtime_database_url: str, db: Database,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """The embedded default: API + controller with the local launcher, on this test's database."""
    with local_platform(database_url, runtime_database_url, db, monkeypatch) as running:
        yield running


@contextmanager
def explaining(database_url: str, *, analyze: bool = False) -> Iterator[
        tuple[psycopg.Connection[dict[str, Any]], list[str]]]:
    """A connection whose every plan, nested statements' included, auto_explain adds
    to the list (as notices of that session); the test is skipped on a Postgres
    without auto_explain."""
    from psycopg.rows import dict_row

    plans: list[str] = []
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        try:
            conn.execute("LOAD 'auto_explain'")
        except psycopg.Error:
            pytest.skip("this Postgres has no auto_explain")
        for name, value in {"log_min_duration": "0", "log_nested_statements": "on",
                            "log_analyze": "on" if analyze else "off",
                            "log_level": "notice"}.items():
            conn.execute(f"SET auto_explain.{name} = '{value}'")
        conn.execute("SET client_min_messages = notice")
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        yield conn, plans
