"""Every `PODFN_*` setting, read in one place into one typed object.

Client, API, controller and CLI all take a `Settings`; nothing else reads the
environment. A malformed value fails at once with the variable's name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import platformdirs

from podfn.errors import ConfigurationError

LAUNCHERS = ("local", "kubernetes")


def default_profile_path() -> Path:
    return Path(platformdirs.user_config_dir("podfn")) / "profile.json"


def default_secrets_dir() -> Path:
    return Path(platformdirs.user_config_dir("podfn")) / "secrets"


@dataclass(frozen=True)
class Settings:
    # Where the client finds the platform (else the profile `podfn dev` writes).
    url: str | None = None
    token: str | None = None
    profile: Path = field(default_factory=default_profile_path)
    # The platform's database.
    database_url: str | None = None
    # Database roles (docs/security.md): `podfn migrate` creates them unless manage_roles is off.
    platform_role: str = "podfn_platform"
    runtime_role: str = "podfn_runtime"
    platform_role_password: str | None = None
    runtime_role_password: str | None = None
    manage_roles: bool = True
    # What runtimes connect with (the runtime role); default: database_url as the runtime role.
    runtime_database_url: str | None = None
    # How code inside a call reaches the API for nested calls (PODFN_URL in the attempt).
    runtime_api_url: str | None = None
    # API server.
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    threads: int = 16
    api_token: str | None = None  # an admin token outside the database (bootstrap)
    insecure_no_auth: bool = False  # no tokens at all; refused unless bound to loopback
    max_request_bytes: int = 64 * 1024 * 1024
    max_wait_seconds: float = 60.0
    access_log: bool = True  # one JSON line per request on stdout (`podfn dev`: only --verbose)
    max_result_bytes: int = 64 * 1024 * 1024  # a larger result fails its call (runtime checks)
    longpoll_threads: int = 64  # threads per API worker that hold long-polls (worker.py)
    header_timeout_seconds: float = 10.0  # a client that has not sent its headers is dropped
    # Controller.
    launcher: str = "local"
    namespace: str = "podfn"
    max_concurrency: int = 32
    # Warm workers the controller starts for one pool; None: the launcher's own
    # default (local: two per core, where more only compete for the cores;
    # Kubernetes: max_concurrency). docs/warm-workers.md says why.
    warm_pool_workers: int | None = None
    sweep_seconds: float = 5.0
    max_disruptions: int = 3
    # How long a runtime retries an unreachable database before it exits 75 (a disruption).
    runtime_write_retry_seconds: float = 60.0
    # Kubernetes launcher (KUBECONFIG is read as kubectl reads it).
    kube_context: str | None = None
    runtime_image: str = "ghcr.io/podfn/runtime"  # tagged py<major.minor>
    # Secret with key `url`: the runtime role's database URL for pods (never the platform's).
    runtime_database_secret: str = "podfn-runtime-database"
    pod_create_concurrency: int = 8
    # client-go style: a token bucket of `pod_create_burst` creates refilled at
    # `pod_create_qps` a second (docs/kubernetes.md says why these numbers).
    pod_create_qps: float = 100.0
    pod_create_burst: int = 200
    pending_timeout_seconds: float = 300.0
    image_pull_timeout_seconds: float = 300.0  # a pull failing (429...) this long fails the call
    list_page_size: int = 500  # pods per page of a list (limit/continue)
    quota_retry_seconds: float = 15.0  # a call refused by ResourceQuota is queued again after
    launch_grace_seconds: float = 60.0
    keep_failed_pods_seconds: float = 3600.0
    reconcile_seconds: float = 60.0
    watch_timeout_seconds: int = 60
    controller_metrics_port: int = 9090  # Prometheus metrics of the controller; 0 turns them off
    controller_metrics_host: str = "127.0.0.1"  # loopback unless an operator opens it
    # Local launcher: fork attempts from a process with the runtime's imports done (Linux).
    local_forkserver: bool = True
    # Local launcher: `secrets=["name"]` reads <dir>/<name>/<KEY> files (docs/security.md).
    local_secrets_dir: Path = field(default_factory=default_secrets_dir)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigurationError(
                f"PODFN_LAUNCHER={self.launcher!r} is not a launcher; use one of "
                + ", ".join(LAUNCHERS)
            )
        for name in ("port", "workers", "threads", "max_request_bytes", "max_result_bytes",
                     "longpoll_threads", "header_timeout_seconds", "max_concurrency",
                     "pod_create_concurrency", "pod_create_qps", "pod_create_burst",
                     "watch_timeout_seconds",
                     "list_page_size"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"PODFN_{name.upper()} must be positive")
        if self.warm_pool_workers is not None and self.warm_pool_workers <= 0:
            raise ConfigurationError("PODFN_WARM_POOL_WORKERS must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read `PODFN_<FIELD>` for each field; `overrides` (e.g. CLI flags) win."""
        env = os.environ if environ is None else environ
        hints = _type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = f"PODFN_{f.name.upper()}"
            if var in env and env[var] != "":
                values[f.name] = _convert(var, env[var], hints[f.name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def current(cls) -> Settings:
        """`from_env()` of this process's environment, read again only when a variable it
        depends on has changed: the client asks for the settings at every call it makes
        (`podfn.call.default_client`), and reading ~50 variables each time was a tenth
        of a trivial call's client CPU (issue 12)."""
        key = tuple(item for item in os.environ.items()
                    if item[0].startswith("PODFN_") or item[0] in _PROFILE_VARIABLES)
        cached = _current.get(cls)
        if cached is not None and cached[0] == key:
            return cached[1]  # type: ignore[no-any-return]
        settings = cls.from_env()
        _current[cls] = (key, settings)
        return settings

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigurationError(
                "PODFN_DATABASE_URL is not set: point it at Postgres "
                "(e.g. postgresql://user@host:5432/podfn), or run `podfn dev` for an embedded one"
            )
        return self.database_url

    def platform(self) -> tuple[str, str | None]:
        """The API's URL and token: PODFN_URL/PODFN_TOKEN, else the dev profile."""
        if self.url:
            return self.url.rstrip("/"), self.token
        try:
            data = json.loads(self.profile.read_text())
        except FileNotFoundError:
            raise ConfigurationError(
                "no podfn platform configured: set PODFN_URL (and PODFN_TOKEN), "
                "or start one on this machine with `podfn dev`"
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read the podfn profile {self.profile}: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            raise ConfigurationError(f"the podfn profile {self.profile} has no 'url'; "
                                     "run `podfn dev` again to rewrite it")
        return data["url"].rstrip("/"), self.token or data.get("token")


_hints: dict[type, dict[str, Any]] = {}
# What `Settings.current` was read from, and what it read; the profile's default path
# comes from these variables besides PODFN_* (platformdirs).
_current: dict[type, tuple[tuple[tuple[str, str], ...], Any]] = {}
_PROFILE_VARIABLES = frozenset({"HOME", "XDG_CONFIG_HOME"})


def _type_hints(cls: type) -> dict[str, Any]:
    """The fields' types, resolved once: `get_type_hints` evaluates every annotation
    string again (~1 ms), and `from_env` runs for each call a client makes."""
    hints = _hints.get(cls)
    if hints is None:
        hints = _hints[cls] = get_type_hints(cls)
    return hints


def _convert(var: str, raw: str, kind: Any) -> Any:
    text = raw.strip()
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(f"{var}={raw!r} is not a boolean (use 1 or 0)")
    try:
        if kind in (int, int | None):
            return int(text)
        if kind in (float, float | None):
            return float(text)
        if kind is Path:
            return Path(text).expanduser()
    except ValueError:
        raise ConfigurationError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
    return text


def write_profile(path: Path, url: str, token: str | None) -> None:
    """Write the client profile (readable by its owner only: it holds a token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh)
    tmp.replace(path)
