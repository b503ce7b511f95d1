"""`podfn serve`: the API under gunicorn (threaded workers, for long-polls)."""

from __future__ import annotations

import json
from typing import Any

from gunicorn.app.base import BaseApplication

from podfn.settings import Settings

ACCESS_LOG_FORMAT = json.dumps({
    "remote": "%(h)s", "method": "%(m)s", "path": "%(U)s", "query": "%(q)s",
    "status": "%(s)s", "bytes": "%(B)s", "duration_us": "%(D)s",
})


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from podfn_platform.api.app import create_app

        return create_app(self._settings)


def options(settings: Settings) -> dict[str, Any]:
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "threads": settings.threads,
        "worker_class": "gthread",
        # Long-polls hold a request for up to max_wait_seconds.
        "timeout": int(settings.max_wait_seconds) + 30,
        "graceful_timeout": 30,
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "loglevel": settings.log_level.lower(),
    }


def serve(settings: Settings) -> None:
    settings.require_database_url()
    _Gunicorn(settings, options(settings)).run()
