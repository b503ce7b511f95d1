"""Deployed functions: versioned deploys, rollback, calls from Python, and JSON invoke over HTTP.

An HTTP invoke turns the JSON arguments into a plain pickle (made here, from
JSON: nothing a client sent is ever unpickled) and asks the runtime for a
JSON result, so any language can call a deployed function and read its
answer.
"""

from __future__ import annotations

import pickle
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from podfn import spec as call_spec
from podfn_platform.api import context, forms, idempotency, inputs, results
from podfn_platform.api.auth import principal, requires
from podfn_platform.api.calls import created, describe, summary, wait_finished, wait_seconds
from podfn_platform.api.errors import APIError
from podfn_platform.database import Row, Transaction, jsonb
from podfn_platform.submission import NewCalls, record_calls, store_payload

bp = Blueprint("functions", __name__, url_prefix="/v1/functions")

DEFAULT_INVOKE_WAIT = 30.0




def _live(name: str) -> Row:
    row = context.db().one("get_function", {"name": name})
    if row is None:
        raise APIError(404, "not_found", f"no deployed function named {name!r}; see "
                       "`podfn functions`, or deploy it with `podfn deploy FILE`")
    return row


def _summary(row: Row) -> dict[str, Any]:
    return {"name": row["name"], "live_version": row["live_version"],
            "spec": context.public_spec(row["spec"]),
            "deployed_at": context.iso(row["deployed_at"]), "deployed_by": row["deployed_by"]}


@bp.post("")
@requires("deploy")
def deploy() -> tuple[Response, int]:
    meta = forms.meta()
    name = inputs.function_name(meta.get("name"), "name")
    python, cloudpickle = forms.client_versions(meta)
    validated = call_spec.validate(meta.get("spec") or {})
    function = forms.function_part()
    with context.db().transaction() as tx:
        tx.all("lock_function_name", {"name": name})
        key = store_payload(tx, function)
        live = tx.one("get_function", {"name": name})
        if live is not None and (live["function_digest"], live["spec"], live["client_python"],
                                 live["client_cloudpickle"]) == (key, validated, python,
                                                                 cloudpickle):
            # An unchanged deploy changes nothing (no new version to roll back over).
            return jsonify({"name": name, "version": live["version"],
                            "live_version": live["version"], "unchanged": True,
                            "deployed_at": context.iso(live["deployed_at"])}), 200
        row = tx.one("insert_function_version", {
            "name": name, "function_digest": key, "spec": jsonb(validated),
            "client_python": python, "client_cloudpickle": cloudpickle,
            "deployed_by": principal().name})
        assert row is not None
        tx.all("set_live_version", {"name": name, "version": row["version"]})
    return jsonify({"name": name, "version": row["version"], "live_version": row["version"],
                    "unchanged": False, "deployed_at": context.iso(row["deployed_at"])}), 201


@bp.get("")
@requires("read", "deploy")
def list_functions() -> Response:
    return jsonify({"functions": [
        {**_summary(r), "latest_version": r["latest_version"]}
        for r in context.db().all("list_functions")]})


@bp.get("/<name>")
@requires("read", "deploy", "submit", "invoke")
def get(name: str) -> Response:
    out = _summary(_live(name))
    out["versions"] = [{"version": v["version"], "spec": context.public_spec(v["spec"]),
                        "deployed_at": context.iso(v["deployed_at"]), "deployed_by": v["deployed_by"]}
                       for v in context.db().all("function_versions", {"name": name})]
    return jsonify(out)


@bp.post("/<name>/rollback")
@requires("deploy")
def rollback(name: str) -> Response:
    body = inputs.json_body() or {}
    if not isinstance(body, dict):
        raise APIError(400, "malformed_json", "expected a JSON object {'version': N}")
    target = body.get("version")
    with context.db().transaction() as tx:
        tx.all("lock_function_name", {"name": name})
        live = tx.one("get_function", {"name": name})
        if live is None:
            raise APIError(404, "not_found", f"no deployed function named {name!r}")
        versions = [v["version"] for v in tx.all("function_versions", {"name": name})]
        if target is None:
            older = [v for v in versions if v < live["live_version"]]
            if not older:
                raise APIError(409, "no_older_version", f"{name} is at its first version "
                               f"({live['live_version']}); there is nothing to roll back to")
            target = older[-1]
        if isinstance(target, bool) or not isinstance(target, int) or target not in versions:
            raise APIError(422, "invalid_field", f"version must be one of {versions}",
                           field="version")
        tx.all("set_live_version", {"name": name, "version": target})
    return jsonify({**_summary(_live(name)), "previous_version": live["live_version"]})


