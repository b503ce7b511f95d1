"""The glue between the models in api/schemas.py, the views, and /openapi.json.

A view declares its operation with `@operation(...)`: a summary, the model of
its body, the statuses it answers with their models, and links to the
operations that take what it created. The same declaration validates requests
(`json_body`, `form_meta`) and, walked over the app's URL map, produces the
OpenAPI 3.1 document: one description of the contract, not two.

A body is first checked against the very JSON Schema the document publishes
for its model (jsonschema-rs, draft 2020-12, ECMA-262 patterns as JSON Schema
means them), then read into the model for its types. pydantic alone enforces
only part of its own schema (not `propertyNames`, `anyOf` or a `pattern` given
as extra schema), and Python's `$` also matches before a final newline where
ECMA-262's does not: checking the published schema itself is what makes "the
document forbids it" and "the API refuses it" the same statement.

pydantic was chosen over flask-smorest/spectree/flask-openapi3 because it is
already in our dependency tree, it is the leanest fit for our two body kinds
(JSON, and multipart whose `meta` part is JSON beside opaque pickles), and it
lets the views keep our JSON error shape without a framework's error handler.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jsonschema_rs
from flask import Flask, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from podfn import frames
from podfn_platform.api import forms, inputs, schemas
from podfn_platform.api.errors import APIError

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

REASONS = {
    200: "OK", 201: "Created", 202: "Accepted, still running", 400: "Malformed request",
    401: "No valid bearer token", 403: "The token lacks a scope", 404: "Not found",
    409: "Conflicts with the current state", 413: "Request too large",
    422: "Invalid field (named in `error.field`)", 503: "The database is unavailable",
}
# Every authenticated operation can answer these (400: text no database can store).
COMMON = (400, 401, 403, 503)
REF = "#/components/schemas/{model}"
PATH_SEGMENT = r"^[^\x00/]+$"
PATH_PATTERNS = {"call_id": r"^(?!(?:wait|cancel)$)[^\x00/]+$"}


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: dict[int, Any]
    body: type[BaseModel] | None = None
    body_required: bool = True
    form: dict[str, Any] | None = None  # multipart: part name -> schema (model for `meta`)
    form_required: tuple[str, ...] = ()
    query: tuple[dict[str, Any], ...] = ()
    links: dict[int, dict[str, Any]] = field(default_factory=dict)
    public: bool = False
    headers: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Issue 12 (bytes): more media types for a status answered with a model (a view that
    # answers JSON or, when asked, a binary body): status -> {media type: {schema}}.
    more_content: dict[int, dict[str, Any]] = field(default_factory=dict)


def operation(summary: str, responses: dict[int, Any], **options: Any) -> Callable[[F], F]:
    """Attach the OpenAPI description of a view to it."""

    def attach(view: F) -> F:
        view.podfn_operation = Operation(summary, responses, **options)  # type: ignore[attr-defined]
        return view

    return attach


def _loc(error: Any) -> str:
    return ".".join(str(p) for p in error["loc"]) or "body"


@functools.cache
def _root(model: type[BaseModel]) -> dict[str, Any]:
    """The published schema of `model`, with the components it refers to."""
    return {"$ref": REF.format(model=model.__name__),
            "components": {"schemas": components([model])}}


@functools.cache
def _validator(model: type[BaseModel]) -> jsonschema_rs.Validator:
    return jsonschema_rs.Draft202012Validator(_root(model))


def _described(root: dict[str, Any], error: jsonschema_rs.ValidationError) -> str:
    """A pattern refusal in the words of the field's description, when it has one (a CPU
    quantity's pattern says less to people than "1m to 1024 cores: ...")."""
    schema: Any = root
    for part in list(error.schema_path)[:-1]:
        schema = schema[part] if isinstance(schema, dict) else schema[int(part)]
    description = schema.get("description") if isinstance(schema, dict) else None
    if error.kind.name == "pattern" and description:
        return f"{json.dumps(error.instance)} is not {description}"
    return error.message


def _specific(error: jsonschema_rs.ValidationError) -> jsonschema_rs.ValidationError | _Needs:
    """The error inside an anyOf that says most: not "is not null" beside a real reason."""
    while error.kind.name in ("anyOf", "oneOf"):
        inner = [e for branch in error.kind.as_dict().get("context", []) for e in branch]
        deeper = [e for e in inner if e.kind.name not in ("type", "required")
                  or len(e.instance_path) > len(error.instance_path)]
        if not deeper:
            wanted = [e.kind.as_dict()["property"] for e in inner if e.kind.name == "required"]
            if wanted and len(wanted) == len(inner):
                return _Needs(error, wanted)
            break
        error = deeper[0]
    return error


