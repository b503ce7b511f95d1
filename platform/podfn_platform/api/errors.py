"""API errors: JSON bodies with a machine-readable code and a message for people."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from podfn.errors import DatabaseUnavailable, InvalidSpec


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def error_response(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, **extra}}), status


FORM_HINT = ("the body was sent as {kind} (what `curl -d` does by default): send JSON with the "
             "header Content-Type: application/json (curl -H 'Content-Type: application/json' "
             "-d '...', or curl --json '...'); submissions and deploys take multipart/form-data")


def _sent_as_form() -> bool:
    """A body without a content type, or as a url-encoded form (curl -d's default)."""
    return bool(request.content_length) and request.mimetype in (
        "", "application/x-www-form-urlencoded")


def register(app: Flask) -> None:
    max_bytes = app.config["MAX_CONTENT_LENGTH"]

    @app.errorhandler(APIError)
    def _api_error(exc: APIError) -> tuple[Response, int]:
        message = exc.message
        if exc.status == 400 and _sent_as_form():
            message += "; " + FORM_HINT.format(kind=request.mimetype or "no content type")
        response, status = error_response(exc.status, exc.code, message, **exc.extra)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="podfn"'
        return response, status

    @app.errorhandler(InvalidSpec)
    def _invalid_spec(exc: InvalidSpec) -> tuple[Response, int]:
        return error_response(422, "invalid_spec", str(exc), field=f"spec.{exc.field}")

    @app.errorhandler(DatabaseUnavailable)
    def _db_down(exc: DatabaseUnavailable) -> tuple[Response, int]:
        return error_response(503, "database_unavailable",
                              "the platform's database is unavailable; try again shortly")

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> tuple[Response, int]:
        return error_response(
            413, "request_too_large",
            f"the request is larger than this API accepts ({max_bytes} bytes); "
            "pass large data by reference (a URL or object store key) instead of as an argument, "
            "or raise PODFN_MAX_REQUEST_BYTES on the server",
        )

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        """Werkzeug's own errors (unknown path, wrong method) as our JSON, keeping
        their headers (405's Allow)."""
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if status == 404:
            message = f"no such endpoint: {request.path}; see /openapi.json for every route"
        elif status == 405:
            allowed = ", ".join(getattr(exc, "valid_methods", None) or [])
            message = f"{request.method} is not allowed on {request.path}; use {allowed}"
        response, status = error_response(status, code, message)
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status
