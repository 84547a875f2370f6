"""``/docs`` from the package: Swagger UI's script and style are vendored (loopml/ui/static/vendor), served at
``/_static``, so the page works offline and names no other origin (FastAPI's default loads them from a CDN).
ReDoc is off (it would need its own CDN script); ``/openapi.json`` is unchanged."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

VENDOR = Path(__file__).resolve().parent.parent / "ui" / "static" / "vendor"
#: no favicon request at all (FastAPI's default favicon is on fastapi.tiangolo.com)
NO_FAVICON = "data:,"


def vendored_docs(app: FastAPI) -> None:
    """Add ``/docs`` and ``/_static`` to ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    app.mount("/_static", StaticFiles(directory=str(VENDOR)), name="_static")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} · docs",
            swagger_js_url=f"{root}/_static/swagger-ui-bundle.js", swagger_css_url=f"{root}/_static/swagger-ui.css",
            swagger_favicon_url=NO_FAVICON,
            swagger_ui_parameters={"validatorUrl": None})  # the validator badge would call validator.swagger.io
