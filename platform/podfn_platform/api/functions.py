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
from podfn_platform.api import context, contract, forms, inputs, results, schemas
from podfn_platform.api.auth import principal, requires
from podfn_platform.api.calls import (
    CALL_LINKS,
    FRAMED_CREATED,
    create_and_wait,
    create_calls,
    describe,
    summary,
    wait_seconds,
)
from podfn_platform.api.contract import COMMON, operation
from podfn_platform.api.errors import APIError
from podfn_platform.database import Row, jsonb
from podfn_platform.submission import NewCalls, store_payload

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


# Not rollback: a version the stateful fuzzer makes up is rightly a 404, not a lost function.
FUNCTION_LINKS = contract.links(
    "name", "$response.body#/name", GetFunction="functions_get_get",
    Calls="functions_submit_post", Invoke="functions_invoke_post",
    Usage="usage_function_usage_get")
# An invoke's call, finished (200) or not yet (202), is followed like a submitted one.
INVOKE_LINKS = {status: contract.links(
    "call_id", "$response.body#/id", GetCall="calls_get_get", Result="calls_result_get",
    Cancel="calls_cancel_post", Logs="calls_logs_get") for status in (200, 202)}


@bp.post("")
@requires("deploy")
@operation("Deploy a function: a new live version unless unchanged (scope deploy)",
           {201: schemas.Deployed, 200: schemas.Deployed, 413: None, 422: None,
            **dict.fromkeys(COMMON)},
           form=forms.DEPLOY_FORM, form_required=("meta", "function"),
           links={201: FUNCTION_LINKS, 200: FUNCTION_LINKS})
def deploy() -> tuple[Response, int]:
    parsed = contract.form_meta(schemas.DeployMeta)
    name = parsed.name  # reachable again as /v1/functions/{name}: FUNCTION_NAME says how
    python, cloudpickle = parsed.client.python, parsed.client.cloudpickle
    validated = call_spec.validate(forms.spec(parsed.spec))
    function = forms.function_part()
    with context.db().transaction() as tx:
        tx.all("lock_function_name", {"name": name})
        key = store_payload(tx, function, forms.payload_digest(function))
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
        tx.all("set_version_owner", {"name": name, "version": row["version"],
                                     "owner": principal().token_id})
        tx.all("set_live_version", {"name": name, "version": row["version"]})
    return jsonify({"name": name, "version": row["version"], "live_version": row["version"],
                    "unchanged": False, "deployed_at": context.iso(row["deployed_at"])}), 201


@bp.get("")
@requires("read", "deploy")
@operation("Deployed functions", {200: schemas.FunctionList, **dict.fromkeys(COMMON)})
def list_functions() -> Response:
    return jsonify({"functions": [
        {**_summary(r), "latest_version": r["latest_version"]}
        for r in context.db().all("list_functions")]})


@bp.get("/<name>")
@requires("read", "deploy", "submit", "invoke")
@operation("A deployed function and its versions",
           {200: schemas.Function, 404: None, **dict.fromkeys(COMMON)})
def get(name: str) -> Response:
    out = _summary(_live(name))
    out["versions"] = [{"version": v["version"], "spec": context.public_spec(v["spec"]),
                        "deployed_at": context.iso(v["deployed_at"]), "deployed_by": v["deployed_by"]}
                       for v in context.db().all("function_versions", {"name": name})]
    return jsonify(out)


@bp.post("/<name>/rollback")
@requires("deploy")
@operation("Make an older version live (default: the one before)",
           {200: schemas.Function, 404: None, 409: None, 422: None, **dict.fromkeys(COMMON)},
           body=schemas.RollbackBody, body_required=False)
def rollback(name: str) -> Response:
    raw = inputs.json_body()
    if raw is None and request.get_data(cache=True):
        raise APIError(400, "malformed_json", 'the body must be a JSON object {"version": N} '
                       "(or empty, for the version before the live one)")
    target = None if raw is None else contract.validate(schemas.RollbackBody, raw,
                                                        "body").version
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
        if target not in versions:
            raise APIError(404, "no_such_version", f"version must be one of {versions}: {name} "
                           f"has no version {target}", field="version")
        tx.all("set_live_version", {"name": name, "version": target})
    return jsonify({**_summary(_live(name)), "previous_version": live["live_version"]})


