"""Resource quantities (``500m``, ``2Gi``, ``1e3``) as numbers, for scheduling and quota."""

from __future__ import annotations

import re
from typing import Any

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "P": 1e15, "E": 1e18}


def parse_quantity(q: Any) -> float:
    """Parse a resource.Quantity (``500m``, ``2Gi``, ``1e3``) to a float."""
    s = str(q).strip()
    for suf in sorted(_SUFFIX, key=len, reverse=True):
        if s.endswith(suf) and not (suf == "E" and re.fullmatch(r"[\d.]+[eE]\d+", s)):
            return float(s[: -len(suf)]) * _SUFFIX[suf]
    return float(s)
