"""The API's Flask application factory.

The API talks only to Postgres: it needs no Kubernetes credentials and never
unpickles what a client sent.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify

from podfn.errors import ConfigurationError, DatabaseError
from podfn.settings import Settings
from podfn_platform.api import (
    auth,
    calls,
    errors,
    forms,
    functions,
    inputs,
    metrics,
    openapi,
    schemas,
    tokens,
    usage,
)
from podfn_platform.api.contract import operation
from podfn_platform.api.waiting import FinishWaiter
from podfn_platform.database import Database
from podfn_platform.ui import views as ui_views

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def create_app(settings: Settings | None = None, db: Database | None = None) -> Flask:
    settings = settings or Settings.from_env()
    if db is None:
        # Long-polls hold no connection while they wait; they borrow one to look.
        db = Database(settings.require_database_url(), max_size=settings.threads + 4,
                      name="podfn-api").open(wait=False)
    app = Flask("podfn_platform.api")
    app.request_class = forms.Request  # file parts in memory (issue 12: bytes)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        # A map batch is one form part per call; the parts are bounded by size anyway.
        MAX_FORM_PARTS=forms.MAX_CALLS_PER_REQUEST + 16,
        PODFN_MAX_WAIT=settings.max_wait_seconds,
    )
    app.extensions["podfn.db"] = db
    app.extensions["podfn.waiter"] = waiter = FinishWaiter(db)
    app.extensions["podfn.drain"] = waiter.drain  # called by podfn's worker on SIGTERM
    errors.register(app)
    inputs.install(app)
    app.register_blueprint(calls.bp)
    app.register_blueprint(functions.bp)
    app.register_blueprint(tokens.bp)
    app.register_blueprint(usage.bp)
    metrics.register(app, db)
    app.register_blueprint(ui_views.bp)  # the dashboard, /ui (docs/ui.md)

    if settings.insecure_no_auth and settings.host not in LOOPBACK:
        raise ConfigurationError(
            f"PODFN_INSECURE_NO_AUTH is allowed only on a loopback address, not {settings.host}")
    auth.install(app, db, root_token=settings.api_token, no_auth=settings.insecure_no_auth,
                 waiter=waiter)

    @app.get("/openapi.json")
    @operation("This document", {200: {"description": "OpenAPI 3.1", "content": {
        "application/json": {"schema": {"type": "object"}}}}}, public=True)
    def openapi_json() -> Response:
        return jsonify(openapi.document(app))

    @app.get("/healthz")
    @operation("Liveness", {200: schemas.Health}, public=True)
    def healthz() -> Response:
        return jsonify({"ok": True})

    @app.get("/readyz")
    @operation("Readiness (checks the database)", {200: schemas.Health, 503: None}, public=True)
    def readyz() -> tuple[Response, int]:
        try:
            db.ping()
        except DatabaseError as exc:
            return errors.error_response(503, "database_unavailable", str(exc))
        return jsonify({"ok": True, "database": "reachable"}), 200

    return app
