"""`podfn dev` and `podfn demo`: the whole platform on one machine.

Embedded Postgres (unless PODFN_DATABASE_URL names one), migrations, the API
under gunicorn and a controller with the local launcher, each in its own
process as in a cluster, plus a client profile so `@remote` finds them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from podfn.errors import ConfigurationError, PlatformUnreachable
from podfn.settings import Settings
from podfn_platform import migrations, roles
from podfn_platform.database import Database
from podfn_platform.embedded import EmbeddedPostgres

log = logging.getLogger("podfn.dev")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class DevStack:
    """Postgres + API + controller; a context manager that leaves nothing running."""

    settings: Settings
    data_dir: Path
    port: int
    temporary: bool = False
    url: str = ""
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    database_url: str = ""
    _postgres: EmbeddedPostgres | None = None
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *, quiet: bool = False) -> DevStack:
        try:
            return self._start(quiet)
        except BaseException:
            self.stop()
            raise

    def _start(self, quiet: bool) -> DevStack:
        host = self.settings.host
        if not port_is_free(host, self.port):
            raise ConfigurationError(f"port {self.port} on {host} is in use; choose another with "
                                     "--port, or stop what is listening there")
        if self.settings.database_url:
            self.database_url = self.settings.database_url
        else:
            self._postgres = EmbeddedPostgres(self.data_dir / "pgdata", delete=self.temporary)
            self.database_url = self._postgres.url
        # Managed roles get fresh passwords each start unless some are configured.
        fresh = self.settings.manage_roles
        self.settings = dataclasses.replace(
            self.settings, database_url=self.database_url,
            platform_role_password=self.settings.platform_role_password
            or (secrets.token_urlsafe(24) if fresh else None),
            runtime_role_password=self.settings.runtime_role_password
            or (secrets.token_urlsafe(24) if fresh else None))
        with Database(self.database_url, name="podfn-migrate") as db:
            migrations.apply(db)
            roles.ensure(db, roles.Roles.from_settings(self.settings))
        if self.settings.launcher == "kubernetes":
            self._publish_database_secret()
        self.url = f"http://{host}:{self.port}"
        # API and controller connect as the platform role, not as the owner that migrated.
        platform_url = roles.as_role(self.database_url, self.settings.platform_role,
                                     self.settings.platform_role_password)
        env = {**os.environ, "PODFN_DATABASE_URL": platform_url,
               "PODFN_RUNTIME_DATABASE_URL": roles.runtime_database_url(self.settings),
               "PODFN_RUNTIME_API_URL": self.settings.runtime_api_url or f"http://{host}:{self.port}",
               "PODFN_API_TOKEN": self.token, "PODFN_HOST": host, "PODFN_PORT": str(self.port),
               "PODFN_LAUNCHER": self.settings.launcher,
               "PODFN_INSECURE_NO_AUTH": "1" if self.settings.insecure_no_auth else "0"}
        out = subprocess.DEVNULL if quiet else None
        for command in ("serve", "controller"):
            self._children.append(subprocess.Popen(
                [sys.executable, "-m", "podfn", command], env=env, stdout=out, stderr=out,
                start_new_session=True))
        self._wait_ready()
        return self

    def _publish_database_secret(self) -> None:
        """Pods read the runtime role's database URL from a Secret; write it with the user's
        own credentials (the platform's URL never goes to the cluster)."""
        from podfn_platform.kube.client import KubeClient

        if self._postgres is not None:
            log.warning("the embedded Postgres listens on a local socket that pods in a real "
                        "cluster cannot reach; set PODFN_DATABASE_URL to a Postgres they can")
        kube = KubeClient(self.settings.namespace, context=self.settings.kube_context,
                          page_size=self.settings.list_page_size)
        try:
            kube.create_secret(self.settings.runtime_database_secret,
                               {"url": roles.runtime_database_url(self.settings)})
        finally:
            kube.close()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in self._children:
                if child.poll() is not None:
                    raise PlatformUnreachable(f"{child.args!r} exited with code "
                                              f"{child.returncode} while starting")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise PlatformUnreachable(f"the API at {self.url} did not become ready in {timeout} s")

    def wait(self) -> int:
        """Block until a child exits (or we are told to stop); its exit code."""
        while True:
            for child in self._children:
                code = child.poll()
                if code is not None:
                    return code
            time.sleep(0.2)

    def stop(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self._children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._children.clear()
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None

    def __enter__(self) -> DevStack:
        return self if self._children else self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
