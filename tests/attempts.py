"""Acting as a controller and a runtime in tests: arm an attempt, then use the runtime protocol.

The runtime's transitions exist only as the runtime protocol's functions, so
a test that plays the runtime does what the runtime does: connect as the
runtime role and present the attempt's secret.
"""

from __future__ import annotations

from typing import Any

from podfn_platform.controller.environment import Credentials
from podfn_platform.database import Database
from podfn_runtime.database import RuntimeDatabase

# claim_queued's other parameters as a test claims: skip no pool, cap no warm pool, and
# leave the attempts unarmed (arm_attempts arms them, as `arm` below does).
UNARMED: dict[str, Any] = {"skip_pools": [], "pools": [], "pool_rooms": [], "pool_workers": None,
                           "secret_hashes": [], "token_hashes": []}


def arm(db: Database, call_id: str, attempt: int) -> Credentials:
    """What the controller does at launch: mint the attempt's secret and token, store their hashes."""
    minted = Credentials.mint()
    db.all("arm_attempts", {"ids": [call_id], "attempts": [attempt],
                            "secret_hashes": [minted.secret_hash],
                            "token_hashes": [minted.token_hash]})
    return minted


class Runtime:
    """The runtime side of one test: the runtime role's URL and the secrets of armed attempts."""

    def __init__(self, db: Database, url: str) -> None:
        self.db = db
        self.url = url
        self.secrets: dict[tuple[str, int], str] = {}

    def arm(self, call_id: str, attempt: int) -> str:
        secret = arm(self.db, call_id, attempt).secret
        self.secrets[(call_id, attempt)] = secret
        return secret

    def call(self, name: str, call_id: str, attempt: int, secret: str | None = None,
             **params: Any) -> dict[str, Any] | None:
        if secret is None:
            secret = self.secrets.get((call_id, attempt)) or self.arm(call_id, attempt)
        rdb = RuntimeDatabase(self.url, secret)
        try:
            return rdb.transition(name, id=call_id, attempt=attempt, **params)
        finally:
            rdb.close()

    def claim(self, call_id: str, attempt: int) -> dict[str, Any] | None:
        return self.call("claim", call_id, attempt)

    def succeed(self, call_id: str, attempt: int, result: bytes = b"r", stdout: str = "",
                result_json: str | None = None) -> dict[str, Any] | None:
        return self.call("succeed", call_id, attempt, result=result, result_json=result_json,
                         stdout=stdout, stderr="")

    def fail(self, call_id: str, attempt: int, retryable: bool = True) -> dict[str, Any] | None:
        return self.call("fail", call_id, attempt, retryable=retryable, reason="boom",
                         error_type="E", error_message="m", error_traceback="tb",
                         error_pickle=None, stdout="", stderr="")
