"""The calls resource: submit, inspect, wait for, cancel, read logs, list.

Payloads stay opaque bytes from request to database to response: this
process never unpickles anything (only the runtime, in the call's own pod,
does).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from podfn import spec as call_spec
from podfn_platform.api.errors import APIError
from podfn_platform.api.waiting import FinishWaiter
from podfn_platform.database import Database, Row, jsonb

bp = Blueprint("calls", __name__, url_prefix="/v1/calls")

STATES = ("queued", "launching", "running", "succeeded", "failed", "timed_out", "cancelled")
MAX_IDS = 10_000


def _db() -> Database:
    return current_app.extensions["podfn.db"]  # type: ignore[no-any-return]


def _waiter() -> FinishWaiter:
    return current_app.extensions["podfn.waiter"]  # type: ignore[no-any-return]


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _b64(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode() if value is not None else None


def describe(row: Row) -> dict[str, Any]:
    """A call as JSON, without payloads."""
    out: dict[str, Any] = {
        "id": row["id"], "function": row["function_name"], "state": row["state"],
        "attempt": row["attempt"], "reason": row.get("reason"),
    }
    for key in ("created_at", "launched_at", "started_at", "finished_at", "not_before"):
        if key in row:
            out[key] = _time(row[key])
    for key in ("user_failures", "disruptions", "spec", "client_python", "client_cloudpickle"):
        if key in row:
            out[key] = row[key]
    if row.get("error_type"):
        out["error"] = {"type": row["error_type"], "message": row["error_message"],
                        "traceback": row["error_traceback"]}
    return out


def with_outcome(row: Row) -> dict[str, Any]:
    out = describe(row)
    out["result"] = _b64(row["result"])
    if row.get("error_type"):
        out["error"]["pickle"] = _b64(row["error_pickle"])
    return out


def _meta() -> dict[str, Any]:
    raw = request.form.get("meta")
    if raw is None:
        raise APIError(400, "missing_field", "the form field 'meta' (JSON) is required",
                       field="meta")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise APIError(400, "malformed_json", f"'meta' is not JSON: {exc}", field="meta") from None
    if not isinstance(meta, dict):
        raise APIError(400, "malformed_json", "'meta' must be a JSON object", field="meta")
    name = meta.get("function_name")
    if not isinstance(name, str) or not name.strip() or len(name) > 256:
        raise APIError(422, "invalid_field", "function_name must be a non-empty string of at "
                       "most 256 characters", field="meta.function_name")
    client = meta.get("client")
    if not (isinstance(client, dict) and isinstance(client.get("python"), str)
            and isinstance(client.get("cloudpickle"), str)):
        raise APIError(422, "invalid_field", "client must be {'python': VERSION, "
                       "'cloudpickle': VERSION}", field="meta.client")
    return meta


@bp.post("")
def submit() -> tuple[Response, int]:
    meta = _meta()
    validated = call_spec.validate(meta.get("spec") or {})
    function = request.files.get("function")
    if function is None:
        raise APIError(400, "missing_field", "the file part 'function' (the pickled function) "
                       "is required", field="function")
    args = request.files.getlist("args")
    if not args:
        raise APIError(400, "missing_field", "at least one file part 'args' (pickled (args, "
                       "kwargs)) is required", field="args")
    if len(args) > MAX_IDS:
        raise APIError(422, "too_many_calls", f"at most {MAX_IDS} calls per request",
                       field="args")
    function_bytes = function.read()
    digest = hashlib.sha256(function_bytes).hexdigest()
    rows = [
        {"id": uuid.uuid4().hex, "function_name": meta["function_name"],
         "function_digest": digest, "args": part.read(), "spec": jsonb(validated),
         "client_python": meta["client"]["python"],
         "client_cloudpickle": meta["client"]["cloudpickle"]}
        for part in args
    ]
    with _db().transaction() as tx:
        tx.all("insert_payload", {"digest": digest, "data": function_bytes})
        tx.many("insert_call", rows)
        tx.all("notify_queued")
    return jsonify({"calls": [{"id": r["id"], "state": "queued"} for r in rows]}), 201


def _call_or_404(call_id: str) -> Row:
    row = _db().one("get_call", {"id": call_id})
    if row is None:
        raise APIError(404, "not_found", f"no call with id {call_id!r}")
    return row


@bp.get("/<call_id>")
def get(call_id: str) -> Response:
    out = describe(_call_or_404(call_id))
    out["attempts"] = [
        {**a, **{k: _time(a[k]) for k in ("launched_at", "started_at", "finished_at")}}
        for a in _db().all("get_attempts", {"id": call_id})
    ]
    return jsonify(out)


def _wait_seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise APIError(400, "invalid_field", f"wait must be a number of seconds, not {value!r}",
                       field="wait") from None
    if not 0 <= seconds < float("inf"):
        raise APIError(400, "invalid_field", "wait must be >= 0", field="wait")
    return min(seconds, float(current_app.config["PODFN_MAX_WAIT"]))


def _wait_finished(ids: list[str], seconds: float) -> list[Row]:
    db = _db()
    rows = db.all("finished_calls", {"ids": ids})
    if rows or seconds == 0:
        return rows
    known = {r["id"] for r in db.all("existing_ids", {"ids": ids})}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise APIError(404, "not_found", f"no call with id {unknown[0]!r}"
                       + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                       ids=unknown[:20])
    return _waiter().wait(ids, seconds, lambda: db.all("finished_calls", {"ids": ids}))


@bp.get("/<call_id>/result")
def result(call_id: str) -> tuple[Response, int]:
    rows = _wait_finished([call_id], _wait_seconds(request.args.get("wait", 0)))
    if rows:
        return jsonify(with_outcome(rows[0])), 200
    return jsonify(describe(_call_or_404(call_id))), 202


@bp.post("/wait")
def wait_any() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise APIError(400, "malformed_json", "expected a JSON object {'ids': [...], 'wait': s}")
    ids = body.get("ids")
    if (not isinstance(ids, list) or not ids or len(ids) > MAX_IDS
            or not all(isinstance(i, str) for i in ids)):
        raise APIError(422, "invalid_field", f"ids must be a list of 1 to {MAX_IDS} call ids",
                       field="ids")
    rows = _wait_finished(ids, _wait_seconds(body.get("wait", 0)))
    return jsonify({"calls": [with_outcome(r) for r in rows]})


@bp.post("/<call_id>/cancel")
def cancel(call_id: str) -> Response:
    row = _db().one("cancel", {"id": call_id, "reason": "cancelled by request"})
    out = describe(_call_or_404(call_id))
    out["cancelled"] = row is not None
    return jsonify(out)


@bp.get("/<call_id>/logs")
def logs(call_id: str) -> Response:
    row = _db().one("get_logs", {"id": call_id})
    if row is None:
        raise APIError(404, "not_found", f"no call with id {call_id!r}")
    return jsonify(row)


@bp.get("")
def list_calls() -> Response:
    state = request.args.get("state")
    if state is not None and state not in STATES:
        raise APIError(400, "invalid_field", f"state must be one of {', '.join(STATES)}",
                       field="state")
    try:
        limit = int(request.args.get("limit", 50))
    except ValueError:
        raise APIError(400, "invalid_field", "limit must be a whole number",
                       field="limit") from None
    if not 1 <= limit <= 1000:
        raise APIError(400, "invalid_field", "limit must be between 1 and 1000", field="limit")
    rows = _db().all("list_calls", {"state": state, "function": request.args.get("function"),
                                    "limit": limit})
    return jsonify({"calls": [describe(r) for r in rows]})
