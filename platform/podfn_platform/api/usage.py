"""What calls really used: GET /v1/functions/{name}/usage and GET /v1/usage.

Read-only numbers computed in Postgres (podfn_platform/usage.py); the same
as `podfn functions --usage` and the dashboard's Functions page show.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from podfn_platform import usage
from podfn_platform.api import context, schemas
from podfn_platform.api.auth import requires
from podfn_platform.api.contract import COMMON, operation
from podfn_platform.api.errors import APIError

bp = Blueprint("usage", __name__, url_prefix="/v1")


def last_calls() -> int:
    raw = request.args.get("last", usage.DEFAULT_LAST)
    try:
        last = int(raw)
    except (TypeError, ValueError):
        raise APIError(400, "invalid_field", f"last must be a whole number of calls, not {raw!r}",
                       field="last") from None
    if not 1 <= last <= usage.MAX_LAST:
        raise APIError(400, "invalid_field", f"last must be between 1 and {usage.MAX_LAST}",
                       field="last")
    return last


LAST = ({"name": "last", "in": "query", "required": False,
         "description": "how many of the latest calls to summarise",
         "schema": {"type": "integer", "minimum": 1, "maximum": usage.MAX_LAST}},)


@bp.get("/functions/<name>/usage")
@requires("read", "deploy")
@operation("What a function's last calls used, against its hints",
           {200: schemas.Usage, **dict.fromkeys(COMMON)}, query=LAST)
def function_usage(name: str) -> Response:
    return jsonify(usage.function_usage(context.db(), name, last_calls()))


@bp.get("/usage")
@requires("read", "deploy")
@operation("What every function's last calls used",
           {200: schemas.UsageList, **dict.fromkeys(COMMON)}, query=LAST)
def all_usage() -> Response:
    return jsonify({"functions": usage.all_functions_usage(context.db(), last_calls())})
