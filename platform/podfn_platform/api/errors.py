"""API errors: JSON bodies with a machine-readable code and a message for people."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify
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


def register(app: Flask) -> None:
    max_bytes = app.config["MAX_CONTENT_LENGTH"]

    @app.errorhandler(APIError)
    def _api_error(exc: APIError) -> tuple[Response, int]:
        response, status = error_response(exc.status, exc.code, exc.message, **exc.extra)
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
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(status, code, exc.description or exc.name)