class _Needs:
    """An anyOf of `required`s (CancelBody): say which fields would do."""

    def __init__(self, error: jsonschema_rs.ValidationError, fields: list[str]) -> None:
        self.instance_path = error.instance_path
        self.fields = fields


def _schema_error(error: jsonschema_rs.ValidationError, root: dict[str, Any]) -> tuple[str, str]:
    """(the field's dotted name, why) for the first way a body breaks its schema."""
    found = _specific(error)
    if isinstance(found, _Needs):
        return (".".join(str(p) for p in found.instance_path),
                "needs at least one of " + ", ".join(found.fields))
    error = found
    path = [str(p) for p in error.instance_path]
    kind = error.kind.as_dict()
    if error.kind.name == "additionalProperties" and kind.get("unexpected"):
        path.append(str(kind["unexpected"][0]))
        return ".".join(path), "is not a field this request takes"
    if error.kind.name == "required":
        path.append(str(kind["property"]))
        return ".".join(path), "is required"
    return ".".join(path), _described(root, error)


def _refuse(name: str, message: str, where: str) -> APIError:
    if name.startswith("spec."):  # hints are named as podfn.spec's InvalidSpec names them
        return APIError(422, "invalid_spec", f"{name}: {message}", field=name)
    name = ".".join(part for part in ((where if where != "body" else ""), name) if part)
    return APIError(422, "invalid_field", f"{name or where}: {message}", field=name or where)


def validate(model: type[M], value: Any, where: str) -> M:
    """`value` as `model` if the document's schema for it allows it; else 422 naming the field."""
    if not isinstance(value, dict):
        raise APIError(400, "malformed_json", f"{where} must be a JSON object")
    for error in _validator(model).iter_errors(value):
        raise _refuse(*_schema_error(error, _root(model)), where)
    try:
        return model.model_validate(value)
    except ValidationError as exc:  # a type the schema allows but the model does not: a bug
        first = exc.errors()[0]
        raise _refuse(_loc(first), first["msg"], where) from None


def json_body(model: type[M]) -> M:
    """The JSON body, checked for storable text (api/inputs.py), as `model`."""
    body = inputs.json_body()
    if body is None:
        raise APIError(400, "malformed_json", "the body must be a JSON object (send it with "
                       "Content-Type: application/json)")
    return validate(model, body, "body")


def form_meta(model: type[M]) -> M:
    """The `meta` (a JSON object) of a multipart or framed submission as `model`."""
    if forms.is_framed():
        return validate(model, forms.meta_json(), "meta")
    raw = request.form.get("meta")
    if raw is None and "meta" in request.files:
        raw = request.files["meta"].read().decode("utf-8", "replace")
    if raw is None:
        raise APIError(400, "missing_field", "the form field 'meta' (JSON) is required",
                       field="meta")
    return validate(model, inputs.loads(raw, "meta"), "meta")


# The document


