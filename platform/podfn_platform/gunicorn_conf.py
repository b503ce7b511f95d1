"""gunicorn settings for the API, from `PODFN_*` settings.

`podfn serve` applies `options(settings)`. The module is also a gunicorn
config module on its own, for running the API under a stock gunicorn:

    gunicorn -c python:podfn_platform.gunicorn_conf 'podfn_platform.api.app:create_app()'

- workers and threads: `PODFN_WORKERS`, `PODFN_THREADS` request threads
  each, in podfn's own worker class (`podfn_platform.worker`): request
  heads are read without a thread and dropped after
  `PODFN_HEADER_TIMEOUT_SECONDS`, and long-polls run on
  `PODFN_LONGPOLL_THREADS` threads of their own (docs/deploy.md says why).
- graceful shutdown: on SIGTERM the master stops accepting, lets requests in
  flight finish for up to `GRACEFUL_TIMEOUT` seconds, then exits; the chart's
  terminationGracePeriodSeconds is longer than that.
- access log: one JSON object per request on stdout (PODFN_ACCESS_LOG=0: none).
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn.glogging import Logger, SafeAtoms

from podfn.settings import Settings
from podfn_platform import worker

ACCESS_LOG_FORMAT = json.dumps({
    "remote": "%(h)s", "method": "%(m)s", "path": "%(U)s", "query": "%(q)s",
    "status": "%(s)s", "bytes": "%(B)s", "duration_us": "%(D)s",
})
GRACEFUL_TIMEOUT = 30


class JsonAtoms(SafeAtoms):  # type: ignore[misc]
    """Log atoms escaped for a JSON string (gunicorn escapes only `"`, not `\\` or controls)."""

    def __init__(self, atoms: dict[str, Any]) -> None:
        dict.__init__(self)
        for key, value in atoms.items():
            self[key] = json.dumps(value)[1:-1] if isinstance(value, str) else value


class JsonAccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger whose access lines stay valid JSON whatever the request held."""

    atoms_wrapper_class = JsonAtoms


def options(settings: Settings) -> dict[str, Any]:
    """gunicorn's settings; also tunes podfn's worker class (read in the master, before fork)."""
    worker.configure(settings.longpoll_threads, settings.header_timeout_seconds)
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "threads": settings.threads,
        "worker_class": "podfn_platform.worker.PodfnWorker",
        # Long-polls hold a request for up to max_wait_seconds.
        "timeout": int(settings.max_wait_seconds) + 30,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "keepalive": 5,
        "accesslog": "-" if settings.access_log else None,
        "access_log_format": ACCESS_LOG_FORMAT,
        "logger_class": "podfn_platform.gunicorn_conf.JsonAccessLogger",
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "proc_name": "podfn-api",
    }


# Module-level names are what gunicorn reads from a config module (a malformed
# PODFN_* variable fails here with its name, as everywhere else).
globals().update(options(Settings.from_env()))
