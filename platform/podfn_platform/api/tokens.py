"""Token management (admin only): create, list, revoke."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify

from podfn_platform.api import context, inputs
from podfn_platform.api.auth import SCOPES, create_token, requires
from podfn_platform.api.errors import APIError
from podfn_platform.database import Row

bp = Blueprint("tokens", __name__, url_prefix="/v1/tokens")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")



def _public(row: Row) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "scopes": list(row["scopes"]),
            "created_at": context.iso(row["created_at"]),
            "revoked_at": context.iso(row.get("revoked_at"))}


@bp.post("")
@requires("admin")
def create() -> tuple[Response, int]:
    body = inputs.json_body()
    if not isinstance(body, dict):
        raise APIError(400, "malformed_json", 'expected {"name": ..., "scopes": [...]}')
    name, scopes = body.get("name"), body.get("scopes")
    if not isinstance(name, str) or not _NAME.match(name):
        raise APIError(422, "invalid_field", "name must be 1-100 letters, digits, . _ @ -",
                       field="name")
    if (not isinstance(scopes, list) or not scopes
            or not all(isinstance(s, str) and s in SCOPES for s in scopes)):
        raise APIError(422, "invalid_field", f"scopes must be a non-empty list of "
                       f"{', '.join(SCOPES)}", field="scopes")
    made = create_token(context.db(), name, scopes)
    if made is None:
        raise APIError(409, "name_taken", f"a token named {name!r} exists; revoke it or choose "
                       "another name", field="name")
    row, secret = made
    return jsonify({**_public({**row, "revoked_at": None}), "token": secret}), 201


@bp.get("")
@requires("admin")
def list_tokens() -> Response:
    return jsonify({"tokens": [_public(r) for r in context.db().all("list_tokens")]})


@bp.post("/<ref>/revoke")
@requires("admin")
def revoke(ref: str) -> Response:
    row = context.db().one("revoke_token", {"ref": ref})
    if row is None:
        matches = context.db().all("active_tokens_named", {"ref": ref})
        if len(matches) > 1:
            ids = ", ".join(m["id"] for m in matches)
            raise APIError(409, "ambiguous_reference", f"{ref!r} is the id or name of more than "
                           f"one active token ({ids}); nothing was revoked: revoke by id")
        raise APIError(404, "not_found", f"no active token with id or name {ref!r}")
    return jsonify(_public(row))
