"""The API's Flask application factory.

The API talks only to Postgres: it needs no Kubernetes credentials and never
unpickles what a client sent.
"""

from __future__ import annotations

import hmac

from flask import Flask, Response, jsonify, request

from podfn.errors import DatabaseError
from podfn.settings import Settings
from podfn_platform.api import calls, errors, metrics
from podfn_platform.api.waiting import FinishWaiter
from podfn_platform.database import Database


def create_app(settings: Settings | None = None, db: Database | None = None) -> Flask:
    settings = settings or Settings.from_env()
    if db is None:
        db = Database(settings.require_database_url(), max_size=settings.threads + 2,
                      name="podfn-api").open(wait=False)
    app = Flask("podfn_platform.api")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        # A map batch is one form part per call; the parts are bounded by size anyway.
        MAX_FORM_PARTS=calls.MAX_IDS + 16,
        PODFN_MAX_WAIT=settings.max_wait_seconds,
    )
    app.extensions["podfn.db"] = db
    app.extensions["podfn.waiter"] = FinishWaiter(db)
    errors.register(app)
    app.register_blueprint(calls.bp)
    metrics.register(app, db)

    if settings.api_token:
        expected = settings.api_token.encode()

        @app.before_request
        def _authenticate() -> tuple[Response, int] | None:
            if not request.path.startswith("/v1/"):
                return None
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
                response, status = errors.error_response(
                    401, "unauthorized",
                    "a valid bearer token is required: set PODFN_TOKEN (podfn dev writes it "
                    "to your profile)")
                response.headers["WWW-Authenticate"] = 'Bearer realm="podfn"'
                return response, status
            return None

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"ok": True})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        try:
            db.ping()
        except DatabaseError as exc:
            return errors.error_response(503, "database_unavailable", str(exc))
        return jsonify({"ok": True, "database": "reachable"}), 200

    return app