def _json(schema: Any, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _response(status: int, spec: Any, op: Operation) -> dict[str, Any]:
    if isinstance(spec, dict):
        out = dict(spec)
    elif isinstance(spec, type) and issubclass(spec, BaseModel):
        out = _json(_ref(spec), REASONS.get(status, ""))
    else:
        out = _json(_ref(schemas.Error), spec if isinstance(spec, str) else REASONS[status])
    if status in op.more_content:
        out["content"] = {**out["content"], **op.more_content[status]}
    if status in op.headers:
        out["headers"] = op.headers[status]
    if status in op.links:
        out["links"] = op.links[status]
    return out


def _statuses(op: Operation) -> dict[int, Any]:
    """What `op` declares, and what any request can meet before its view runs: 400 for a path
    or query parameter no database can store (api/inputs.py, every route), 413 for a body
    larger than PODFN_MAX_REQUEST_BYTES."""
    out = {400: None, **op.responses}
    if op.body is not None or op.form is not None:
        out.setdefault(413, None)
    return out


def _request_body(op: Operation) -> dict[str, Any] | None:
    if op.body is not None:
        return {"required": op.body_required,
                "content": {"application/json": {"schema": _ref(op.body)}}}
    if op.form is not None:
        properties = {name: _ref(s) if isinstance(s, type) else s for name, s in op.form.items()}
        encoding = {name: {"contentType": "application/json"}
                    for name, s in op.form.items() if isinstance(s, type)}
        content: dict[str, Any] = {"multipart/form-data": {
            "schema": {"type": "object", "required": list(op.form_required),
                       "properties": properties},
            "encoding": encoding}}
        # The Python client's framing of the same fields (api/forms.py): documented so
        # that clients in other languages may use it and the fuzzer sends it.
        content[frames.MEDIA_TYPE] = {"schema": {"type": "string", "format": "binary"}}
        return {"required": True, "content": content,
                "description": "The fields as multipart/form-data, or as "
                               f"{frames.MEDIA_TYPE}: length-prefixed frames (an 8-byte "
                               "big-endian length, then the bytes), frame 0 a JSON object "
                               '{"meta": {...}, "parts": [field, ...]} naming each '
                               "following frame's field."}
    return None


def _models(ops: list[Operation]) -> set[type[BaseModel]]:
    found: set[type[BaseModel]] = {schemas.Error}
    for op in ops:
        for spec in [op.body, *op.responses.values(), *(op.form or {}).values()]:
            if isinstance(spec, type) and issubclass(spec, BaseModel):
                found.add(spec)
    return found


def _path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    found = re.findall(r"<(?:([^:<>]+):)?([^<>]+)>", rule)
    path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "string", "pattern": PATH_PATTERNS.get(kind, PATH_SEGMENT)}}
              for kind, name in found]
    return path, params


def _nullable(schema: Any) -> Any:
    """`anyOf: [{type: T, ...}, {type: null}]` (pydantic's `T | None`) as `type: [T, null]`.

    The same meaning, but fuzzers mutate a branch of an anyOf on its own and
    then call a null (valid by the other branch) a schema violation.
    """
    if isinstance(schema, list):
        return [_nullable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _nullable(value) for key, value in schema.items()}
    kinds = out.get("type")
    if "default" in out and out["default"] is None and "null" not in (
            kinds if isinstance(kinds, list) else [kinds]) and "anyOf" not in out:
        del out["default"]  # absent, not null: a field that may not be null has no null default
    branches = out.get("anyOf")
    if (isinstance(branches, list) and len(branches) == 2 and {"type": "null"} in branches):
        other = branches[0] if branches[1] == {"type": "null"} else branches[1]
        if isinstance(other.get("type"), str) and not {"$ref", "enum", "const"} & set(other):
            del out["anyOf"]  # what was said beside the anyOf (json_schema_extra) wins
            out = {**other, **out, "type": [other["type"], "null"]}
    return out


def components(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """The JSON Schemas of `models` and of every model they use, by name."""
    _, defs = models_json_schema([(m, "validation") for m in sorted(models,
                                                                     key=lambda m: m.__name__)],
                                 ref_template=REF)
    return {**_nullable(defs.get("$defs", {})), "JsonValue": schemas.JSON_VALUE}


def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of `app` that declares an operation."""
    paths: dict[str, dict[str, Any]] = {}
    ops: list[Operation] = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op: Operation | None = getattr(app.view_functions[rule.endpoint], "podfn_operation", None)
        if op is None:
            continue
        ops.append(op)
        path, params = _path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            entry: dict[str, Any] = {
                "operationId": rule.endpoint.replace(".", "_") + "_" + method.lower(),
                "summary": op.summary,
                "responses": {str(s): _response(s, spec, op)
                              for s, spec in sorted(_statuses(op).items())},
            }
            if params or op.query:
                entry["parameters"] = [*params, *op.query]
            body = _request_body(op)
            if body:
                entry["requestBody"] = body
            if op.public:
                entry["security"] = []
            paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "podfn", "version": "1",
                 "description": "Python functions on Kubernetes, one pod per call. Errors are "
                                "JSON: {\"error\": {\"code\", \"message\", \"field\"}}."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": components(_models(ops))},
    }


def links(param: str, expression: str, **operations: str) -> dict[str, Any]:
    """OpenAPI links: `param` of each named operation comes from `expression` of this response."""
    return {name: {"operationId": op, "parameters": {param: expression}}
            for name, op in operations.items()}
