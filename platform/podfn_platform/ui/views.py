"""The dashboard's pages (Flask blueprint at /ui) and the JSON its script polls.

Reads go straight to Postgres with the queries of sql/dashboard.sql; actions
(cancel, rollback, invoke) use the same rules as the API: cancel needs
`submit` or `invoke` and the call's own token (or `admin`), rollback needs
`deploy`, invoke `invoke` or `submit`. Every page needs `read`. Nothing is
ever unpickled here: a pickled result is shown by its size only.
"""

from __future__ import annotations

import json
import pickle
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    abort,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from podfn_platform import usage
from podfn_platform.api import context
from podfn_platform.api.auth import Principal
from podfn_platform.api.calls import STATES
from podfn_platform.controller.leader import LOCK_KEY
from podfn_platform.database import Row
from podfn_platform.submission import NewCalls, record_calls
from podfn_platform.ui import plots, session

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates",
               static_folder="static")

PAGE_SIZE = 50
PLOT_MINUTES = 60
JSON_RESULT_SHOWN = 64 * 1024
RANGES = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}
FINAL = ("succeeded", "failed", "timed_out", "cancelled")
PUBLIC = ("ui.signin", "ui.signin_post", "ui.static")


def me() -> Principal:
    return g.podfn_principal  # type: ignore[no-any-return]


@bp.before_request
def _signed_in() -> BaseResponse | None:
    if request.method == "POST":
        session.check_origin()
    if request.endpoint in PUBLIC:
        return None
    if session.signed_in() is None:
        if request.method == "GET" and not request.path.startswith("/ui/api/"):
            return redirect(url_for("ui.signin", next=request.full_path.rstrip("?")))
        abort(401, "sign in first")
    if request.method == "POST":
        session.check_csrf()
    if not me().has("read"):
        abort(403, f"this token ({me().name}) lacks the read scope the dashboard needs")
    return None


@bp.app_template_global()
def can(action: str) -> bool:
    """What the signed-in token may do, so pages show only the buttons that work."""
    scopes = {"cancel": ("submit", "invoke"), "rollback": ("deploy",),
              "invoke": ("invoke", "submit")}[action]
    return me().has(*scopes)


@bp.app_template_filter("ago")
def _ago(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


@bp.app_template_filter("mib")
def _mib(value: float | None) -> str:
    return "" if value is None else f"{value / 2**20:.1f}Mi"


@bp.app_template_filter("secs")
def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}s"


@bp.errorhandler(HTTPException)
def _error(exc: HTTPException) -> tuple[str | Response, int]:
    status = exc.code or 500
    if request.path.startswith("/ui/api/") or request.headers.get(session.CSRF_HEADER):
        return jsonify({"error": {"code": exc.name, "message": exc.description}}), status
    return render_template("error.html", status=status, message=exc.description), status


# --- signing in -------------------------------------------------------------------

@bp.get("/signin")
def signin() -> str:
    return render_template("signin.html", no_auth=session.no_auth(), error=None,
                           next=request.args.get("next", ""))


@bp.post("/signin")
def signin_post() -> BaseResponse | tuple[str, int]:
    # No CSRF token before signing in: the form only sets the sender's own cookie,
    # and a token is needed (unless the server runs without auth).
    secret = (request.form.get("token") or "").strip()
    if session.no_auth():
        secret = session.anonymous_secret()
    found = session.who(secret) if secret else None
    if found is None:
        return render_template("signin.html", no_auth=False, next=request.form.get("next", ""),
                               error="that token was not recognised: paste a token from "
                                     "`podfn token create` or your profile (podfn dev prints "
                                     "it)"), 401
    target = request.form.get("next") or ""
    if not target.startswith("/ui") or target.startswith("//"):
        target = url_for("ui.overview")
    response = redirect(target)
    session.sign_in(response, secret)
    return response


@bp.post("/signout")
def signout() -> BaseResponse:
    response = redirect(url_for("ui.signin"))
    session.sign_out(response)
    return response


# --- overview ----------------------------------------------------------------------

