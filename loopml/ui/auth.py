"""Who may change things: read-only for everyone, the admin token for promote, rollback and labels.

- A browser logs in once (``POST /login`` with the token) and gets a session cookie: HttpOnly,
  SameSite=Strict, signed with the token (HMAC) and expiring; the token itself is never stored in it.
- Every form that changes something carries a CSRF token bound to that session (``csrf_field`` in the
  templates); a POST with the cookie but without the matching token, or from another origin, is refused.
- A script may instead send ``Authorization: Bearer <token>`` (not ambient: no CSRF check needed).
Comparisons are constant-time. Without an admin token configured, the dashboard is read-only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from fastapi import Request

COOKIE = "loopml_ui_session"


class UIError(Exception):
    """A page-level refusal: rendered as the error page (HTML) with this status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _settings(request: Request):
    return request.app.state.ui.settings


def _sign(token: str, text: str) -> str:
    return hmac.new(token.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


def new_session(request: Request) -> str:
    """A cookie value for a fresh login: ``expiry.nonce.signature``."""
    settings = _settings(request)
    expiry = str(int(time.time() + settings.session_s))
    nonce = secrets.token_hex(16)
    return f"{expiry}.{nonce}.{_sign(settings.admin_token, f'session:{expiry}:{nonce}')}"


def _session(request: Request) -> str | None:
    """The request's valid session cookie, else None."""
    token = _settings(request).admin_token
    value = request.cookies.get(COOKIE, "")
    if not token or value.count(".") != 2:
        return None
    expiry, nonce, signature = value.split(".")
    if not expiry.isdigit() or int(expiry) < time.time():
        return None
    return value if hmac.compare_digest(signature, _sign(token, f"session:{expiry}:{nonce}")) else None


def token_matches(request: Request, given: str) -> bool:
    token = _settings(request).admin_token
    return bool(token) and hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def _bearer(request: Request) -> bool:
    header = request.headers.get("authorization", "")
    return header.startswith("Bearer ") and token_matches(request, header.removeprefix("Bearer ").strip())


def is_admin(request: Request) -> bool:
    return _bearer(request) or _session(request) is not None


def csrf_token(request: Request) -> str:
    session = _session(request)
    return _sign(_settings(request).admin_token, f"csrf:{session}") if session else ""


def _same_origin(request: Request) -> bool:
    """A browser names where a POST comes from (Origin, else Referer); it must be this host. A request
    that names neither (not a browser) passes here: the CSRF token still has to match."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def require_admin(request: Request) -> str:
    """Dependency of every route that changes something; returns the actor for the audit log."""
    settings = _settings(request)
    if not settings.admin_token:
        raise UIError(403, "the dashboard is read-only: start it with --admin-token to promote, roll back or label")
    if _bearer(request):
        return settings.actor
    if _session(request) is None:
        raise UIError(401, "log in with the admin token first")
    form = await request.form()
    given = request.headers.get("x-csrf-token") or str(form.get("csrf", ""))
    if not _same_origin(request) or not hmac.compare_digest(given.encode("utf-8"), csrf_token(request).encode("utf-8")):
        raise UIError(403, "CSRF check failed: reload the page and submit its form again")
    return settings.actor


def safe_next(request: Request, target: str | None) -> str:
    """Where to go after login: a path inside the dashboard, never another site (``//evil``, ``https://…``)."""
    from loopml.ui.context import base_url

    base = base_url(request)
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return base + "/"
    if base and not (target == base or target.startswith(base + "/")):
        return base + "/"
    return target
