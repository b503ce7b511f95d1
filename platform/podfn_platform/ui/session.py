"""Signing in to the dashboard: a token kept in a cookie, and CSRF on every POST.

A browser cannot send a bearer header by itself, so the token someone signs
in with is kept in a cookie that scripts cannot read (HttpOnly) and that no
other site's page can make the browser send (SameSite=Strict); it is checked
on every request exactly like a bearer token (revoking the token signs the
cookie out). Every POST also carries a CSRF token: an HMAC of the cookie's
secret, so it needs no server-side state (any API worker can check it) and
no page of another origin can compute it. PODFN_INSECURE_NO_AUTH (loopback
only) signs in without a token: the cookie then holds a random nonce, so
POSTs still need the CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from flask import abort, current_app, g, request
from werkzeug.wrappers import Response

from podfn_platform.api import context
from podfn_platform.api.auth import ANONYMOUS, LOOPBACK, Principal, principal_for

COOKIE = "podfn_ui"
ANONYMOUS_PREFIX = "anon_"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def csrf_for(secret: str) -> str:
    return hmac.new(secret.encode(), b"podfn-ui-csrf", hashlib.sha256).hexdigest()


def no_auth() -> bool:
    return bool(current_app.extensions.get("podfn.no_auth"))


def who(secret: str) -> Principal | None:
    """The principal a cookie's secret stands for, or None (unknown or revoked)."""
    if no_auth():
        # As the API: without auth, serve nothing unless bound to a loopback address.
        if request.environ.get("SERVER_NAME", "").strip("[]") not in LOOPBACK:
            abort(403, "this server runs without auth (PODFN_INSECURE_NO_AUTH) off a "
                       "loopback address; bind to 127.0.0.1, or turn auth on")
        return ANONYMOUS if secret.startswith(ANONYMOUS_PREFIX) else None
    return principal_for(context.db(), current_app.extensions.get("podfn.root_token"), secret)


def signed_in() -> Principal | None:
    """Who this request's cookie is; sets g.podfn_principal for the API's helpers."""
    secret = request.cookies.get(COOKIE, "")
    found = who(secret) if secret else None
    if found is not None:
        g.podfn_principal = found
        g.podfn_csrf = csrf_for(secret)
    return found


def sign_in(response: Response, secret: str) -> None:
    response.set_cookie(COOKIE, secret, httponly=True, samesite="Strict",
                        secure=request.is_secure, path="/ui")


def anonymous_secret() -> str:
    return ANONYMOUS_PREFIX + secrets.token_urlsafe(24)


def sign_out(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="Strict")


def check_origin() -> None:
    """403 for a POST a browser says came from another origin (sign-in included: nobody
    should be signed in to someone else's token by another site's form)."""
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        abort(403, f"a form of {origin} may not post to this dashboard")


def check_csrf() -> None:
    """403 unless a POST carries the CSRF token of its cookie (form field or header)."""
    expected = getattr(g, "podfn_csrf", None)
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(403, "the form's CSRF token is missing or stale: reload the page and try again")