def charts() -> dict[str, Any]:
    db = context.db()
    depth = db.all("ui_queue_depth", {"minutes": PLOT_MINUTES})
    minutes = [r["minute"] for r in depth]
    index = {m: i for i, m in enumerate(minutes)}
    per_minute: dict[str, list[int]] = {s: [0] * len(minutes) for s in FINAL}
    for r in db.all("ui_calls_per_minute", {"minutes": PLOT_MINUTES}):
        if r["minute"] in index and r["state"] in per_minute:
            per_minute[r["state"]][index[r["minute"]]] = r["calls"]
    p50: list[float | None] = [None] * len(minutes)
    p95: list[float | None] = [None] * len(minutes)
    for r in db.all("ui_durations", {"minutes": PLOT_MINUTES}):
        if r["minute"] in index:
            p50[index[r["minute"]]], p95[index[r["minute"]]] = r["p50"], r["p95"]
    return {
        "calls": plots.stacked_bars("Calls per minute by outcome", minutes, per_minute),
        "durations": plots.lines("Duration percentiles (start to finish)", minutes,
                                 {"p50": p50, "p95": p95}, " s"),
        "queue": plots.lines("Queue depth", minutes,
                             {"queued": [float(r["queued"]) for r in depth]}, " calls"),
    }


@bp.get("/")
def overview() -> str:
    db = context.db()
    controller = db.one("ui_controller", {"classid": LOCK_KEY >> 32,
                                          "objid": LOCK_KEY & 0xFFFFFFFF})
    return render_template(
        "overview.html", now=db.one("ui_now"), reasons=db.all("ui_failure_reasons"),
        latency=db.one("ui_launch_latency"), controller=controller,
        controller_state=db.all("ui_controller_state"), charts=charts())


# --- calls -------------------------------------------------------------------------

def call_filters() -> dict[str, Any]:
    args = request.args
    state = args.get("state") or None
    if state is not None and state not in STATES:
        abort(400, f"state must be one of {', '.join(STATES)}")
    since = args.get("range") or None
    if since is not None and since not in RANGES:
        abort(400, f"range must be one of {', '.join(RANGES)}")
    try:
        page = max(int(args.get("page", 1)), 1)
    except ValueError:
        abort(400, "page must be a whole number")
    return {"state": state, "function": args.get("function") or None,
            "token": args.get("token") or None, "range": since,
            "id": (args.get("id") or "").strip() or None,
            "reason": args.get("reason"), "page": page}


def find_calls(f: dict[str, Any]) -> list[Row]:
    return context.db().all("ui_calls", {
        "state": f["state"], "function": f["function"], "token": f["token"],
        "since": RANGES.get(f["range"] or ""), "id": f["id"], "reason": f["reason"],
        "limit": PAGE_SIZE + 1, "offset": (f["page"] - 1) * PAGE_SIZE})


def _page_link(f: dict[str, Any], page: int) -> str:
    query = {k: v for k, v in f.items() if v not in (None, "") and k != "page"}
    return url_for("ui.calls") + "?" + urlencode({**query, "page": page})


@bp.get("/calls")
def calls() -> str:
    f = call_filters()
    rows = find_calls(f)
    return render_template("calls.html", f=f, rows=rows[:PAGE_SIZE], states=STATES,
                           ranges=RANGES, more=len(rows) > PAGE_SIZE,
                           prev_link=_page_link(f, f["page"] - 1) if f["page"] > 1 else None,
                           next_link=_page_link(f, f["page"] + 1))


@bp.get("/api/calls")
def calls_json() -> Response:
    """The calls table's rows, rendered, for the page's polling."""
    rows = find_calls(call_filters())
    return jsonify({"html": render_template("calls_rows.html", rows=rows[:PAGE_SIZE]),
                    "ids": [r["id"] for r in rows[:PAGE_SIZE]]})


def _call(call_id: str) -> Row:
    row = context.db().one("ui_call", {"id": call_id, "json_limit": JSON_RESULT_SHOWN})
    if row is None:
        abort(404, f"no call with id {call_id}")
    return row


def _call_with_output(call_id: str) -> Row:
    """The call and what it printed, read by the logs route's own query, so the page
    and `podfn logs` agree on where the output of a running or finished call lives."""
    row = _call(call_id)
    logs = context.db().one("get_logs", {"id": call_id}) or {}
    return {**row, "stdout": logs.get("stdout", ""), "stderr": logs.get("stderr", "")}


