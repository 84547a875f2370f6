"""The dashboard app: ``create_ui_app`` for ``loopml ui``; ``loopml serve --ui`` mounts the same app at /ui.

Pages live in ``loopml/ui/pages/`` (one router per page), templates in ``templates/``, the vendored
scripts and styles in ``static/`` (no CDN: it works offline). Every response carries a strict
Content-Security-Policy (no inline script, no third-party origin), so even a value that escaped
escaping could not run.
"""

from __future__ import annotations

import logging
import threading
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware

from loopml.ui.auth import UIError
from loopml.ui.context import STATIC, ServedModel, UIContext, UISettings, make_templates, render

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


class ReadAccess(BaseHTTPMiddleware):
    """With API keys configured (``serve --api-key``, ``ui --api-key``), every page, image and report needs a
    session (log in with a key: read-only; with the admin token: admin) or a key in a header: a page asked for
    without one is sent to the login page, anything else is a 401. The login form and the static assets stay open."""

    async def dispatch(self, request: Request, call_next):
        from urllib.parse import quote

        from loopml.ui.auth import can_read
        from loopml.ui.context import base_url

        base = base_url(request)
        path = request.url.path
        inner = path[len(base):] if base and path.startswith(base) else path
        if (not request.app.state.ui.settings.api_keys or inner == "/login" or inner.startswith("/static/")
                or can_read(request)):
            return await call_next(request)
        if request.method in ("GET", "HEAD") and request.headers.get("hx-request") != "true":
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{base}/login?next={quote(target, safe='')}", status_code=303)
        return render(request, "error.html", status_code=401, message="log in with an API key or the admin token first")


def create_ui_app(settings: UISettings, store=None, served_model: ServedModel | None = None) -> FastAPI:
    """The dashboard over ``store`` (or the store ``settings`` names). ``served_model``: the host's loaded model
    (``loopml serve --ui``), which the labelling queue uses instead of loading its own copy of name@production."""
    from loopml.registry import Store
    from loopml.ui.pages import PAGE_ROUTERS

    app = FastAPI(title="loopml dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = UIContext(store if store is not None else Store(settings.store, settings.artifacts), settings,
                             make_templates(), served_model=served_model)
    app.add_middleware(ReadAccess)
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


def _warm(app: FastAPI) -> None:
    from loopml.evaluate import plots
    from loopml.loop import worker  # noqa: F401  the overview's decision words; it imports torch (seconds)

    env = app.state.ui.templates.env
    for name in env.list_templates(filter_func=lambda n: n.endswith(".html")):
        env.get_template(name)  # compiled once here, not by the first visitor of each page
    plots.overlaid_curves({"warm": [(1, 0.0), (2, 1.0)]}, "warm")  # matplotlib's first figure: fonts, Agg


def warm_up(app: FastAPI, limit_s: float = 30.0) -> float:
    """Pay before the first visitor does: the imports the pages make (torch through the loop modules, matplotlib),
    the templates compiled, a first figure drawn (together 4-12 s on a fresh process, that the first page and
    the first PNG paid), and the first ranking of the labelling queues about to be used (model load + scoring).
    Waits at most ``limit_s`` (what is not done by then finishes in the background); the seconds it waited."""
    from loopml.ui.pages.feedback import prerank

    started = time.perf_counter()
    worker = threading.Thread(target=_warm, args=(app,), name="loopml-ui-warm", daemon=True)
    worker.start()
    worker.join(limit_s)
    try:
        names = prerank(app.state.ui)
    except SQLAlchemyError as e:  # a store without these tables yet, or gone: the page ranks on first view
        log.warning("not pre-ranking the labelling queues: %s", e)
        names = []
    # waited for too (within the bound): a ranking running beside the first pages would slow them down
    for key, job in list(app.state.ui.caches.items()):
        if key[0] == "feedback.job" and key[1] in names:
            job["done"].wait(max(0.0, limit_s - (time.perf_counter() - started)))
    return time.perf_counter() - started
