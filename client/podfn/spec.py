"""A call's spec: the hints given to `@remote`, checked once, the same way everywhere.

The client checks hints when they are given (so a typo fails at the decorator,
not in a pod), and the API checks every submitted spec again with this same
code: it is the contract between them. Quantities follow the Kubernetes
resource quantity grammar, so what passes here is what a pod accepts.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from podfn.errors import InvalidSpec

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$")
_SUFFIX: dict[str, Decimal | int] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SECRET_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# The spellings of a CPU or memory quantity podfn takes, all within LIMITS (1m to 1024 cores,
# 32Mi to 1Ti). The API publishes them as patterns of its schema; other Kubernetes spellings
# ('65536Ki', '1e3', '0.5Ti') are refused by the client too, when the hint is given.
_DECIMALS = r"(\.[0-9]{1,3})?"
CPU_FORMS = (r"^([1-9][0-9]{0,5}m|10[01][0-9]{4}m|102[0-3][0-9]{3}m|1024000m"
             r"|0\.(00[1-9]|0[1-9][0-9]?|[1-9][0-9]{0,2})"
             rf"|[1-9][0-9]{{0,2}}{_DECIMALS}|10[01][0-9]{_DECIMALS}|102[0-3]{_DECIMALS}|1024)$")
MEMORY_FORMS = (r"^((3[2-9]|[4-9][0-9]|[1-9][0-9]{2,5})Mi|(3[4-9]|[4-9][0-9]|[1-9][0-9]{2,5})M"
                r"|(0\.(0[4-9]|[1-9])[0-9]?|[1-9][0-9]{0,2}" + _DECIMALS + r"|10[01][0-9]|102[0-4])Gi"
                r"|(0\.(0[4-9]|[1-9])[0-9]?|[1-9][0-9]{0,2}" + _DECIMALS + r"|10[0-9][0-9])G|1Ti)$")

# Hints and their defaults. Anything else is rejected by name.
DEFAULTS: dict[str, Any] = {
    "cpu": None,               # Kubernetes CPU quantity: "250m", "2"
    "cpu_limit": False,        # also set the CPU limit (throttles; off by default)
    "memory": None,            # Kubernetes memory quantity: "256Mi"; request and limit
    "gpu": 0,                  # count of GPUs
    "gpu_vendor": "nvidia.com",
    "image": None,             # default: the runtime image for the client's Python
    "env": {},                 # plain variables (names shown by the API, values never)
    "secrets": [],             # names of Secrets whose keys become environment variables
    "timeout": None,           # seconds per attempt
    "retries": 0,              # re-runs after the function's own failure
    "retry_backoff": 1.0,      # seconds before the first retry, doubling after
    "node_selector": {},
    "tolerations": [],
    "labels": {},
    "annotations": {},
    "service_account": None,
    "pod_patch": None,
    # Warm workers (docs/warm-workers.md): how many calls one worker may run one
    # after another (1: a fresh process or pod per call; None: no limit), how
    # long an idle one waits for its next call, and how many a deployed
    # function keeps (accepted and stored; the controller does not act on it yet).
    "max_calls_per_worker": 1,
    "idle_timeout": 60.0,
    "min_workers": 0,
    # In a warm worker, each call in a process forked from the warmed worker:
    # imports and the loaded function are kept, what a call changes in memory is not.
    "fork_per_call": False,
}

# Hints whose None is a value of its own rather than "the default".
_NONE_MEANS_NO_LIMIT = ("max_calls_per_worker",)

# The bounds every hint must fall in: one rule set, applied by the client when
# a hint is given and by the API to every submitted spec. They keep a call's
# numbers where Postgres, the forkserver and Kubernetes can hold them (a
# `retries` of 3e9 overflowed the retry counter; `memory=512` means 512 bytes,
# too little for Python to start).
LIMITS: dict[str, tuple[Decimal, Decimal, str]] = {
    # hint: (minimum, maximum, how to say the range to people)
    "retries": (Decimal(0), Decimal(100), "0 to 100"),
    "retry_backoff": (Decimal(0), Decimal(3600), "0 to 3600 seconds"),
    "timeout": (Decimal("0.001"), Decimal(7 * 24 * 3600), "0.001 to 604800 seconds (7 days)"),
    "memory": (Decimal(32 * 2**20), Decimal(2**40), "32Mi to 1Ti"),
    "cpu": (Decimal("0.001"), Decimal(1024), "1m to 1024 cores"),
    "gpu": (Decimal(0), Decimal(64), "0 to 64"),
    "max_calls_per_worker": (Decimal(1), Decimal(10**9), "1 to 1000000000, or None for no limit"),
    "idle_timeout": (Decimal("0.1"), Decimal(24 * 3600), "0.1 to 86400 seconds"),
    "min_workers": (Decimal(0), Decimal(1000), "0 to 1000"),
}


def parse_quantity(field: str, value: object) -> Decimal:
    """A Kubernetes quantity as a number (bytes for memory, cores for CPU)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidSpec(field, f"{value!r} is not a quantity; use a string such as '500m' or '1Gi'")
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise InvalidSpec(
            field,
            f"{value!r} is not a Kubernetes quantity; write a number with an optional suffix, "
            "e.g. '2', '500m' (CPU) or '256Mi', '1Gi' (memory)",
        )
    number, exponent, suffix = match.groups()
    try:
        amount = Decimal(number) * (Decimal(10) ** int(exponent[1:]) if exponent else 1)
    except InvalidOperation:
        raise InvalidSpec(field, f"{value!r} is not a number") from None
    amount *= Decimal(_SUFFIX[suffix or ""])
    if amount <= 0:
        raise InvalidSpec(field, f"{value!r} must be greater than zero")
    return amount


