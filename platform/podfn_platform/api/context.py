"""What every API view reaches for: the app's database and waiter, and timestamps as JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import current_app

from podfn_platform.api.waiting import FinishWaiter
from podfn_platform.database import Database


def db() -> Database:
    return current_app.extensions["podfn.db"]  # type: ignore[no-any-return]


def waiter() -> FinishWaiter:
    return current_app.extensions["podfn.waiter"]  # type: ignore[no-any-return]


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def public_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec as the API shows it: `env` names only, never values (they may be credentials)."""
    out = {k: v for k, v in spec.items() if k != "env"}
    out["env_names"] = sorted(spec.get("env") or {})
    return out
