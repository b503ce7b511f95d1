"""Label and field selectors, with the API server's grammar and errors.

Label selectors: comma-separated requirements, each one of ``k=v``, ``k==v``,
``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists), ``!k`` (does not
exist), ``k>n``/``k<n`` (integer compare). ``!=`` and ``notin`` match objects
without the key, as in k8s.io/apimachinery/pkg/labels.

Field selectors: ``field=v``, ``field==v``, ``field!=v``, comma-separated
(all must hold). Only the fields the API server indexes for the resource are
accepted; anything else is a 400 BadRequest, like
``field label not supported: spec.foo``.

Simplification: values are not unescaped (``\\,`` in field selectors).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ApiError

Obj = dict[str, Any]

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VAL = r"[A-Za-z0-9_.-]*"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_OP_RE = re.compile(rf"^\s*({_KEY})\s*(==|!=|=|>|<)\s*({_VAL})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        val = labels.get(self.key)
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and val in self.values
        if self.op in ("!=", "notin"):
            return not has or val not in self.values
        if not has:
            return False
        try:
            lhs, rhs = int(val or ""), int(self.values[0])
        except ValueError:
            return False
        return lhs > rhs if self.op == ">" else lhs < rhs


def _split_top_level(s: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_label_selector(selector: str | None) -> list[Requirement]:
    """Parse a label selector string; 400 BadRequest on syntax errors."""
    if not selector or not selector.strip():
        return []
    reqs: list[Requirement] = []
    for part in _split_top_level(selector):
        if m := _SET_RE.match(part):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            if not values:
                raise ApiError(400, f"unable to parse requirement: {part!r}: empty set")
            reqs.append(Requirement(m.group(1), m.group(2), values))
        elif m := _OP_RE.match(part):
            op = "=" if m.group(2) == "==" else m.group(2)
            if op in (">", "<") and not re.fullmatch(r"-?\d+", m.group(3)):
                raise ApiError(400, f"unable to parse requirement: {part!r}: not an integer")
            reqs.append(Requirement(m.group(1), op, (m.group(3),)))
        elif m := _EXISTS_RE.match(part):
            reqs.append(Requirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise ApiError(400, f"unable to parse requirement: found {part.strip()!r}")
    return reqs


# Fields each resource supports in field selectors (as the API server does).
POD_FIELDS: dict[str, Callable[[Obj], str]] = {
    "metadata.name": lambda o: o["metadata"].get("name", ""),
    "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
    "status.phase": lambda o: (o.get("status") or {}).get("phase", ""),
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName", ""),
    "spec.restartPolicy": lambda o: (o.get("spec") or {}).get("restartPolicy", ""),
    "spec.schedulerName": lambda o: (o.get("spec") or {}).get("schedulerName", ""),
    "spec.serviceAccountName": lambda o: (o.get("spec") or {}).get("serviceAccountName", ""),
    "status.podIP": lambda o: (o.get("status") or {}).get("podIP", ""),
    "status.nominatedNodeName": lambda o: (o.get("status") or {}).get("nominatedNodeName", ""),
}
SECRET_FIELDS: dict[str, Callable[[Obj], str]] = {
    "metadata.name": POD_FIELDS["metadata.name"],
    "metadata.namespace": POD_FIELDS["metadata.namespace"],
    "type": lambda o: o.get("type", ""),
}
FIELDS: dict[str, dict[str, Callable[[Obj], str]]] = {"pods": POD_FIELDS, "secrets": SECRET_FIELDS}

FieldReq = tuple[Callable[[Obj], str], bool, str]  # (getter, equal?, value)
_FIELD_RE = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$")


def parse_field_selector(resource: str, selector: str | None) -> list[FieldReq]:
    """Parse a field selector for ``resource``; 400 on bad syntax or unknown field."""
    if not selector or not selector.strip():
        return []
    fields = FIELDS.get(resource, {})
    out: list[FieldReq] = []
    for part in selector.split(","):
        m = _FIELD_RE.match(part)
        if not m:
            raise ApiError(400, f"invalid selector: '{selector}'; can't understand '{part}'")
        name, op, value = m.groups()
        if name not in fields:
            raise ApiError(400, f'field label not supported: {name}')
        out.append((fields[name], op != "!=", value))
    return out


class Selector:
    """A compiled label + field selector for one resource."""

    def __init__(self, resource: str, label: str | None, field: str | None) -> None:
        self.labels = parse_label_selector(label)
        self.fields = parse_field_selector(resource, field)

    def matches(self, obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        if not all(r.matches(labels) for r in self.labels):
            return False
        return all((get(obj) == value) == eq for get, eq, value in self.fields)
