"""Small durable facts the controller keeps in Postgres (e.g. the watch's resourceVersion)."""

from __future__ import annotations

from podfn_platform.database import Database


class StateStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, key: str) -> str | None:
        row = self._db.one("get_state", {"key": key})
        return None if row is None else str(row["value"])

    def put(self, key: str, value: str) -> None:
        self._db.all("put_state", {"key": key, "value": value})


class MemoryStore:
    """The same interface kept in memory: for benchmarks and tests without a database."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def put(self, key: str, value: str) -> None:
        self.values[key] = value
