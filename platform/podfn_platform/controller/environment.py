"""What an attempt's process or pod may see: an allow-list, never the controller's environment.

The controller's environment holds the platform's database URL and often an
operator's API token; code inside a call must see neither. So the runtime's
environment is built here from nothing:

- `PODFN_CALL_ID`, `PODFN_ATTEMPT` and `PODFN_ATTEMPT_SECRET`: which attempt
  to run, and the secret the runtime protocol demands (minted per attempt,
  stored only as a hash, dead once the attempt ends);
- a standing worker (no call yet) gets `PODFN_WORKER` and `PODFN_WORKER_SECRET`
  instead of the three above (`standing_environment`);
- a warm or standing worker gets `PODFN_POOL`, the pool whose new calls wake it
  (`pool_variable`);
- `PODFN_URL` and `PODFN_TOKEN`: the API and a `pfn_call_...` token acting for
  whoever submitted the call, with at most `submit`, `invoke` and `read` of
  that identity's scopes, valid while the attempt runs (nested calls);
- the user's own `env` (it cannot replace the names above);
- `PODFN_RUNTIME_DATABASE_URL` (the runtime role's credentials) is added by
  each launcher: the local launcher sets it, a pod reads it from the runtime
  database Secret.

The local launcher also passes a few variables a process needs to start at
all (`base_environment`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CALL_TOKEN_PREFIX = "pfn_call_"
RESERVED = frozenset({"PODFN_CALL_ID", "PODFN_ATTEMPT", "PODFN_WARM", "PODFN_POOL",
                      "PODFN_ATTEMPT_SECRET",
                      "PODFN_WORKER", "PODFN_WORKER_SECRET", "PODFN_URL",
                      "PODFN_TOKEN", "PODFN_RUNTIME_DATABASE_URL", "PYTHONUNBUFFERED"})
# What a local process needs to start and behave like the user's shell, and no more.
_BASE = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
         "SYSTEMROOT", "LD_LIBRARY_PATH")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Credentials:
    """An attempt's secret (runtime protocol) and API token (nested calls); hashes go to Postgres."""

    secret: str
    api_token: str

    @classmethod
    def mint(cls) -> Credentials:
        return cls(secrets.token_urlsafe(32), CALL_TOKEN_PREFIX + secrets.token_urlsafe(32))

    @property
    def secret_hash(self) -> str:
        return sha256_hex(self.secret)

    @property
    def token_hash(self) -> str:
        return sha256_hex(self.api_token)


def runtime_environment(*, call_id: str, attempt: int, credentials: Credentials,
                        api_url: str | None, spec: Mapping[str, Any]) -> dict[str, str]:
    """The attempt's environment, except the runtime database URL (each launcher adds that)."""
    user = {k: str(v) for k, v in (spec.get("env") or {}).items() if k not in RESERVED}
    env = {**user, "PODFN_CALL_ID": call_id, "PODFN_ATTEMPT": str(attempt),
           "PODFN_ATTEMPT_SECRET": credentials.secret, "PYTHONUNBUFFERED": "1"}
    if api_url:
        env["PODFN_URL"] = api_url
        env["PODFN_TOKEN"] = credentials.api_token
    return env


def standing_environment(*, worker: str, credentials: Credentials,
                         spec: Mapping[str, Any]) -> dict[str, str]:
    """A standing worker's environment (docs/warm-workers.md), except the runtime database
    URL: its name and secret (podfn_runtime_v1.next_standing), no call, no API token."""
    user = {k: str(v) for k, v in (spec.get("env") or {}).items() if k not in RESERVED}
    return {**user, "PODFN_WORKER": worker, "PODFN_WORKER_SECRET": credentials.secret,
            "PODFN_WARM": "1", "PYTHONUNBUFFERED": "1"}


def pool_variable(pool: str | None) -> dict[str, str]:
    """`PODFN_POOL` for a warm or standing worker: the pool whose new calls it waits for.
    An idle worker wakes for a NOTIFY on podfn_queued; one that names another pool's new
    call ('fresh:<pool>', submit_one) no longer wakes it (podfn_runtime/worker.py, Waker).
    Not a secret: a pool's name is a hash of what its calls share."""
    return {"PODFN_POOL": pool} if pool else {}


def local_secrets(directory: Path, names: list[str]) -> dict[str, str]:
    """`secrets=` on the local launcher: `<directory>/<name>/<KEY>` files, one per variable.

    The local equivalent of a Kubernetes Secret mounted as files (the layout
    `kubectl create secret generic NAME --from-file=DIR` reads). LookupError
    naming the missing one.
    """
    env: dict[str, str] = {}
    for name in names:
        folder = directory / name
        if not folder.is_dir():
            raise LookupError(f"secret {name!r} not found: the local launcher reads secrets from "
                              f"{folder}/ (one file per variable, named after it); create it or "
                              "set PODFN_LOCAL_SECRETS_DIR")
        for item in sorted(folder.iterdir()):
            if item.is_file() and not item.name.startswith("."):
                env[item.name] = item.read_text(encoding="utf-8").rstrip("\n")
    return env


def base_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The few variables of this process a local attempt inherits (PATH, HOME, locale)."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k in _BASE or k.startswith("LC_")}
