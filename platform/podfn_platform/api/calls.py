"""The calls resource: submit, inspect, wait for, cancel, read logs, list.

Payloads stay opaque bytes from request to database to response: this
process never unpickles anything (only the runtime, in the call's own pod,
does).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import BaseConverter

from podfn import frames
from podfn import spec as call_spec
from podfn_platform.api import context, contract, forms, idempotency, output, results, schemas
from podfn_platform.api.auth import check_calls_readable, forbidden, principal, requires
from podfn_platform.api.contract import COMMON, operation
from podfn_platform.api.errors import APIError
from podfn_platform.database import Row
from podfn_platform.submission import NewCalls, Payload, new_ids

bp = Blueprint("calls", __name__, url_prefix="/v1/calls")


class CallIdConverter(BaseConverter):
    """A call id in a URL: any segment but `wait` and `cancel`, which are routes of their own.

    Without it, /v1/calls/wait also matched GET /v1/calls/<call_id>, so a 405 or
    OPTIONS there advertised a GET that only ever answers 404.
    """

    regex = r"(?!(?:wait|cancel)$)[^/]+"
    part_isolating = True


@bp.record_once
def _converter(state: BlueprintSetupState) -> None:
    state.app.url_map.converters["call_id"] = CallIdConverter

STATES = schemas.STATES
# A JSON `wait` carries a pickled result along (base64) only if it is this small, and
# only this many bytes of them per response; any other is fetched from .../result.
# INLINE_BUDGET_BYTES also caps the payload bytes a framed answer takes from the rows
# that find the calls; the rest are streamed in chunks.
INLINE_RESULT_BYTES = 64 * 1024
INLINE_BUDGET_BYTES = 4 * 1024 * 1024
# A view that answers JSON or, when asked, frames (podfn/frames.py): its document says both.
FRAMED = {200: {results.FRAMES: {"schema": {"type": "string", "format": "binary"}}}}
FRAMED_CREATED = {status: FRAMED[200] for status in (200, 201)}


def describe(row: Row) -> dict[str, Any]:
    """A call as JSON, without payloads."""
    out: dict[str, Any] = {
        "id": row["id"], "function": row["function_name"], "state": row["state"],
        "attempt": row["attempt"], "reason": row.get("reason"),
    }
    for key in ("created_at", "launched_at", "started_at", "finished_at", "not_before"):
        if key in row:
            out[key] = context.iso(row[key])
    for key in ("user_failures", "disruptions", "spec", "client_python", "client_cloudpickle",
                "function_version"):
        if key in row:
            out[key] = context.public_spec(row[key]) if key == "spec" else row[key]
    if row.get("error_type"):
        out["error"] = {"type": row["error_type"], "message": row["error_message"],
                        "traceback": row["error_traceback"]}
    return out


def summary(row: Row, *, base64_result: bool = True) -> dict[str, Any]:
    """A finished call: its state, and the format and sizes of what it stored
    (`base64_result=False` for a framed answer, which carries the bytes as they are).

    Never the payloads: `wait` may name 10,000 calls, each with a result of
    up to PODFN_MAX_RESULT_BYTES; each result is fetched on its own from
    GET /v1/calls/{id}/result (and a pickled exception from .../error).
    """
    out = describe(row)
    fmt = row.get("result_format") or "pickle"
    out["result_format"] = fmt
    out["result_size"] = row.get("value_size" if fmt == "json" else "result_size")
    if base64_result and row.get("result") is not None:
        out["result"] = base64.b64encode(row["result"]).decode()
    if row.get("error_type"):
        out["error"]["pickle_size"] = row.get("error_pickle_size")
    return out


# Not .../error: a call that has not failed has no pickled exception, rightly a 404, which a
# stateful fuzzer reads as "the created call is not found".
CALL_LINKS = {status: contract.links(
    "call_id", "$response.body#/calls/0/id", GetCall="calls_get_get", Result="calls_result_get",
    Cancel="calls_cancel_post", Logs="calls_logs_get", Items="calls_items_get")
    for status in (201, 200)}


@bp.post("")
@requires("submit")
@operation("Submit calls of a pickled function (scope submit)",
           {201: schemas.CallsCreated, 200: schemas.CallsCreated,
            409: "The Idempotency-Key was used with a different request", 413: None, 422: None,
            **dict.fromkeys(COMMON)},
           form=forms.SUBMIT_FORM, form_required=("meta", "function", "args"),
           query=(forms.IDEMPOTENCY, forms.SUBMIT_WAIT), links=CALL_LINKS,
           more_content=FRAMED_CREATED)
def submit() -> tuple[Response, int]:
    parsed = contract.form_meta(schemas.SubmitMeta)
    meta = parsed.model_dump(mode="json", exclude_none=True)
    function_name = parsed.function_name
    python, cloudpickle = parsed.client.python, parsed.client.cloudpickle
    validated = call_spec.validate(forms.spec(parsed.spec))
    function = forms.function_part()
    args = forms.args_parts()
    calls = NewCalls(function_name, forms.payload_digest(function), validated, python,
                     cloudpickle, owner=principal().token_id)
    return create_calls(forms.fingerprint(meta, function, *args), calls, args,
                        function=function)


def create_calls(fingerprint: str, calls: NewCalls, args: list[Payload], *,
                 function: Payload | None = None) -> tuple[Response, int]:
    """Record the calls once per Idempotency-Key (api/idempotency.py) and answer with them:
    201 when new, 200 when the key replays them.

    With `?wait=S` (issue 12: `.remote(x)` as one request), the answer comes once
    one of the calls finishes, or after S seconds, and `finished` holds those that
    did, with their payloads as frames when the client accepts them. The ids are
    made up front and armed in the waiter before the calls are recorded, so no
    finish goes unheard and the database is first read when one is announced.
    """
    seconds = submit_wait()
    if seconds is None:
        ids, replayed = idempotency.create_once(context.db(), fingerprint, calls, args,
                                                new_ids(len(args)), function=function)
        return created(ids, replayed)
    framed = wants_frames()
    ids, replayed, rows = create_and_wait(fingerprint, calls, args, seconds, framed=framed,
                                          function=function)
    return created(ids, replayed, rows, framed=framed)


def create_and_wait(fingerprint: str, calls: NewCalls, args: list[Payload], seconds: float, *,
                    framed: bool, function: Payload | None = None
                    ) -> tuple[list[str], bool, list[Row]]:
    """Record the calls once per Idempotency-Key, then wait up to `seconds` for one of
    them to finish: (ids, replayed, the finished ones as `finished_fetch` reads them).
    The ids are made up front and armed in the waiter before the calls are recorded,
    so no finish goes unheard; calls a key replays may have finished already, so
    those are looked at first."""
    new = new_ids(len(args))
    with context.waiter().watching() as watch:
        watch.add(new)
        ids, replayed = idempotency.create_once(context.db(), fingerprint, calls, args, new,
                                                function=function)
        if replayed:
            watch.add(ids)
        rows = watch.wait(seconds, finished_fetch(ids, framed=framed), looked=not replayed)
    return ids, replayed, rows


def created(ids: list[str], replayed: bool, finished: list[Row] | None = None, *,
            framed: bool = False) -> tuple[Response, int]:
    """201 with new calls, 200 with the calls an Idempotency-Key already made; after a
    `wait`, with the `finished` ones (as `wait` answers them)."""
    body: dict[str, Any] = {"calls": [{"id": i} for i in ids], "replayed": replayed}
    status = 200 if replayed else 201
    if finished is None:
        return jsonify(body), status
    if framed:
        outcomes = [summary(r, base64_result=False) for r in finished]
        return results.frames_response(finished, outcomes, header=body, key="finished"), status
    body["finished"] = [summary(r) for r in finished]
    return jsonify(body), status


def submit_wait() -> float | None:
    """The submission's `wait` query parameter in seconds (capped), or None if absent."""
    value = request.args.get("wait")
    return None if value is None else wait_seconds(value)


