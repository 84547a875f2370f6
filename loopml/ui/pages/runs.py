"""The runs pages: the list (filter, sort by a metric, pick runs to compare), one run, a comparison.

Learning curves are PNGs drawn by ``loopml.evaluate.plots`` (the report's code), served as their own
images (``…/curve.png``) so a page's HTML never waits for matplotlib; each figure is cached by the
exact points it draws, so a finished run's curve is drawn once.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response

from loopml.ui import queries_runs as qr
from loopml.ui.auth import UIError
from loopml.ui.context import UIContext, get_ctx, render, short
from loopml.ui.paging import Page, page_params

router = APIRouter()

PNG_CACHE = "runs.png"
PNG_CACHE_SIZE = 256
_png_lock = threading.Lock()


def _cached_png(ctx: UIContext, key: tuple, draw) -> bytes | None:
    """``draw()`` once per distinct ``key`` (the figure's inputs), LRU-bounded, shared by the app's threads."""
    digest = hashlib.sha256(repr(key).encode("utf-8")).hexdigest()
    with _png_lock:
        cache = ctx.caches.setdefault(PNG_CACHE, OrderedDict())
        if digest in cache:
            cache.move_to_end(digest)
            return cache[digest]
    png = draw()
    with _png_lock:
        cache[digest] = png
        while len(cache) > PNG_CACHE_SIZE:
            cache.popitem(last=False)
    return png


def _png_response(png: bytes | None, what: str) -> Response:
    if png is None:
        raise UIError(404, f"no curve for {what}")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


@router.get("/runs", response_class=HTMLResponse)
def runs_list(request: Request, ctx: UIContext = Depends(get_ctx), page: Page = Depends(page_params),
              experiment: str | None = Query(None, max_length=200), status: str | None = Query(None, max_length=32),
              sort: str | None = Query(None, max_length=220), order: str | None = Query(None, max_length=8)):
    q = qr.parse_query(experiment, status, sort, order)
    with ctx.store.engine.connect() as conn:
        names = qr.experiments(conn)
        if q.experiment is not None and q.experiment not in names and not qr.has_experiment(conn, q.experiment):
            raise UIError(404, qr.nearest(q.experiment, names, "experiment"))
        rows = qr.list_runs(conn, q, page)
    return render(request, "runs.html", rows=rows, page=page, q=q, experiments=names,
                  statuses=qr.RUN_STATUSES, columns=qr.metric_columns(rows, q.metric),
                  sort_keys=qr.sort_keys(rows, q.metric), query=q.as_query())


def _resolve(conn, ids: list[str]) -> list[dict]:
    runs = [qr.find_run(conn, i) for i in ids]
    if len({r["id"] for r in runs}) != len(runs):
        raise UIError(400, "compare needs 2 to 4 different runs (two ids name the same run)")
    return runs


@router.get("/runs/compare", response_class=HTMLResponse)
def runs_compare(request: Request, ctx: UIContext = Depends(get_ctx),
                 ids: list[str] = Query([], max_length=400)):
    wanted = qr.parse_ids(ids)
    with ctx.store.engine.connect() as conn:
        runs = _resolve(conn, wanted)
        keys = qr.history_keys(conn, [r["id"] for r in runs])
    return render(request, "runs_compare.html", runs=runs, ids=",".join(r["id"] for r in runs),
                  metrics=qr.metric_table(runs), params=qr.param_diff(runs), curve_keys=keys)


@router.get("/runs/compare/curve.png")
def runs_compare_curve(ctx: UIContext = Depends(get_ctx), ids: list[str] = Query([], max_length=400),
                       key: str = Query(..., min_length=1, max_length=100)):
    wanted = qr.parse_ids(ids)
    with ctx.store.engine.connect() as conn:
        runs = _resolve(conn, wanted)
        rows = qr.history(conn, [r["id"] for r in runs], [key])
    labels = _labels(runs)
    series = {labels[r["id"]]: [(step + 1, value) for run, _k, step, value in rows if run == r["id"] and value is not None]
              for r in runs}
    if not any(series.values()):
        raise UIError(404, f"no run here logged {key!r}")
    from loopml.evaluate import plots

    return _png_response(_cached_png(ctx, ("compare", key, tuple(series.items())),
                                     lambda: plots.overlaid_curves(series, key)), key)


def _labels(runs: list[dict]) -> dict[str, str]:
    """Legend labels: the short id, with the experiment when it tells runs apart."""
    experiments = {r["experiment"] for r in runs}
    return {r["id"]: r["id"][:8] + (f" ({short(r['experiment'] or '', 24)})" if len(experiments) > 1 else "")
            for r in runs}


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_detail(request: Request, run_id: str = PathParam(max_length=64), ctx: UIContext = Depends(get_ctx)):
    with ctx.store.engine.connect() as conn:
        run = qr.find_run(conn, run_id)
        versions = qr.versions_of(conn, run["id"])
        curves = qr.curve_groups(qr.history_keys(conn, [run["id"]]))
    return render(request, "runs_detail.html", run=run, versions=versions, curves=curves,
                  params=sorted(qr.flat(run.get("params")).items()), metrics=sorted(qr.flat(run.get("metrics")).items()))


@router.get("/runs/{run_id}/curve.png")
def run_curve(run_id: str = PathParam(max_length=64), ctx: UIContext = Depends(get_ctx),
              key: str = Query(..., min_length=1, max_length=100)):
    """``key``: a base name (``loss``: train_loss and val_loss, as the report draws it) or a logged key (``lr``)."""
    with ctx.store.engine.connect() as conn:
        run = qr.find_run(conn, run_id)
        rows = qr.history(conn, [run["id"]], [key, f"train_{key}", f"val_{key}"])
    epochs = qr.epochs_for(rows)
    if not epochs:
        raise UIError(404, f"run {run['id'][:8]} logged no {key!r}")
    from loopml.evaluate import plots

    paired = any(f"train_{key}" in e or f"val_{key}" in e for e in epochs)
    if paired:
        def draw():
            return plots.learning_curve(epochs, key, None, key)
    else:
        points = [e for e in epochs if e.get(key) is not None]

        def draw():
            return plots.per_epoch(points, key, key, key) if points else None
    return _png_response(_cached_png(ctx, ("run", key, tuple(rows)), draw), key)
