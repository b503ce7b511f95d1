"""Token management (admin only): create, list, revoke."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from podfn_platform.api import context, contract, schemas
from podfn_platform.api.auth import create_token, requires
from podfn_platform.api.contract import COMMON, operation
from podfn_platform.api.errors import APIError
from podfn_platform.database import Row

bp = Blueprint("tokens", __name__, url_prefix="/v1/tokens")




def _public(row: Row) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "scopes": list(row["scopes"]),
            "created_at": context.iso(row["created_at"]),
            "revoked_at": context.iso(row.get("revoked_at"))}


@bp.post("")
@requires("admin")
@operation("Create a token (admin); the secret is returned once",
           {201: schemas.NewToken, 409: None, 422: None, **dict.fromkeys(COMMON)},
           body=schemas.TokenBody,
           links={201: {"Revoke": {"operationId": "tokens_revoke_post",
                                   "parameters": {"ref": "$response.body#/id"}}}})
def create() -> tuple[Response, int]:
    body = contract.json_body(schemas.TokenBody)
    name, scopes = body.name, [str(s) for s in dict.fromkeys(body.scopes)]
    made = create_token(context.db(), name, scopes)
    if made is None:
        raise APIError(409, "name_taken", f"a token named {name!r} exists; revoke it or choose "
                       "another name", field="name")
    row, secret = made
    return jsonify({**_public({**row, "revoked_at": None}), "token": secret}), 201


@bp.get("")
@requires("admin")
@operation("List tokens (admin)", {200: schemas.TokenList, **dict.fromkeys(COMMON)})
def list_tokens() -> Response:
    return jsonify({"tokens": [_public(r) for r in context.db().all("list_tokens")]})


@bp.post("/<ref>/revoke")
@requires("admin")
@operation("Revoke a token by id or name (admin)",
           {200: schemas.Token, 404: None, 409: None, **dict.fromkeys(COMMON)})
def revoke(ref: str) -> Response:
    row = context.db().one("revoke_token", {"ref": ref})
    cache = current_app.extensions.get("podfn.token_cache")
    if row is not None and cache is not None:
        cache.clear()  # here at once; other processes when they hear the NOTIFY
    if row is None:
        matches = context.db().all("active_tokens_named", {"ref": ref})
        if len(matches) > 1:
            ids = ", ".join(m["id"] for m in matches)
            raise APIError(409, "ambiguous_reference", f"{ref!r} is the id or name of more than "
                           f"one active token ({ids}); nothing was revoked: revoke by id")
        raise APIError(404, "not_found", f"no active token with id or name {ref!r}")
    return jsonify(_public(row))
