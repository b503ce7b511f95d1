"""The API's OpenAPI 3.1 document, served at /openapi.json.

Status codes are the same across endpoints: 200 read/answered, 201
created, 202 accepted and still running, 400 malformed request, 401 no
valid token, 403 the token lacks a scope, 404 no such thing, 409 conflict
with current state, 413 too large, 422 well-formed but invalid, 503 the
database is unavailable. A test checks that every route is documented.
"""

from __future__ import annotations

from typing import Any

STATES = ["queued", "launching", "running", "succeeded", "failed", "timed_out", "cancelled"]
SCOPES = ["submit", "invoke", "deploy", "read", "admin"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request", 401: "No valid bearer token",
            403: "The token lacks a scope", 404: "Not found",
            409: "Conflicts with the current state", 413: "Request too large",
            422: "Invalid field (named in `error.field`)", 503: "The database is unavailable"}
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


COMMON = (400, 401, 403, 503)  # 400: text no database can store (api/inputs.py)
CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
WAIT = {"name": "wait", "in": "query", "required": False,
        "schema": {"type": "number", "minimum": 0},
        "description": "seconds to wait for the call to finish (capped by the server)"}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
               "schema": {"type": "string", "minLength": 1, "maxLength": 200},
               "description": "the same key with the same body returns the original calls"}
MULTIPART_SUBMIT = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["meta", "function", "args"],
    "properties": {
        "meta": {"type": "string", "description": "JSON: {function_name, spec, client}"},
        "function": {"type": "string", "format": "binary",
                     "description": "the cloudpickled function (never unpickled by the API)"},
        "args": {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": "one cloudpickled (args, kwargs) per call"},
    }}}}}