def attempts(call_id: str) -> list[Row]:
    """The attempts with what each one's end meant for the user's `retries`."""
    rows = context.db().all("get_attempts", {"id": call_id})
    for a in rows:
        a["retry"] = {"retrying": "retried: spent one of the call's retries",
                      "disrupted": "retried by the platform (a disruption: no retry spent)",
                      "deferred": "deferred by the platform (no retry spent)"}.get(a["state"], "")
    return rows


@bp.get("/calls/<call_id>")
def call(call_id: str) -> str:
    row = _call_with_output(call_id)
    return render_template("call.html", c=row, attempts=attempts(call_id),
                           spec=context.public_spec(row["spec"]), final=row["state"] in FINAL,
                           result_json=_pretty(row["result_json"]))


def _pretty(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return json.dumps(json.loads(text), indent=2)
    except ValueError:
        return text


@bp.get("/api/calls/<call_id>/live")
def call_live(call_id: str) -> Response:
    """State, output and the attempts table of a call, for the page's polling."""
    row = _call_with_output(call_id)
    return jsonify({"state": row["state"], "reason": row["reason"], "stdout": row["stdout"],
                    "stderr": row["stderr"], "final": row["state"] in FINAL,
                    "attempts": render_template("attempts.html", attempts=attempts(call_id))})


@bp.post("/calls/<call_id>/cancel")
def cancel(call_id: str) -> BaseResponse:
    row = _call(call_id)
    if not can("cancel") or (not me().has("admin") and row["owner"] != me().token_id):
        abort(403, f"this token ({me().name}) may not cancel call {call_id}: cancelling needs "
                   "the submit or invoke scope and the call's own token, or admin")
    context.db().one("cancel", {"id": call_id, "reason": f"cancelled by {me().name} (dashboard)"})
    return redirect(url_for("ui.call", call_id=call_id))


# --- functions ---------------------------------------------------------------------

@bp.get("/functions")
def functions() -> str:
    rows = context.db().all("list_functions")
    return render_template("functions.html", rows=rows)


@bp.get("/functions/<name>")
def function(name: str) -> str:
    live = context.db().one("get_function", {"name": name})
    if live is None:
        abort(404, f"no deployed function named {name}")
    return render_template(
        "function.html", f=live, spec=context.public_spec(live["spec"]),
        versions=context.db().all("function_versions", {"name": name}),
        usage=usage.function_usage(context.db(), name),
        recent=find_calls({"state": None, "function": name, "token": None, "range": None,
                           "id": None, "reason": None, "page": 1})[:10])


@bp.post("/functions/<name>/rollback")
def rollback(name: str) -> BaseResponse:
    if not can("rollback"):
        abort(403, f"this token ({me().name}) lacks the deploy scope rollback needs")
    try:
        target = int(request.form.get("version", ""))
    except ValueError:
        abort(400, "choose the version to roll back to")
    with context.db().transaction() as tx:
        tx.all("lock_function_name", {"name": name})
        versions = [v["version"] for v in tx.all("function_versions", {"name": name})]
        if target not in versions:
            abort(400, f"{name} has no version {target}; versions: {versions}")
        tx.all("set_live_version", {"name": name, "version": target})
    return redirect(url_for("ui.function", name=name))


@bp.post("/functions/<name>/invoke")
def invoke(name: str) -> BaseResponse:
    if not can("invoke"):
        abort(403, f"this token ({me().name}) lacks the invoke scope")
    live = context.db().one("get_function", {"name": name})
    if live is None:
        abort(404, f"no deployed function named {name}")
    try:
        args = json.loads(request.form.get("args") or "[]")
        kwargs = json.loads(request.form.get("kwargs") or "{}")
    except ValueError as exc:
        abort(400, f"arguments must be JSON: {exc}")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        abort(400, "args must be a JSON list and kwargs a JSON object")
    # A plain pickle of JSON values, built here, as the API's invoke does.
    payload = pickle.dumps((args, kwargs), protocol=4)
    calls_ = NewCalls(name, live["function_digest"], live["spec"], live["client_python"],
                      live["client_cloudpickle"], owner=me().token_id,
                      function_version=live["version"], result_format="json")
    with context.db().transaction() as tx:
        [call_id] = record_calls(tx, calls_, [payload])
    return redirect(url_for("ui.call", call_id=call_id))
