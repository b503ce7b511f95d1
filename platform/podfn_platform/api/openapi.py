"""The API's OpenAPI 3.1 document, served at /openapi.json: generated, never written by hand.

Each view declares its operation (api/contract.py) with the models of
api/schemas.py that also validate its requests; this walks the app's routes
once per app (blueprints added later, such as /ui, appear if they declare one).
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from podfn_platform.api import contract


def document(app: Flask) -> dict[str, Any]:
    cached: dict[str, Any] | None = app.extensions.get("podfn.openapi")
    if cached is None:
        cached = app.extensions["podfn.openapi"] = contract.document(app)
    return cached