def finished_fetch(ids: list[str], *, framed: bool,
                   budget: int | None = None) -> Callable[[], list[Row]]:
    """A read of the finished calls among `ids`: with their payloads for a framed answer
    (up to results.INLINE_BYTES each in the same query, `budget` bytes in all, at
    least one), else with small results only (the JSON answer's base64)."""
    db = context.db()
    if framed:
        budget = results.FRAMES_BUDGET_BYTES if budget is None else budget
        params = {"ids": ids, "budget": max(budget, 1), "inline": results.INLINE_BYTES,
                  "inline_budget": INLINE_BUDGET_BYTES}
        return lambda: db.all("finished_outcomes", params, binary=True)
    params = {"ids": ids, "inline": INLINE_RESULT_BYTES, "budget": INLINE_BUDGET_BYTES}
    return lambda: db.all("finished_calls", params, binary=True)


def _call_or_404(call_id: str) -> Row:
    row = context.db().one("get_call", {"id": call_id})
    if row is None:
        raise APIError(404, "not_found", f"no call with id {call_id!r}")
    check_calls_readable(context.db(), [call_id])
    return row


@bp.get("/<call_id:call_id>")
@requires("read", "submit", "invoke")
@operation("A call and its attempts",
           {200: schemas.Call, 404: None,
            # /v1/calls/wait and /v1/calls/cancel are routes of their own (POST): a GET
            # there is answered 405 with Allow, not as a call id (CallIdConverter).
            405: "`wait` and `cancel` name routes of their own, which take POST",
            **dict.fromkeys(COMMON)})
