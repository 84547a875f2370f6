"""The dashboard app: ``create_ui_app`` for ``loopml ui``; ``loopml serve --ui`` mounts the same app at /ui.

Pages live in ``loopml/ui/pages/`` (one router per page), templates in ``templates/``, the vendored
scripts and styles in ``static/`` (no CDN: it works offline). Every response carries a strict
Content-Security-Policy (no inline script, no third-party origin), so even a value that escaped
escaping could not run.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware

from loopml.ui.auth import UIError
from loopml.ui.context import STATIC, UIContext, UISettings, make_templates, render

log = logging.getLogger("loopml.ui")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def create_ui_app(settings: UISettings, store=None) -> FastAPI:
    """The dashboard over ``store`` (or the store ``settings`` names)."""
    from loopml.registry import Store
    from loopml.ui.pages import PAGE_ROUTERS

    app = FastAPI(title="loopml dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = UIContext(store if store is not None else Store(settings.store, settings.artifacts), settings,
                             make_templates())
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    for router in PAGE_ROUTERS:
        app.include_router(router)

    @app.exception_handler(UIError)
    async def _refused(request: Request, exc: UIError) -> HTMLResponse:
        return render(request, "error.html", status_code=exc.status, message=exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> HTMLResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return render(request, "error.html", status_code=422, message=f"{where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return render(request, "error.html", status_code=exc.status_code, message=message)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> HTMLResponse:
        # the last resort (a bug): a page naming no internals; the traceback goes to the log
        log.exception("dashboard error on %s", request.url.path)
        return render(request, "error.html", status_code=500, message="internal error (see the server log)")

    return app
