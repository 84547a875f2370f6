"""The models pages: registered models, one model's versions / aliases / audit log, promote and rollback,
and each version's report.

Reads go through ``loopml.ui.queries_models`` (paged in SQL); promote and rollback call the Store's own
methods, so validation and the audit row are the CLI's. The report is the version's own ``report.html``
from its artifact folder (never a path from the request), served sandboxed: it runs in an opaque
origin and cannot read or use the dashboard's session.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from loopml.errors import LoopmlError
from loopml.registry.store import check_name
from loopml.ui import queries_models as q
from loopml.ui.auth import UIError, require_admin
from loopml.ui.context import UIContext, base_url, get_ctx, render
from loopml.ui.paging import MAX_PER, Page, page_params

router = APIRouter()

MAX_VERSION = 2**31 - 1
MAX_REASON = 500
MAX_ALIAS = 64  # the aliases.alias column
#: the report is loopml's own self-contained HTML (inline <style>, style="" attributes, data: images, no
#: script); ``sandbox`` puts it in an opaque origin: no cookie, no same-origin request to the dashboard
REPORT_CSP = ("sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'none'")


def event_params(epage: int = Query(1, ge=1, le=1_000_000, description="Audit log page, from 1."),
                 eper: int = Query(20, ge=1, le=MAX_PER, description=f"Audit log rows per page (1..{MAX_PER}).")) -> Page:
    return Page(epage, eper)


def _model_or_404(ctx: UIContext, name: str) -> dict:
    try:
        return q.get_model(ctx.store.engine, name)
    except LoopmlError as e:
        raise UIError(404, str(e)) from None


def _alias(value: str) -> str:
    try:
        return check_name(value.strip(), "alias")
    except LoopmlError as e:
        raise UIError(400, str(e)) from None


@router.get("/models", response_class=HTMLResponse)
def models_list(request: Request, page: Page = Depends(page_params), ctx: UIContext = Depends(get_ctx)) -> HTMLResponse:
    rows = q.list_models(ctx.store.engine, page)
    keys = q.key_metrics([r["production"]["metrics"] for r in rows if r["production"]])
    return render(request, "models.html", rows=rows, page=page, metric_keys=keys)


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(request: Request, name: str = PathParam(max_length=200), page: Page = Depends(page_params),
               events: Page = Depends(event_params), ctx: UIContext = Depends(get_ctx)) -> HTMLResponse:
    try:
        detail = q.model_detail(ctx.store.engine, name, page, events)
    except LoopmlError as e:
        raise UIError(404, str(e)) from None
    artifacts = ctx.store.artifacts
    for row in detail["versions"]:
        # a local root: link only the reports that exist (one stat each); a remote one: the route finds out
        row["has_report"] = q.local_report(artifacts, row["artifact_uri"]) is not None if artifacts.local else True
        row["lineage_rows"] = q.key_values(row["lineage"])
        row["metric_rows"] = q.key_values(row["metrics"])
        row["lineage_json"] = json.dumps(row["lineage"], indent=2, sort_keys=True, default=str) \
            if row["lineage"] is not None else None
    return render(request, "models_detail.html", name=name, page=page, max_reason=MAX_REASON,
                  max_alias=MAX_ALIAS, **detail)


@router.get("/models/{name}/{version}/report")
def version_report(name: str = PathParam(max_length=200), version: int = PathParam(ge=1, le=MAX_VERSION),
                   ctx: UIContext = Depends(get_ctx)) -> FileResponse:
    try:
        uri = q.version_uri(ctx.store.engine, name, version)
    except LoopmlError as e:
        raise UIError(404, str(e)) from None
    path = q.report_file(ctx.store.artifacts, uri)
    if path is None:
        raise UIError(404, f"'{name}' version {version} has no report (its model was saved without one)")
    return FileResponse(path, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": REPORT_CSP, "Cache-Control": "no-store"})


def _back(request: Request, name: str) -> RedirectResponse:
    return RedirectResponse(f"{base_url(request)}/models/{quote(name, safe='')}#aliases", status_code=303)


@router.post("/models/{name}/promote")
def promote(request: Request, name: str = PathParam(max_length=200), actor: str = Depends(require_admin),
            version: int = Form(ge=1, le=MAX_VERSION), alias: str = Form("production", max_length=MAX_ALIAS),
            reason: str = Form("", max_length=MAX_REASON), ctx: UIContext = Depends(get_ctx)) -> RedirectResponse:
    model = _model_or_404(ctx, name)
    alias = _alias(alias or "production")
    if not q.version_exists(ctx.store.engine, name, version):
        raise UIError(404, f"'{name}' has no version {version} (latest is {model['latest_version']})")
    try:
        ctx.store.promote(name, version, alias=alias, reason=reason.strip(), actor=actor)
    except LoopmlError as e:
        raise UIError(409, str(e)) from None
    return _back(request, name)


@router.post("/models/{name}/rollback")
def rollback(request: Request, name: str = PathParam(max_length=200), actor: str = Depends(require_admin),
             alias: str = Form("production", max_length=MAX_ALIAS), reason: str = Form("", max_length=MAX_REASON),
             ctx: UIContext = Depends(get_ctx)) -> RedirectResponse:
    _model_or_404(ctx, name)
    alias = _alias(alias or "production")
    try:
        ctx.store.rollback(name, alias=alias, reason=reason.strip(), actor=actor)
    except LoopmlError as e:
        raise UIError(409, str(e)) from None
    return _back(request, name)
