"""`podfn serve`: the API under gunicorn, configured by `podfn_platform.gunicorn_conf`."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from podfn.settings import Settings
from podfn_platform.gunicorn_conf import ACCESS_LOG_FORMAT, options

__all__ = ["ACCESS_LOG_FORMAT", "options", "serve"]


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


def serve(settings: Settings) -> None:
    settings.require_database_url()
    _Gunicorn(settings, options(settings)).run()
