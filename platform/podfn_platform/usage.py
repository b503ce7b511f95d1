"""What a function's calls really used, next to its hints, and right-sized hints.

The runtime reports each attempt's peak memory, CPU seconds and wall time
(podfn_runtime/usage.py). Here the last N finished calls of a function are
summarised as median and p95 and compared with its `cpu` and `memory` hints,
so people can ask for what their code needs instead of guessing: too little
memory kills calls, too much CPU or memory keeps pods unschedulable and
wastes the cluster.

The suggestion is deliberately simple and explainable: memory = p95 of peak
memory plus 25% headroom, rounded up to 16Mi (at least the platform's 32Mi);
cpu = p95 of the cores a call kept busy (CPU seconds / wall seconds) plus 20%,
rounded up to 50m (at least 50m). With fewer than MIN_CALLS calls measured no
suggestion is made.
"""

from __future__ import annotations

import math
from typing import Any

from podfn import spec as call_spec
from podfn_platform.database import Database

DEFAULT_LAST = 100
MAX_LAST = 10_000
MIN_CALLS = 3
MEMORY_HEADROOM = 1.25
CPU_HEADROOM = 1.2
MEMORY_STEP = 16 * 2**20
MEMORY_FLOOR = 32 * 2**20
CPU_STEP_MILLI = 50


def suggest_memory(peak_p95: float) -> str:
    wanted = max(peak_p95 * MEMORY_HEADROOM, MEMORY_FLOOR)
    return f"{math.ceil(wanted / MEMORY_STEP) * MEMORY_STEP // 2**20}Mi"


def suggest_cpu(cores_p95: float) -> str:
    milli = max(math.ceil(cores_p95 * CPU_HEADROOM * 1000 / CPU_STEP_MILLI) * CPU_STEP_MILLI,
                CPU_STEP_MILLI)
    return f"{milli // 1000}" if milli % 1000 == 0 else f"{milli}m"


def _hint_amount(field: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(call_spec.parse_quantity(field, value))
    except Exception:  # an old or odd spec: show it, compare nothing
        return None


def function_usage(db: Database, name: str, last: int = DEFAULT_LAST) -> dict[str, Any]:
    """Median and p95 of the last `last` calls of `name`, its hints, and a suggestion."""
    row = db.one("function_usage", {"name": name, "last": last}) or {"calls": 0}
    hints_row = db.one("function_hints", {"name": name})
    spec = (hints_row or {}).get("spec") or {}
    measured = int(row.get("calls") or 0)

    def pair(key: str) -> dict[str, float | None]:
        return {"p50": row.get(f"{key}_p50"), "p95": row.get(f"{key}_p95")}

    out: dict[str, Any] = {
        "function": name, "last": last, "calls": measured,
        "peak_bytes": {**pair("peak_bytes"), "max": row.get("peak_bytes_max")},
        "cpu_seconds": pair("cpu_seconds"), "wall_seconds": pair("wall_seconds"),
        "cores": pair("cores"),
        "hints": {"cpu": spec.get("cpu"), "memory": spec.get("memory")},
        "suggested": None,
    }
    if measured >= MIN_CALLS and row.get("peak_bytes_p95") is not None:
        suggested: dict[str, Any] = {"memory": suggest_memory(float(row["peak_bytes_p95"]))}
        if row.get("cores_p95") is not None:
            suggested["cpu"] = suggest_cpu(float(row["cores_p95"]))
        suggested["why"] = _why(out, suggested)
        out["suggested"] = suggested
    return out


def _why(out: dict[str, Any], suggested: dict[str, Any]) -> str:
    """One sentence on the suggestion, for people (CLI and dashboard)."""
    parts = []
    memory_hint = _hint_amount("memory", out["hints"]["memory"])
    peak = out["peak_bytes"]["p95"]
    if memory_hint is None:
        parts.append(f"no memory hint; p95 peak is {peak / 2**20:.0f}Mi")
    else:
        parts.append(f"memory hint {out['hints']['memory']} vs p95 peak {peak / 2**20:.0f}Mi "
                     f"({100 * peak / memory_hint:.0f}% of it)")
    cpu_hint = _hint_amount("cpu", out["hints"]["cpu"])
    cores = out["cores"]["p95"]
    if cores is not None:
        if cpu_hint is None:
            parts.append(f"no cpu hint; p95 busy cores {cores:.2f}")
        else:
            parts.append(f"cpu hint {out['hints']['cpu']} vs p95 busy cores {cores:.2f}")
    return "; ".join(parts) + (f"; suggested memory={suggested['memory']}"
                               + (f", cpu={suggested['cpu']}" if "cpu" in suggested else ""))


def all_functions_usage(db: Database, last: int = DEFAULT_LAST) -> list[dict[str, Any]]:
    return [function_usage(db, r["name"], last) for r in db.all("called_functions")]