def get(call_id: str) -> Response:
    out = describe(_call_or_404(call_id))
    out["attempts"] = [
        {**a, **{k: context.iso(a[k]) for k in ("launched_at", "started_at", "finished_at")}}
        for a in context.db().all("get_attempts", {"id": call_id})
    ]
    return jsonify(out)


def wait_seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise APIError(400, "invalid_field", f"wait must be a number of seconds, not {value!r}",
                       field="wait") from None
    if not 0 <= seconds < float("inf"):
        raise APIError(400, "invalid_field", "wait must be >= 0", field="wait")
    return min(seconds, float(current_app.config["PODFN_MAX_WAIT"]))


def wait_finished(ids: list[str], seconds: float, *, framed: bool = False,
                  budget: int | None = None, linger: float = 0.0) -> list[Row]:
    """The finished calls among `ids` (403 unless readable, 404 for an unknown id), waiting
    up to `seconds` for one, then up to `linger` more for others (Watch.linger). Armed
    before the first read, so that read is the only one until a finish (or a lost
    listener) is announced."""
    db = context.db()
    fetch = finished_fetch(ids, framed=framed, budget=budget)
    if seconds == 0:
        rows = fetch()
        check_calls_readable(db, ids)
        return rows
    with context.waiter().watching() as watch:
        watch.add(ids)
        rows = fetch()
        check_calls_readable(db, ids)
        if rows:
            return watch.linger(rows, min(linger, seconds), fetch, _call_id)
        known = {r["id"] for r in db.all("existing_ids", {"ids": ids})}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise APIError(404, "not_found", f"no call with id {unknown[0]!r}"
                           + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                           ids=unknown[:20])
        return watch.wait(seconds, fetch, looked=True, linger=linger, id_of=_call_id)


def _call_id(row: Row) -> str:
    return str(row["id"])


@bp.get("/<call_id:call_id>/result")
@requires("read", "submit", "invoke")
@operation("A call's outcome, waiting up to `wait` seconds: a pickled result is streamed as "
           "octet-stream; an HTTP invoke's result, or a call that ended without one, is JSON "
           "(header X-Podfn-State: the state)",
           {200: {"description": "finished", "content": {
               "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
               "application/json": {"schema": {"$ref": "#/components/schemas/Outcome"}}}},
            202: schemas.Call, 404: None, **dict.fromkeys(COMMON)},
           query=(forms.WAIT,))
def result(call_id: str) -> Response | tuple[Response, int]:
    """200 with the outcome once finished (a pickled result is streamed as octet-stream),
    202 with the call's state if it does not finish within `wait` seconds."""
    rows = wait_finished([call_id], wait_seconds(request.args.get("wait", 0)))
    if rows:
        return results.outcome_response(rows[0], summary(rows[0]))
    return jsonify(describe(_call_or_404(call_id))), 202


