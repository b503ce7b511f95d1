"""claim_queued's parameters as a benchmark that plays the controller claims.

Skip no pool, cap no warm pool, and leave the attempts unarmed: the benchmark
arms them with arm_attempts when it plays the runtime too.
"""

from __future__ import annotations

from typing import Any

UNARMED: dict[str, Any] = {"skip_pools": [], "pools": [], "pool_rooms": [], "pool_workers": None,
                           "secret_hashes": [], "token_hashes": []}