def _bounded(field: str, value: object, amount: Decimal | float) -> None:
    low, high, text = LIMITS[field]
    if not low <= Decimal(amount) <= high:
        raise InvalidSpec(field, f"{value!r} is out of range; podfn accepts {text}")


def _spelled(field: str, text: str, forms: str, how: str) -> str:
    """`text` if it is a spelling the API takes: a quantity in range but spelled
    otherwise ('65536Ki', '1e3') is refused here, not only at submit."""
    if re.fullmatch(forms, text) is None:
        raise InvalidSpec(field, f"{text!r} is in range but not spelled as podfn takes it; write {how}")
    return text


def memory_bytes(value: str) -> int:
    return math.ceil(parse_quantity("memory", value))


def _string_map(field: str, value: object, *, keys: re.Pattern[str]) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidSpec(field, f"must be a mapping of strings, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not keys.match(key):
            raise InvalidSpec(field, f"{key!r} is not a valid name")
        if not isinstance(item, str):
            raise InvalidSpec(field, f"the value of {key!r} must be a string, not {type(item).__name__}")
    return dict(value)


def _number(field: str, value: object, *, integer: bool, minimum: float, allow_zero: bool) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InvalidSpec(field, f"must be {'a whole number' if integer else 'a number'}, "
                                 f"not {value!r}")
    if not math.isfinite(value) or value < minimum or (value == 0 and not allow_zero):
        raise InvalidSpec(field, f"{value!r} is out of range")
    if field in LIMITS:
        _bounded(field, value, value)
    return value


def validate(spec: dict[str, Any]) -> dict[str, Any]:
    """The full spec (defaults filled in), or InvalidSpec naming the bad field."""
    if not isinstance(spec, dict):
        raise InvalidSpec("spec", "must be a JSON object")
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise InvalidSpec(unknown[0], f"is not a hint podfn knows; known hints: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **{k: v for k, v in spec.items() if v is not None}}
    for key in _NONE_MEANS_NO_LIMIT:
        if key in spec and spec[key] is None:
            out[key] = None
    for key in ("env", "secrets", "node_selector", "labels", "annotations", "tolerations"):
        if key not in spec or spec[key] is None:
            out[key] = type(DEFAULTS[key])()
    if out["cpu"] is not None:
        _bounded("cpu", out["cpu"], parse_quantity("cpu", out["cpu"]))
        out["cpu"] = _spelled("cpu", str(out["cpu"]), CPU_FORMS, "millicores ('250m') or cores "
                              "with up to 3 decimals ('2', '0.5')")
    if out["memory"] is not None:
        memory = parse_quantity("memory", out["memory"])
        if memory < LIMITS["memory"][0]:
            raise InvalidSpec("memory", f"{out['memory']!r} is {memory} bytes, too little to run "
                              "Python; write a unit, e.g. '512Mi' (podfn accepts "
                              f"{LIMITS['memory'][2]})")
        _bounded("memory", out["memory"], memory)
        out["memory"] = _spelled("memory", str(out["memory"]), MEMORY_FORMS, "a whole number "
                                 "of Mi or M, or Gi or G with up to 3 decimals ('512Mi', '1.5Gi')")
    out["gpu"] = _number("gpu", out["gpu"], integer=True, minimum=0, allow_zero=True)
    if out["timeout"] is not None:
        out["timeout"] = _number("timeout", out["timeout"], integer=False, minimum=0,
                                 allow_zero=False)
    out["retries"] = _number("retries", out["retries"], integer=True, minimum=0, allow_zero=True)
    out["retry_backoff"] = _number("retry_backoff", out["retry_backoff"], integer=False,
                                   minimum=0, allow_zero=True)
    if out["max_calls_per_worker"] is not None:
        out["max_calls_per_worker"] = _number("max_calls_per_worker", out["max_calls_per_worker"],
                                              integer=True, minimum=1, allow_zero=False)
    out["idle_timeout"] = _number("idle_timeout", out["idle_timeout"], integer=False,
                                  minimum=0, allow_zero=False)
    out["min_workers"] = _number("min_workers", out["min_workers"], integer=True, minimum=0,
                                 allow_zero=True)
    for key in ("cpu_limit", "fork_per_call"):
        if not isinstance(out[key], bool):
            raise InvalidSpec(key, "must be true or false")
    for key in ("image", "service_account", "gpu_vendor"):
        if out[key] is not None and (not isinstance(out[key], str) or not out[key].strip()):
            raise InvalidSpec(key, "must be a non-empty string")
    out["env"] = _string_map("env", out["env"], keys=_ENV_NAME)
    if not isinstance(out["secrets"], list) or not all(
            isinstance(s, str) and _SECRET_NAME.match(s) for s in out["secrets"]):
        raise InvalidSpec("secrets", "must be a list of Secret names (lowercase letters, digits, "
                                     "'-' and '.', at most 253 characters)")
    out["secrets"] = list(dict.fromkeys(out["secrets"]))
    out["node_selector"] = _string_map("node_selector", out["node_selector"], keys=_LABEL_KEY)
    out["labels"] = _string_map("labels", out["labels"], keys=_LABEL_KEY)
    out["annotations"] = _string_map("annotations", out["annotations"], keys=_LABEL_KEY)
    if not isinstance(out["tolerations"], list) or not all(
        isinstance(t, dict) for t in out["tolerations"]
    ):
        raise InvalidSpec("tolerations", "must be a list of Kubernetes toleration objects")
    if out["pod_patch"] is not None and not isinstance(out["pod_patch"], dict):
        raise InvalidSpec("pod_patch", "must be a mapping merged into the pod manifest")
    return out