@bp.get("/<call_id:call_id>/error")
@requires("read", "submit", "invoke")
@operation("A failed call's pickled exception, streamed as octet-stream",
           {200: {"description": "the pickled exception", "content": {
               "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            404: None, **dict.fromkeys(COMMON)})
def error(call_id: str) -> Response:
    """A failed call's pickled exception, streamed as octet-stream (404 if it has none)."""
    rows = wait_finished([call_id], 0)
    if not rows:
        row = _call_or_404(call_id)
        raise APIError(404, "no_error_pickle", f"call {call_id} has not failed ({row['state']})")
    return results.error_response(rows[0])


# Issue 12 (batches and bytes): with Accept: application/x-podfn-frames, `wait` answers
# the finished calls with their payloads as raw bytes (results.frames_response), as many
# as `max_bytes` allows, instead of JSON with small results in base64.
MAX_BYTES_ARG = 2**62
MAX_LINGER = 1.0
LINGER = {"name": "linger", "in": "query", "required": False,
          "schema": {"type": "number", "minimum": 0, "maximum": MAX_LINGER},
          "description": "seconds to go on waiting, once a call has finished, for the others "
                         "(until all are finished or the time is up; default 0): calls that "
                         "finish one by one then come several to an answer"}
MAX_BYTES = {"name": "max_bytes", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 0, "maximum": MAX_BYTES_ARG},
             "description": "framed answers only: payload bytes to carry (plus at most one "
                            f"payload; default and cap {results.FRAMES_BUDGET_BYTES})"}


def wants_frames() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", results.FRAMES])
    return best == results.FRAMES


def linger_arg() -> float:
    value = request.args.get("linger")
    if value is None:
        return 0.0
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= MAX_LINGER:  # (NaN and the infinities fail this too)
        raise APIError(400, "invalid_field",
                       f"linger must be a number of seconds from 0 to {MAX_LINGER}, not "
                       f"{value!r}", field="linger")
    return number


def max_bytes_arg() -> int:
    value = request.args.get("max_bytes")
    if value is None:
        return results.FRAMES_BUDGET_BYTES
    try:
        number = int(value)
    except ValueError:
        raise APIError(400, "invalid_field", f"max_bytes must be a whole number, not {value!r}",
                       field="max_bytes") from None
    if not 0 <= number <= MAX_BYTES_ARG:
        raise APIError(400, "invalid_field", f"max_bytes must be between 0 and {MAX_BYTES_ARG}",
                       field="max_bytes")
    return min(number, results.FRAMES_BUDGET_BYTES)


@bp.post("/wait")
@requires("read", "submit", "invoke")
@operation("Wait until any of the calls finishes; the finished ones with outcomes (as JSON, "
           "or with Accept: application/x-podfn-frames as a JSON header and raw payloads)",
           {200: schemas.Outcomes, 404: None, 422: None, **dict.fromkeys(COMMON)},
           body=schemas.WaitBody, query=(MAX_BYTES, LINGER), more_content=FRAMED)
def wait_any() -> Response:
    body = contract.json_body(schemas.WaitBody)
    budget = max_bytes_arg()  # checked for JSON answers too, which carry no payload bytes
    linger = linger_arg()
    if wants_frames():
        # A payload up to INLINE_BYTES comes with the query that finds the call (one
        # statement, not two); the larger ones are streamed chunk by chunk.
        rows = wait_finished(body.ids, wait_seconds(body.wait), framed=True, budget=budget,
                             linger=linger)
        return results.frames_response(rows, [summary(r, base64_result=False) for r in rows])
    rows = wait_finished(body.ids, wait_seconds(body.wait), linger=linger)
    return jsonify({"calls": [summary(r) for r in rows]})


@bp.post("/<call_id:call_id>/cancel")
@requires("submit", "invoke")
@operation("Cancel a call that has not finished (its own calls, or admin)",
           {200: schemas.CancelledCall, 404: None, **dict.fromkeys(COMMON)})
def cancel(call_id: str) -> Response:
    current = _call_or_404(call_id)
    if not principal().has("admin") and current["owner"] != principal().token_id:
        raise forbidden(("admin",))
    row = context.db().one("cancel", {"id": call_id, "reason": f"cancelled by {principal().name}"})
    out = describe(_call_or_404(call_id))
    out["cancelled"] = row is not None
    return jsonify(out)


CANCELLABLE = schemas.CANCELLABLE


@bp.post("/cancel")
@requires("submit", "invoke")
@operation("Cancel many calls: by ids and/or filters (own calls only, unless admin)",
           {200: schemas.Cancelled, 422: None, **dict.fromkeys(COMMON)}, body=schemas.CancelBody)
def cancel_many() -> Response:
    """Cancel many calls at once: by `ids`, by filters (`function`, `state`, `mine`), or both.

    Tokens without `admin` only ever match their own calls, as with a single
    cancel; `dry_run` answers what would be cancelled (the CLI's count and
    confirmation) without changing anything.
    """
    body = contract.json_body(schemas.CancelBody)
    ids, function, state = body.ids, body.function, body.state
    mine, dry_run = body.mine, body.dry_run
    who = principal()
    if ids and not who.has("admin"):
        owners = context.db().all("call_owners", {"ids": ids})
        if any(row["owner"] != who.token_id for row in owners):
            raise forbidden(("admin",))
    params = {"ids": ids, "function": function, "state": state,
              "owner": who.token_id if mine or not who.has("admin") else None}
    if dry_run:
        rows = context.db().all("cancellable_calls", params)
    else:
        rows = context.db().all("cancel_many", {**params, "reason": f"cancelled by {who.name}"})
    matched = [r["id"] for r in rows]
    return jsonify({"cancelled": [] if dry_run else matched, "matched": matched,
                    "count": len(matched), "dry_run": dry_run})


def _offset_arg(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "integer", "minimum": 0, "maximum": output.MAX_INT}}


@bp.get("/<call_id:call_id>/logs")
@requires("read", "submit", "invoke")
@operation("What the call printed; from an offset, long-polling for more",
           {200: schemas.Logs, 404: None, **dict.fromkeys(COMMON)},
           query=(_offset_arg("offset", "characters of the attempt's output already read"),
                  _offset_arg("attempt", "the attempt to read (default: the current one)"),
                  forms.WAIT))
def logs(call_id: str) -> Response:
    """The whole text of each stream; with `offset` (or `wait`), the chunks from an
    offset, long-polling for more (output.py)."""
    _call_or_404(call_id)
    if any(arg in request.args for arg in ("offset", "attempt", "wait")):
        return jsonify(output.follow_logs(call_id))
    return jsonify(context.db().one("get_logs", {"id": call_id}))


@bp.get("/<call_id:call_id>/items")
@requires("read", "submit", "invoke")
@operation("Items a generator call yielded, from an index, long-polling for more (as JSON, "
           "or with Accept: application/x-podfn-frames as a JSON header and raw pickles)",
           {200: schemas.Items, 404: None, **dict.fromkeys(COMMON)},
           query=(_offset_arg("start", "the index of the first item wanted"), forms.WAIT),
           more_content=FRAMED)
def items(call_id: str) -> Response:
    """A generator call's items from index `start`, long-polling with `wait`."""
    _call_or_404(call_id)
    found = output.read_items(call_id)
    if wants_frames():
        head, payloads = output.items_frames(found)
        pieces = list(frames.encode(head, payloads))  # each payload as read, not joined
        return Response(pieces, mimetype=results.FRAMES,
                        headers={"Content-Length": str(sum(map(len, pieces)))})
    return jsonify(output.items_json(found))


@bp.get("")
@requires("read")
@operation("List calls (scope read)", {200: schemas.CallList, **dict.fromkeys(COMMON)},
           query=({"name": "state", "in": "query", "schema": {"type": "string",
                                                             "enum": list(STATES)}},
                  {"name": "function", "in": "query", "schema": {"type": "string",
                                                                "pattern": schemas.NO_NUL}},
                  {"name": "limit", "in": "query",
                   "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}))
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
    rows = context.db().all("list_calls", {"state": state, "function": request.args.get("function"),
                                    "limit": limit})
    return jsonify({"calls": [describe(r) for r in rows]})
