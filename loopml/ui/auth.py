"""Who may see and change things: read-only for everyone (or, with API keys configured, for a visitor logged in
with one), the admin token for promote, rollback and labels.

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


def new_session(request: Request, key: str | None = None) -> str:
    """A cookie value for a fresh login, ``role.expiry.nonce.signature``: an admin session signed with the admin
    token, a read-only one (``key``: the API key given) with that key, so removing the key ends its sessions."""
    settings = _settings(request)
    role, secret = ("read", key) if key is not None else ("admin", settings.admin_token)
    expiry = str(int(time.time() + settings.session_s))
    nonce = secrets.token_hex(16)
    return f"{role}.{expiry}.{nonce}.{_sign(secret, f'session:{role}:{expiry}:{nonce}')}"


def _session(request: Request) -> tuple[str, str, str] | None:
    """(cookie value, role, the secret it is signed with) of the request's valid session cookie, else None."""
    settings = _settings(request)
    value = request.cookies.get(COOKIE, "")
    if value.count(".") != 3:
        return None
    role, expiry, nonce, signature = value.split(".")
    if not expiry.isdigit() or int(expiry) < time.time():
        return None
    secrets_ = [settings.admin_token] if role == "admin" else list(settings.api_keys) if role == "read" else []
    for secret in secrets_:
        if secret and hmac.compare_digest(signature, _sign(secret, f"session:{role}:{expiry}:{nonce}")):
            return value, role, secret
    return None


def _same_secret(given: str, secret: str | None) -> bool:
    return bool(secret) and bool(given) and hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8"))


def token_matches(request: Request, given: str) -> bool:
    return _same_secret(given, _settings(request).admin_token)


def api_key_matching(request: Request, given: str) -> str | None:
    """The configured API key ``given`` is (every key compared, constant-time), else None."""
    found = None
    for key in _settings(request).api_keys:
        if _same_secret(given, key):
            found = key
    return found


def _bearer(request: Request) -> bool:
    header = request.headers.get("authorization", "")
    return header.startswith("Bearer ") and token_matches(request, header.removeprefix("Bearer ").strip())


def is_admin(request: Request) -> bool:
    session = _session(request)
    return _bearer(request) or (session is not None and session[1] == "admin")


def session_role(request: Request) -> str | None:
    session = _session(request)
    return session[1] if session else None


def can_read(request: Request) -> bool:
    """Whether the request may see the pages: always without API keys configured; with them (``serve --api-key``,
    ``ui --api-key``) a session (admin or read-only), the admin token, or an API key in ``X-API-Key`` or
    ``Authorization: Bearer`` (as the prediction API takes it)."""
    if not _settings(request).api_keys or _session(request) is not None or _bearer(request):
        return True
    given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return api_key_matching(request, given) is not None


def csrf_token(request: Request) -> str:
    session = _session(request)
    return _sign(session[2], f"csrf:{session[0]}") if session else ""


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
    session = _session(request)
    if session is None:
        raise UIError(401, "log in with the admin token first")
    if session[1] != "admin":
        raise UIError(403, "this session is read-only (an API key): log in with the admin token to change things")
    await check_csrf(request)
    return settings.actor


async def check_csrf(request: Request) -> None:
    """The form's (or ``X-CSRF-Token``'s) token must be the session's, and a browser's Origin this host."""
    form = await request.form()
    given = request.headers.get("x-csrf-token") or str(form.get("csrf", ""))
    expected = csrf_token(request)
    if not expected or not _same_origin(request) or not hmac.compare_digest(given.encode("utf-8"),
                                                                            expected.encode("utf-8")):
        raise UIError(403, "CSRF check failed: reload the page and submit its form again")


async def require_session(request: Request) -> None:
    """Dependency of logout: any session (admin or read-only), with its CSRF token (or the admin token as Bearer)."""
    settings = _settings(request)
    if not settings.admin_token and not settings.api_keys:
        raise UIError(403, "the dashboard is read-only (started without --admin-token): there is no login to end")
    if _bearer(request):
        return
    if _session(request) is None:
        raise UIError(401, "not logged in")
    await check_csrf(request)


def safe_next(request: Request, target: str | None) -> str:
    """Where to go after login: a path inside the dashboard, never another site (``//evil``, ``https://…``)."""
    from loopml.ui.context import base_url

    base = base_url(request)
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return base + "/"
    if base and not (target == base or target.startswith(base + "/")):
        return base + "/"
    return target