def document() -> dict[str, Any]:
    calls_created = _json({"type": "object", "properties": {
        "calls": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string"}}}},
        "replayed": {"type": "boolean"}}}, "the calls recorded")
    paths: dict[str, Any] = {
        "/healthz": {"get": {"summary": "Liveness", "security": [],
                             "responses": {"200": _json({"type": "object"}, "alive")}}},
        "/readyz": {"get": {"summary": "Readiness (checks the database)", "security": [],
                            "responses": {"200": _json({"type": "object"}, "ready"),
                                          **_errors(503)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics: calls by state, queue depth",
                             "security": [], "responses": {"200": {
                                 "description": "Prometheus text format",
                                 "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [],
                                  "responses": {"200": _json({"type": "object"}, "OpenAPI")}}},
        "/v1/calls": {
            "post": {"summary": "Submit calls of a pickled function (scope submit)",
                     "parameters": [IDEMPOTENCY], "requestBody": MULTIPART_SUBMIT,
                     "responses": {"201": calls_created,
                                   "200": _json({"type": "object"}, "replayed (Idempotency-Key)"),
                                   **_errors(400, 413, 422, *COMMON)}},
            "get": {"summary": "List calls (scope read)",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"type": "string",
                                                                    "enum": STATES}},
                        {"name": "function", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                    "responses": {"200": _json({"type": "object", "properties": {
                        "calls": {"type": "array", "items": _ref("Call")}}}, "calls"),
                        **_errors(400, *COMMON)}},
        },
        "/v1/calls/wait": {"post": {
            "summary": "Wait until any of the calls finishes; the finished ones with outcomes",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["ids"], "properties": {
                    "ids": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                            "maxItems": 10000},
                    "wait": {"type": "number", "minimum": 0}}}}}},
            "responses": {"200": _json({"type": "object", "properties": {
                "calls": {"type": "array", "items": _ref("Outcome")}}}, "finished calls"),
                **_errors(400, 404, 422, *COMMON)}}},
        "/v1/calls/cancel": {"post": {
            "summary": "Cancel many calls: by ids and/or filters (own calls only, unless admin)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "properties": {
                    "ids": {"type": "array", "items": {"type": "string"}},
                    "function": {"type": "string"},
                    "state": {"type": "string", "enum": ["queued", "launching", "running"]},
                    "mine": {"type": "boolean", "description": "only calls made with this token"},
                    "dry_run": {"type": "boolean",
                                "description": "say what would be cancelled, change nothing"}},
            }}}},
            "responses": {"200": _json({"type": "object", "properties": {
                "cancelled": {"type": "array", "items": {"type": "string"}},
                "matched": {"type": "array", "items": {"type": "string"}},
                "count": {"type": "integer"}, "dry_run": {"type": "boolean"}}},
                "the calls cancelled (or, with dry_run, that would be)"),
                **_errors(400, 422, *COMMON)}}},
        "/v1/calls/{call_id}": {"get": {
            "summary": "A call and its attempts", "parameters": [CALL_ID],
            "responses": {"200": _json(_ref("Call"), "the call"), **_errors(404, *COMMON)}}},
        "/v1/calls/{call_id}/result": {"get": {
            "summary": "A call's outcome, waiting up to `wait` seconds: a pickled result is "
                       "streamed as octet-stream; an HTTP invoke's result, or a call that ended "
                       "without one, is JSON (header X-Podfn-State: the state)",
            "parameters": [CALL_ID, WAIT],
            "responses": {"200": {"description": "finished", "content": {
                              "application/octet-stream": {"schema": {
                                  "type": "string", "format": "binary"}},
                              "application/json": {"schema": _ref("Outcome")}}},
                          "202": _json(_ref("Call"), "not finished yet"),
                          **_errors(400, 404, *COMMON)}}},
        "/v1/calls/{call_id}/error": {"get": {
            "summary": "A failed call's pickled exception, streamed as octet-stream",
            "parameters": [CALL_ID],
            "responses": {"200": {"description": "the pickled exception", "content": {
                              "application/octet-stream": {"schema": {
                                  "type": "string", "format": "binary"}}}},
                          **_errors(404, *COMMON)}}},
        "/v1/calls/{call_id}/cancel": {"post": {
            "summary": "Cancel a call that has not finished (its own calls, or admin)",
            "parameters": [CALL_ID],
            "responses": {"200": _json(_ref("Call"), "the call; `cancelled` says if it was"),
                          **_errors(404, *COMMON)}}},
        "/v1/calls/{call_id}/logs": {"get": {
            "summary": "What the call wrote to stdout and stderr: the whole text of each, "
                       "or (with offset or wait) the chunks from an offset, long-polling",
            "parameters": [
                CALL_ID,
                _query("offset", {"type": "integer", "minimum": 0},
                       "characters of the attempt's combined output already read"),
                _query("attempt", {"type": "integer", "minimum": 0},
                       "the attempt to read (default: the current one)"),
                _query("wait", {"type": "number", "minimum": 0},
                       "seconds to wait for output past offset (long-poll)")],
            "responses": {"200": _json({"type": "object", "properties": {
                "stdout": {"type": "string"}, "stderr": {"type": "string"},
                "state": {"type": "string"}, "attempt": {"type": "integer"},
                "current_attempt": {"type": "integer"},
                "chunks": {"type": "array", "items": {"type": "object", "properties": {
                    "stream": {"type": "string", "enum": ["stdout", "stderr"]},
                    "offset": {"type": "integer"}, "data": {"type": "string"},
                    "at": {"type": "string", "format": "date-time"}}}},
                "next_offset": {"type": "integer"}, "done": {"type": "boolean"}}},
                "output (stdout/stderr without offset, chunks with it)"),
                **_errors(400, 404, *COMMON)}}},
        "/v1/calls/{call_id}/items": {"get": {
            "summary": "A generator call's items (pickled, base64) from an index, long-polling",
            "parameters": [
                CALL_ID,
                _query("start", {"type": "integer", "minimum": 0}, "the first index to read"),
                _query("wait", {"type": "number", "minimum": 0},
                       "seconds to wait for an item past start (long-poll)")],
            "responses": {"200": _json({"type": "object", "properties": {
                "state": {"type": "string"},
                "items": {"type": "array", "items": {"type": "object", "properties": {
                    "index": {"type": "integer"}, "data": {"type": "string", "format": "byte"},
                    "at": {"type": "string", "format": "date-time"}}}},
                "next": {"type": "integer"}, "done": {"type": "boolean"}}}, "items"),
                **_errors(400, 404, *COMMON)}}},
        "/v1/functions": {
            "post": {"summary": "Deploy a function: a new live version unless unchanged "
                             "(scope deploy)",
                     "requestBody": {"required": True, "content": {"multipart/form-data": {
                         "schema": {"type": "object", "required": ["meta", "function"],
                                    "properties": {
                                        "meta": {"type": "string",
                                                 "description": "JSON: {name, spec, client}"},
                                        "function": {"type": "string", "format": "binary"}}}}}},
                     "responses": {"201": _json({"type": "object"}, "deployed"),
                                   "200": _json({"type": "object"}, "unchanged: code and hints "
                                                "equal the live version's; nothing deployed"),
                                   **_errors(400, 413, 422, *COMMON)}},
            "get": {"summary": "Deployed functions", "responses": {
                "200": _json({"type": "object"}, "functions"), **_errors(*COMMON)}},
        },
        "/v1/functions/{name}": {"get": {
            "summary": "A deployed function and its versions", "parameters": [NAME],
            "responses": {"200": _json({"type": "object"}, "the function"),
                          **_errors(404, *COMMON)}}},
        "/v1/functions/{name}/rollback": {"post": {
            "summary": "Make an older version live (default: the one before)",
            "parameters": [NAME],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"version": {"type": ["integer", "null"]}}}}}},
            "responses": {"200": _json({"type": "object"}, "the function"),
                          **_errors(400, 404, 409, 422, *COMMON)}}},
        "/v1/functions/{name}/calls": {"post": {
            "summary": "Calls of the live version with pickled arguments (scope submit)",
            "parameters": [NAME, IDEMPOTENCY],
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["meta", "args"], "properties": {
                    "meta": {"type": "string", "description": "JSON: {spec overrides, client}"},
                    "args": {"type": "array", "items": {"type": "string",
                                                        "format": "binary"}}}}}}},
            "responses": {"201": calls_created,
                          "200": _json({"type": "object"}, "replayed (Idempotency-Key)"),
                          **_errors(400, 404, 413, 422, *COMMON)}}},
        "/v1/functions/{name}/invoke": {"post": {
            "summary": "Invoke the live version with JSON; its JSON result if it finishes "
                       "within `wait` (default 30) seconds (scope invoke or submit)",
            "parameters": [NAME, WAIT, IDEMPOTENCY],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "properties": {
                    "args": {"type": "array"}, "kwargs": {"type": "object"}}}}}},
            "responses": {
                "200": _json(_ref("Outcome"), "finished: `value` or `error`"),
                "202": {"description": "still running; poll `Location`",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {"application/json": {"schema": _ref("Call")}}},
                **_errors(400, 404, 413, 422, *COMMON)}}},
        "/v1/tokens": {
            "post": {"summary": "Create a token (admin); the secret is returned once",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"type": "object", "required": ["name", "scopes"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "scopes": {"type": "array", "items": {
                                            "type": "string", "enum": SCOPES}}}}}}},
                     "responses": {"201": _json({"type": "object"}, "the token"),
                                   **_errors(400, 409, 422, *COMMON)}},
            "get": {"summary": "List tokens (admin)", "responses": {
                "200": _json({"type": "object"}, "tokens"), **_errors(*COMMON)}},
        },
        "/v1/tokens/{ref}/revoke": {"post": {
            "summary": "Revoke a token by id or name (admin)",
            "parameters": [{"name": "ref", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _json({"type": "object"}, "revoked"),
                          **_errors(404, 409, *COMMON)}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "podfn", "version": "1",
                 "description": "Python functions on Kubernetes, one pod per call."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"},
                        "field": {"type": "string"}}}}},
                "Call": {"type": "object", "required": ["id", "state"], "properties": {
                    "id": {"type": "string"}, "function": {"type": "string"},
                    "state": {"type": "string", "enum": STATES},
                    "attempt": {"type": "integer"}, "reason": {"type": ["string", "null"]}}},
                "Outcome": {"allOf": [_ref("Call"), {"type": "object", "properties": {
                    "result_format": {"type": "string", "enum": ["pickle", "json"]},
                    "result_size": {"type": ["integer", "null"],
                                    "description": "bytes of the stored result"},
                    "result": {"type": "string",
                               "description": "base64 of the pickled result, in `wait` "
                                              "answers for small results only; else GET "
                                              "/v1/calls/{id}/result"},
                    "value": {"description": "the JSON result of an HTTP invoke"},
                    "error": {"type": "object", "properties": {
                        "type": {"type": "string"}, "message": {"type": "string"},
                        "traceback": {"type": "string"},
                        "pickle_size": {"type": ["integer", "null"],
                                        "description": "bytes of the pickled exception "
                                                       "(GET /v1/calls/{id}/error)"}}}}}]},
            },
        },
    }
