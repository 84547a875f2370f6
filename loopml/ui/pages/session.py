"""Log in with the admin token (an admin session) or an API key (a read-only session), log out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from loopml.ui.auth import COOKIE, _same_origin, api_key_matching, new_session, require_session, safe_next, token_matches
from loopml.ui.context import base_url, get_ctx, render

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "login.html", next=safe_next(request, next), failed=False)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, token: str = Form("", max_length=4096), next: str = Form("/", max_length=2048)):
    settings = get_ctx(request).settings
    if not settings.admin_token and not settings.api_keys:
        return render(request, "login.html", status_code=403, next="/", failed=True,
                      message="the dashboard is read-only: it was started without --admin-token")
    if not _same_origin(request):  # login CSRF: another site cannot log this browser in as someone
        return render(request, "login.html", status_code=403, next=safe_next(request, next), failed=True,
                      message="log in from the dashboard's own login page")
    key = None if token_matches(request, token) else api_key_matching(request, token)
    if key is None and not token_matches(request, token):
        return render(request, "login.html", status_code=401, next=safe_next(request, next), failed=True,
                      message="wrong admin token" if not settings.api_keys else "wrong API key or admin token")
    response = RedirectResponse(safe_next(request, next), status_code=303)
    response.set_cookie(COOKIE, new_session(request, key), max_age=int(settings.session_s), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path=base_url(request) or "/")
    return response


@router.post("/logout", dependencies=[Depends(require_session)])
async def logout(request: Request) -> RedirectResponse:
    response = RedirectResponse(base_url(request) + "/", status_code=303)
    response.delete_cookie(COOKIE, path=base_url(request) or "/")
    return response
