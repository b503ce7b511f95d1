"""The three patch formats of the API server.

* JSON merge patch (RFC 7386, ``application/merge-patch+json``): maps merge
  recursively, ``null`` deletes, lists are replaced.
* Strategic merge patch (``application/strategic-merge-patch+json``): like a
  merge patch, but lists that carry a ``patchMergeKey`` in the Go types are
  merged element by element on that key, ``patchStrategy: merge`` lists of
  primitives (``finalizers``) are unioned, and the directives ``$patch``
  (``replace``/``delete`` on maps and list elements),
  ``$deleteFromPrimitiveList/<field>`` and ``$setElementOrder/<field>``
  (accepted, ignored) are understood.
* JSON patch (RFC 6902, ``application/json-patch+json``): add, remove,
  replace, move, copy, test, with RFC 6901 pointers.

Simplification: the strategic merge keys are looked up by *field name* (see
``MERGE_KEYS``), not by the Go struct path, which is exact for the Pod and
Secret types; ``$retainKeys`` is not supported.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError

# field name -> merge key, from the patchMergeKey tags of core/v1 + meta/v1.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "resourceClaims": "name",
    "topologySpreadConstraints": "topologyKey",
}
# patchStrategy:"merge" lists of primitives.
PRIMITIVE_MERGE: frozenset[str] = frozenset({"finalizers"})


class PatchError(ApiError):
    """A patch that cannot be applied: 422 like the API server (400 if malformed)."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(code, message)


# -- RFC 7386 ---------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


# -- strategic merge ------------------------------------------------------------


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    result = copy.deepcopy(target)
    for k, v in patch.items():
        if k == "$patch" or k.startswith("$setElementOrder/") or k == "$retainKeys":
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            field = k.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(v, list):
                result[field] = [x for x in result[field] if x not in v]
            continue
        if v is None:
            result.pop(k, None)
        elif isinstance(v, list) and isinstance(result.get(k), list):
            result[k] = _merge_list(k, result[k], v)
        elif isinstance(v, dict):
            merged = strategic_merge_patch(result.get(k), v)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
        else:
            result[k] = copy.deepcopy(v)
    return result


def _merge_list(field: str, cur: list[Any], patch: list[Any]) -> list[Any]:
    if field in PRIMITIVE_MERGE:
        out = list(cur)
        out.extend(x for x in patch if x not in out)
        return out
    key = MERGE_KEYS.get(field)
    if key is None:
        return [x for x in copy.deepcopy(patch) if not (isinstance(x, dict) and "$patch" in x)]
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [copy.deepcopy(x) for x in patch if not (isinstance(x, dict) and "$patch" in x)]
    out = copy.deepcopy(cur)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map: {item!r} does not contain declared merge key: {key}")
        idx = next(
            (i for i, x in enumerate(out) if isinstance(x, dict) and x.get(key) == item[key]),
            None,
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
        elif idx is None:
            out.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out


# -- RFC 6902 -----------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for p in parts:
        if isinstance(doc, dict):
            if p not in doc:
                raise PatchError(f"doc is missing path: /{'/'.join(parts)}")
            doc = doc[p]
        elif isinstance(doc, list):
            doc = doc[_index(doc, p, allow_end=False)]
        else:
            raise PatchError(f"doc is missing path: /{'/'.join(parts)}")
    return doc


def _index(lst: list[Any], p: str, allow_end: bool) -> int:
    if p == "-" and allow_end:
        return len(lst)
    if not p.isdigit():
        raise PatchError(f"invalid array index: {p!r}")
    i = int(p)
    if i > len(lst) or (i == len(lst) and not allow_end):
        raise PatchError(f"array index out of bounds: {i}")
    return i


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchError(f"cannot add to non-container at /{'/'.join(parts)}")
    return doc


def _remove(doc: Any, parts: list[str]) -> tuple[Any, Any]:
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"unable to remove nonexistent key: {last}")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, allow_end=False))
    raise PatchError(f"cannot remove from non-container at /{'/'.join(parts)}")


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise PatchError("json patch must be a list of operations", code=400)
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid operation: {op!r}", code=400)
        kind, parts = op["op"], _pointer(op["path"])
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc, _ = _remove(doc, parts)
        elif kind == "replace":
            doc, _ = _remove(doc, parts) if parts else (doc, None)
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            if kind == "move":
                doc, value = _remove(doc, src)
            else:
                value = copy.deepcopy(_walk(doc, src))
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _walk(doc, parts) != op.get("value"):
                raise PatchError(f"testing value {op['path']} failed")
        else:
            raise PatchError(f"Unexpected kind: {kind}", code=400)
    return doc


PATCH_TYPES = {
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json": strategic_merge_patch,
    "application/json-patch+json": json_patch,
}


def apply_patch(content_type: str, target: Any, patch: Any) -> Any:
    """Apply ``patch`` of the given Content-Type; 415 for other types."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    fn = PATCH_TYPES.get(ctype)
    if fn is None:
        raise ApiError(
            415,
            f"the body of the request was in an unknown format - accepted media types "
            f"include: {', '.join(PATCH_TYPES)}",
        )
    return fn(target, patch)
