"""The monitor page: drift per column over the last windows, prediction drift, live metric vs test,
PSI over windows (the report's plotting code), the loop, and the newest predictions (paged)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from loopml.loop.drift import DRIFT
from loopml.ui import queries_monitor as q
from loopml.ui.auth import UIError
from loopml.ui.context import UIContext, get_ctx, png_uri, render
from loopml.ui.paging import Page, page_params

router = APIRouter()
#: the chart's lines: the columns drifting most in the newest window (and the predictions)
CHART_COLUMNS = 6
NAME = Query(None, max_length=128, description="Registered model name.")


def model_list(request: Request, ctx: UIContext, page: Page, target: str, title: str) -> HTMLResponse:
    """The registered models to pick from (the monitor and feedback pages without ``?model=``)."""
    rows, page.total = q.model_page(ctx.store.engine, page.offset, page.per)
    return render(request, "monitor_models.html", models=rows, page=page, target=target, title=title)


def known_model(ctx: UIContext, name: str) -> None:
    try:
        q.require_model(ctx.store.engine, name)
    except LookupError as e:
        raise UIError(404, str(e)) from None


@router.get("/monitor", response_class=HTMLResponse)
def monitor_page(request: Request, ctx: UIContext = Depends(get_ctx), model: str | None = NAME,
                 windows: int = Query(12, ge=1, le=q.MAX_WINDOWS, description="How many recent windows."),
                 page: Page = Depends(page_params)) -> HTMLResponse:
    if not model:
        return model_list(request, ctx, page, "/monitor", "Monitor")
    known_model(ctx, model)
    engine = ctx.store.engine
    shown = q.drift_windows(engine, model, windows)
    columns = q.columns_of(shown)
    tests = q.version_test_metrics(engine, model, {w["model_version"] for w in shown if w["model_version"] is not None})
    grid = [(col, [q.cell(w, col) for w in shown]) for col in columns]
    predicted = [q.cell(w, None) for w in shown]
    live = [_live(w, tests.get(w["model_version"], {})) for w in shown]
    if page.offset >= q.MAX_LISTED:
        raise UIError(400, f"page: the monitor lists the newest {q.MAX_LISTED} predictions "
                           f"(at {page.per} a page, pages 1..{-(-q.MAX_LISTED // page.per)})")
    rows, older = q.recent_predictions(engine, model, page.offset, min(page.per, q.MAX_LISTED - page.offset))
    if not older or page.offset + page.per >= q.MAX_LISTED:
        page.total = page.offset + len(rows)
    inputs: dict[str, None] = {}
    for r in rows:
        inputs.update(dict.fromkeys(r["inputs"] if isinstance(r["inputs"], dict) else {}))
    return render(request, "monitor.html", model=model, windows=shown, grid=grid, predicted=predicted, live=live,
                  chart=_chart(ctx, model, shown, columns), loop=_loop(ctx, model), rows=rows,
                  input_columns=list(inputs), page=page, capped=older and page.total is not None,
                  query={"model": model, "windows": windows}, drift=DRIFT)


def _live(window: dict, test: dict) -> dict:
    """A window's live metric from feedback, beside its version's test metric (stored with the window when
    both were known, else read from the version)."""
    live: Any = (window.get("results") or {}).get("live") or {}
    metric = "mae" if "mae" in live or ("accuracy" not in live and "mae" in test) else "accuracy"
    value = live.get(metric)
    reference = live.get(f"test_{metric}", test.get(metric))
    change = value - reference if isinstance(value, int | float) and isinstance(reference, int | float) else None
    worse = change is not None and (change > 0 if metric == "mae" else change < 0)
    return {"metric": metric, "labelled": live.get("labelled", 0), "value": value, "test": reference,
            "change": change, "worse": worse}


def _chart(ctx: UIContext, name: str, windows: list[dict], columns: list[str]) -> str | None:
    """PSI over the windows as an <img> data URI, redrawn only when a window was added (cached per model)."""
    if len(windows) < 2:
        return None
    key = ("monitor.chart", name)
    ids = tuple(w["id"] for w in windows)
    cached = ctx.caches.get(key)
    if cached is not None and cached[0] == ids:
        return cached[1]
    from loopml.evaluate.plots import psi_history

    newest = windows[-1]
    top = sorted(columns, key=lambda c: -((q.cell(newest, c) or {}).get("psi") or 0.0))[:CHART_COLUMNS]
    series = {c: [_psi(q.cell(w, c)) for w in windows] for c in top}
    if any(q.cell(w, None) for w in windows):
        series["(predictions)"] = [_psi(q.cell(w, None)) for w in windows]
    if not any(v is not None for values in series.values() for v in values):
        return None
    uri = png_uri(psi_history([f"#{w['id']}" for w in windows], series, DRIFT))
    ctx.caches[key] = (ids, uri)
    return uri


def _psi(cell: dict | None) -> float | None:
    value = (cell or {}).get("psi")
    return float(value) if isinstance(value, int | float) else None


def _loop(ctx: UIContext, name: str) -> dict:
    """The loop worker's schedule and the rollouts in progress (what ``loopml monitor`` prints last)."""
    from loopml.loop.worker import loop_status

    status = loop_status(ctx.store, name, counts=False)
    row = status["state"]
    return {"state": row, "phase": ((row or {}).get("state") or {}).get("phase", "idle") if row else None,
            "worker": status["worker"], "rollouts": status["rollouts"]}