def _deployed_calls(live: Row, spec: dict[str, Any], *, python: str, cloudpickle: str,
                    result_format: str) -> NewCalls:
    return NewCalls(live["name"], live["function_digest"], spec, python, cloudpickle,
                    owner=principal().token_id, function_version=live["version"],
                    result_format=result_format)


@bp.post("/<name>/calls")
@requires("submit")
def submit(name: str) -> tuple[Response, int]:
    """Calls of the live version with pickled arguments (Python's `Function.lookup`)."""
    meta = forms.meta()
    python, cloudpickle = forms.client_versions(meta)
    live = _live(name)
    overrides = meta.get("spec") or {}
    if not isinstance(overrides, dict):
        raise APIError(422, "invalid_spec", "spec must be an object of hint overrides",
                       field="meta.spec")
    spec = call_spec.validate({**live["spec"], **overrides})
    args = forms.args_parts()
    calls = _deployed_calls(live, spec, python=python, cloudpickle=cloudpickle,
                            result_format="pickle")
    fingerprint = forms.fingerprint(name, live["version"], meta, *args)
    ids, replayed = idempotency.create_once(context.db(), fingerprint,
                                            lambda tx: record_calls(tx, calls, args))
    return created(ids, replayed)


def _invoke_body() -> tuple[list[Any], dict[str, Any]]:
    body = inputs.json_body()
    if body is None:
        raise APIError(400, "malformed_json", "the body must be JSON: "
                       '{"args": [...], "kwargs": {...}}')
    if not isinstance(body, dict):
        raise APIError(400, "malformed_json", 'the body must be a JSON object: '
                       '{"args": [...], "kwargs": {...}}')
    unknown = sorted(set(body) - {"args", "kwargs"})
    if unknown:
        raise APIError(400, "unknown_field", f"unknown field {unknown[0]!r}; the body takes "
                       "'args' (a list) and 'kwargs' (an object)", field=unknown[0])
    args, kwargs = body.get("args", []), body.get("kwargs", {})
    if not isinstance(args, list):
        raise APIError(400, "invalid_field", "args must be a JSON list", field="args")
    if not isinstance(kwargs, dict):
        raise APIError(400, "invalid_field", "kwargs must be a JSON object", field="kwargs")
    return args, kwargs


def invocation(row: Row, name: str) -> Response:
    """A finished invoke as JSON: its value (streamed from Postgres), or its error."""
    out = summary(row)
    out["function"] = name
    if "error" in out:
        out["error"].pop("pickle_size", None)
    return results.outcome_response(row, out)


@bp.post("/<name>/invoke")
@requires("invoke", "submit")
def invoke(name: str) -> tuple[Response, int, dict[str, str]] | tuple[Response, int]:
    """Run the live version with JSON arguments; its JSON result if it finishes in `wait` s."""
    args, kwargs = _invoke_body()
    live = _live(name)
    wait = wait_seconds(request.args.get("wait", DEFAULT_INVOKE_WAIT))
    # A plain pickle of JSON values: built here, loadable by any runtime.
    payload = pickle.dumps((args, kwargs), protocol=4)
    calls = _deployed_calls(live, live["spec"], python=live["client_python"],
                            cloudpickle=live["client_cloudpickle"], result_format="json")

    def create(tx: Transaction) -> list[str]:
        return record_calls(tx, calls, [payload])

    [call_id], _ = idempotency.create_once(
        context.db(), forms.fingerprint(name, {"args": args, "kwargs": kwargs}), create)
    rows = wait_finished([call_id], wait)
    if rows:
        return invocation(rows[0], name), 200
    location = url_for("calls.result", call_id=call_id)
    row = context.db().one("get_call", {"id": call_id})
    assert row is not None
    return jsonify({**describe(row), "location": location}), 202, {"Location": location}