def _deployed_calls(live: Row, spec: dict[str, Any], *, python: str, cloudpickle: str,
                    result_format: str) -> NewCalls:
    owner = principal().token_id
    return NewCalls(live["name"], live["function_digest"], spec, python, cloudpickle,
                    owner=owner, function_version=live["version"],
                    result_format=result_format,
                    by_deployer=owner == live.get("deployed_by_owner"))


@bp.post("/<name>/calls")
@requires("submit")
@operation("Calls of the live version with pickled arguments (scope submit)",
           {201: schemas.CallsCreated, 200: schemas.CallsCreated, 404: None,
            409: "The Idempotency-Key was used with a different request", 413: None,
            422: None, **dict.fromkeys(COMMON)},
           form=forms.DEPLOYED_CALLS_FORM, form_required=("meta", "args"),
           query=(forms.IDEMPOTENCY, forms.SUBMIT_WAIT), links=CALL_LINKS,
           more_content=FRAMED_CREATED)
def submit(name: str) -> tuple[Response, int]:
    """Calls of the live version with pickled arguments (Python's `Function.lookup`)."""
    parsed = contract.form_meta(schemas.DeployedCallsMeta)
    meta = parsed.model_dump(mode="json", exclude_none=True)
    python, cloudpickle = parsed.client.python, parsed.client.cloudpickle
    live = _live(name)
    overrides = forms.spec(parsed.spec)
    spec = call_spec.validate({**live["spec"], **overrides})
    args = forms.args_parts()
    calls = _deployed_calls(live, spec, python=python, cloudpickle=cloudpickle,
                            result_format="pickle")
    return create_calls(forms.fingerprint(name, live["version"], meta, *args), calls, args)


def _invoke_body() -> tuple[list[Any], dict[str, Any]]:
    raw = inputs.json_body(allow_nul=True)  # pickled, never stored as text
    if raw is None:
        raise APIError(400, "malformed_json", "the body must be JSON: "
                       '{"args": [...], "kwargs": {...}}')
    body = contract.validate(schemas.InvokeBody, raw, "body")
    return body.args, body.kwargs


def invocation(row: Row, name: str) -> Response:
    """A finished invoke as JSON: its value (streamed from Postgres), or its error."""
    out = summary(row)
    out["function"] = name
    if "error" in out:
        out["error"].pop("pickle_size", None)
    return results.outcome_response(row, out)


@bp.post("/<name>/invoke")
@requires("invoke", "submit")
@operation("Invoke the live version with JSON; its JSON result if it finishes within `wait` "
           "(default 30) seconds (scope invoke or submit)",
           {200: schemas.Outcome, 202: schemas.Pending, 404: None,
            409: "The Idempotency-Key was used with a different request", 413: None, 422: None,
            **dict.fromkeys(COMMON)},
           body=schemas.InvokeBody, query=(forms.WAIT, forms.IDEMPOTENCY),
           headers={202: {"Location": {"schema": {"type": "string"}}}}, links=INVOKE_LINKS)
def invoke(name: str) -> tuple[Response, int, dict[str, str]] | tuple[Response, int]:
    """Run the live version with JSON arguments; its JSON result if it finishes in `wait` s."""
    args, kwargs = _invoke_body()
    live = _live(name)
    wait = wait_seconds(request.args.get("wait", DEFAULT_INVOKE_WAIT))
    # A plain pickle of JSON values: built here, loadable by any runtime.
    payload = pickle.dumps((args, kwargs), protocol=4)
    calls = _deployed_calls(live, live["spec"], python=live["client_python"],
                            cloudpickle=live["client_cloudpickle"], result_format="json")

    [call_id], _, rows = create_and_wait(
        forms.fingerprint(name, {"args": args, "kwargs": kwargs}), calls, [payload], wait,
        framed=False)
    if rows:
        return invocation(rows[0], name), 200
    location = url_for("calls.result", call_id=call_id)
    row = context.db().one("get_call", {"id": call_id})
    assert row is not None
    return jsonify({**describe(row), "location": location}), 202, {"Location": location}

