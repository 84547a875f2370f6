"""The labelling queue: logged predictions without a label, ranked (``loopml.loop.queue``), with their
inputs shown, and one click or key per label; a label is a feedback row, checked as ``POST /v1/feedback``
checks it.

Ranking costs seconds of CPU, so the page ranks the newest ``WINDOW`` unlabelled predictions in the
thread pool and keeps the ranked list ``TTL_S`` seconds per (model, production version, strategy): a
cached page is one resolve, one labelled-or-not probe of the listed ids and the render. A stale list
is still shown (rows labelled since dropped) while a background thread ranks afresh.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from loopml.errors import LoopmlError, did_you_mean
from loopml.loop.queue import STRATEGIES
from loopml.registry.records import FeedbackExists
from loopml.ui import queries_monitor as q
from loopml.ui.auth import UIError, require_admin
from loopml.ui.context import UIContext, base_url, get_ctx, render
from loopml.ui.pages.monitor import NAME, known_model, model_list
from loopml.ui.paging import Page, page_params

log = logging.getLogger("loopml.ui")
router = APIRouter()
#: the page ranks the newest this many unlabelled predictions (the CLI's 5000 take seconds more)
WINDOW = 1000
#: a ranked list is reused this long (rows labelled meanwhile are dropped from it on every view)
TTL_S = 60.0
#: the most rows one page shows; the list keeps more so labelled rows leave it without a re-rank
MAX_N, KEEP = 100, 2
DEFAULT_N = 20
THUMB = (160, 120)
MAX_THUMB_PIXELS = 40_000_000


# -- the model the queue is ranked by --------------------------------------------------------------
def production(ctx: UIContext, name: str) -> tuple[int, Any] | None:
    """(version, loaded model) of ``name@production``, loaded once per version; None without that alias."""
    version = ctx.store.alias_version(name, "production")
    if version is None:
        return None
    hosted = ctx.served_model(name) if ctx.served_model is not None else None
    if hosted is not None and hosted[0] == version:  # the server's own copy (serve --ui): no second load
        return int(hosted[0]), hosted[1]
    key = ("feedback.model", name)
    cached = ctx.caches.get(key)
    if cached is not None and cached[0] == version:
        return cached
    import loopml

    try:
        resolved = ctx.store.resolve(f"{name}@production")
        loaded = (int(resolved["version"]), loopml.load(resolved["path"]))
    except LoopmlError as e:
        raise UIError(503, f"cannot load {name}@production: {e}") from None
    ctx.caches[key] = loaded
    return loaded


# -- the ranked list, cached -----------------------------------------------------------------------
def _lock(ctx: UIContext, key: tuple) -> threading.Lock:
    locks = ctx.caches.setdefault(("feedback.locks",), {})
    return locks.setdefault(key, threading.Lock())


def _rank(ctx: UIContext, name: str, version: int, model: Any, strategy: str, n: int) -> dict:
    from loopml.loop.queue import feedback_queue

    started = time.time()
    rows = feedback_queue(ctx.store, name, n * KEEP, strategy, window=WINDOW, model=model, ranked_by=version)
    return {"at": started, "seconds": time.time() - started, "rows": rows, "n": n * KEEP, "refreshing": False}


def ranked(ctx: UIContext, name: str, version: int, model: Any, strategy: str, n: int) -> dict:
    """The cached ranking (ranked now if there is none holding ``n`` rows; refreshed in the background when stale)."""
    key = ("feedback.queue", name, version, strategy)
    entry = ctx.caches.get(key)
    if entry is None or entry["n"] < n * KEEP:
        with _lock(ctx, key):  # one ranking per list at a time: a second visitor waits for the first's
            entry = ctx.caches.get(key)
            if entry is None or entry["n"] < n * KEEP:
                entry = ctx.caches[key] = _rank(ctx, name, version, model, strategy, n)
    elif time.time() - entry["at"] > TTL_S and not entry["refreshing"]:
        entry["refreshing"] = True
        threading.Thread(target=_refresh, args=(ctx, key, name, version, model, strategy, entry["n"] // KEEP),
                         name=f"loopml-ui-rank-{name}", daemon=True).start()
    return entry


def _refresh(ctx: UIContext, key: tuple, name: str, version: int, model: Any, strategy: str, n: int) -> None:
    try:
        with _lock(ctx, key):
            ctx.caches[key] = _rank(ctx, name, version, model, strategy, n)
    except (LoopmlError, SQLAlchemyError, ValueError) as e:  # the stale list stays; the next view tries again
        log.warning("re-ranking the labelling queue of %s failed: %s", name, e)
        if key in ctx.caches:
            ctx.caches[key]["refreshing"] = False


# -- the first ranking, in the background ----------------------------------------------------------
def _prepare(ctx: UIContext, job: dict, name: str, strategy: str, n: int) -> None:
    try:
        served = production(ctx, name)
        job["result"] = (served, ranked(ctx, name, *served, strategy, n) if served is not None else None)
    except (UIError, LoopmlError, SQLAlchemyError, ValueError) as e:  # re-raised by the view that collects it
        job["error"] = e
    finally:
        job["done"].set()


def _job(ctx: UIContext, name: str, strategy: str, n: int) -> tuple[tuple, dict]:
    """The running (or finished, not yet collected) preparation of this queue, started if there is none."""
    key = ("feedback.job", name, strategy, n)
    with _lock(ctx, ("feedback.jobs",)):
        job = ctx.caches.get(key)
        if job is None:
            job = ctx.caches[key] = {"done": threading.Event(), "result": None, "error": None}
            threading.Thread(target=_prepare, args=(ctx, job, name, strategy, n), name=f"loopml-ui-prepare-{name}",
                             daemon=True).start()
    return key, job


def prepared(ctx: UIContext, name: str, strategy: str, n: int) -> tuple[Any, dict | None] | None:
    """((version, model) or None, ranked entry) of ``name``'s queue, or None while a first load and ranking (seconds:
    the model is loaded, 1000 rows scored) still runs: it runs in a thread the view waits on for at most
    ``settings.rank_wait_s``, so a fresh server's page answers at once with "ranking…" and reloads itself."""
    key, job = _job(ctx, name, strategy, n)
    if not job["done"].wait(max(ctx.settings.rank_wait_s, 0.0)):
        return None
    with _lock(ctx, ("feedback.jobs",)):
        if ctx.caches.get(key) is job:
            del ctx.caches[key]  # the next view asks again (a cache hit once the model and ranking are kept)
    if job["error"] is not None:
        raise job["error"]
    return job["result"]


def prerank(ctx: UIContext, limit: int = 3) -> list[str]:
    """Start the first ranking, in the background, of the queues of the (at most ``limit``) models with a production
    alias among the newest logged predictions: the models someone is about to label. Their names."""
    import sqlalchemy as sa

    from loopml.registry import db

    p, a = db.predictions, db.aliases
    newest = sa.select(p.c.model_name).order_by(p.c.created_at.desc()).limit(500).subquery()
    query = (sa.select(a.c.name).where(a.c.alias == "production", a.c.name.in_(sa.select(newest.c.model_name)))
             .order_by(a.c.name).limit(limit))
    with ctx.store.engine.connect() as c:
        names = list(c.execute(query).scalars())
    for name in names:
        _job(ctx, name, "uncertainty", DEFAULT_N)
    return names


# -- the page --------------------------------------------------------------------------------------
@router.get("/feedback", response_class=HTMLResponse)
def feedback_page(request: Request, ctx: UIContext = Depends(get_ctx), model: str | None = NAME,
                  strategy: str = Query("uncertainty", max_length=32, description="|".join(STRATEGIES)),
                  n: int = Query(DEFAULT_N, ge=1, le=MAX_N, description=f"Rows to show (1..{MAX_N})."),
                  page: Page = Depends(page_params)) -> HTMLResponse:
    if not model:
        return model_list(request, ctx, page, "/feedback", "Labelling queue")
    if strategy not in STRATEGIES:
        raise UIError(422, f"strategy: unknown strategy '{strategy}'{did_you_mean(strategy, STRATEGIES)}; "
                           f"valid strategies: {', '.join(STRATEGIES)}")
    known_model(ctx, model)
    values = {"model": model, "strategy": strategy, "n": n, "strategies": STRATEGIES, "window": WINDOW}
    try:
        ready = prepared(ctx, model, strategy, n)
    except LoopmlError as e:
        raise UIError(422, str(e)) from None
    if ready is None:
        return render(request, "feedback.html", rows=[], version=None, entry=None, ranking=True, **values)
    served, entry = ready
    if served is None:
        return render(request, "feedback.html", rows=[], version=None, entry=None, **values)
    version, loaded = served
    listed = entry["rows"]
    done = ctx.store.labelled([r["prediction_id"] for r in listed])
    rows = [dict(r) for r in listed if r["prediction_id"] not in done][:n]  # copies: the cached rows stay as ranked
    target = loaded.preprocessor.target
    kinds = {c: f.config.type for c, f in loaded.preprocessor.features.items()}
    for r in rows:
        r["shown"] = _inputs(ctx, r, kinds)
        probabilities = r.get("probabilities") if isinstance(r.get("probabilities"), dict) else {}
        r["top"] = sorted(probabilities.items(), key=lambda kv: -kv[1] if isinstance(kv[1], int | float) else 0)[:5]
    classes = [str(c) for c in target.classes] if target.kind != "number" else []
    return render(request, "feedback.html", rows=rows, version=version, entry=entry, classes=classes,
                  task=target.kind, target=target.column, age=time.time() - entry["at"], **values)


def _inputs(ctx: UIContext, row: dict, kinds: dict[str, str]) -> list[dict]:
    """Each logged input as the template shows it: kind, value, and a thumbnail URL for an image file
    inside the media root (otherwise an image shows as its text)."""
    from loopml.data.media import served_path

    inputs = row["inputs"] if isinstance(row["inputs"], dict) else {}
    root = _media_root(ctx)
    out = []
    for col in list(kinds) + [c for c in inputs if c not in kinds]:
        value = inputs.get(col)
        kind = kinds.get(col, "other")
        thumb = kind == "image" and root is not None and served_path(value, root) is not None
        out.append({"column": col, "kind": kind, "value": value, "thumb": thumb})
    return out


def _media_root(ctx: UIContext) -> Path | None:
    root = ctx.settings.media_root
    return Path(root).expanduser().resolve() if root else None


# -- labelling -------------------------------------------------------------------------------------
def check_label(target: Any, text: str) -> object:
    """The label a form sent, checked as ``POST /v1/feedback`` checks it (a class of the target, by
    canonical key; a finite number in range for a regressor); UIError with its one line otherwise."""
    from loopml.serve.app import _HTTP, _check_label

    value: object = text
    if target.kind == "number":
        try:
            value = float(text)
        except ValueError:
            raise UIError(422, f"label: a number is expected for '{target.column}' (got {text[:40]!r})") from None
    try:
        return _check_label(target, value)
    except _HTTP as e:
        raise UIError(e.status, e.detail) from None


@router.post("/feedback/{name}/label", response_class=HTMLResponse)
def label_prediction(request: Request, name: str, ctx: UIContext = Depends(get_ctx),
                     actor: str = Depends(require_admin),
                     prediction_id: str = Form(..., min_length=1, max_length=64),
                     label: str = Form(..., max_length=1000),
                     strategy: str = Form("uncertainty", max_length=32),
                     n: int = Form(20, ge=1, le=MAX_N)) -> Response:
    known_model(ctx, name)
    served = production(ctx, name)
    if served is None:
        raise UIError(409, f"'{name}' has no production version: labels are checked against its classes")
    value = check_label(served[1].preprocessor.target, label)
    logged = q.prediction(ctx.store.engine, prediction_id)
    if logged is None or logged["model_name"] != name or logged.get("served") is False:
        raise UIError(404, f"no prediction with id '{prediction_id}' for '{name}'")
    if q.is_labelled(ctx.store.engine, prediction_id):
        raise UIError(409, f"prediction '{prediction_id}' is already labelled")
    try:  # the unique index decides a race between two labellers: the second gets the same 409
        ctx.store.add_feedback(name, value, prediction_id, logged["inputs"], logged["outputs"], logged["model_version"])
    except FeedbackExists:
        raise UIError(409, f"prediction '{prediction_id}' is already labelled") from None
    log.info("%s labelled prediction %s of %s as %r", actor, prediction_id, name, value)
    if request.headers.get("hx-request") == "true":
        return render(request, "feedback_done.html", prediction_id=prediction_id, label=value)
    back = "&".join(f"{k}={v}" for k, v in (("strategy", strategy if strategy in STRATEGIES else "uncertainty"),
                                              ("n", n)))
    from urllib.parse import quote

    return RedirectResponse(f"{base_url(request)}/feedback?model={quote(name, safe='')}&{back}", status_code=303)


# -- thumbnails ------------------------------------------------------------------------------------
@router.get("/feedback/{name}/thumb/{prediction_id}/{column}")
def thumbnail(name: str, prediction_id: str, column: str, ctx: UIContext = Depends(get_ctx)) -> Response:
    """A logged image input, small: only a file the prediction names in an image column of the model,
    inside the media root (``served_path`` confines it as the server does)."""
    from PIL import Image

    from loopml.data.media import check_image_pixels, served_path

    root = _media_root(ctx)
    served = production(ctx, name) if root is not None else None
    logged = q.prediction(ctx.store.engine, prediction_id) if served is not None else None
    feature = served[1].preprocessor.features.get(column) if served is not None else None
    if logged is None or logged["model_name"] != name or feature is None or feature.config.type != "image":
        raise UIError(404, "no such image")
    path = served_path((logged["inputs"] or {}).get(column) if isinstance(logged["inputs"], dict) else None, root)
    if path is None:
        raise UIError(404, "no such image")
    try:
        with Image.open(path) as image:
            check_image_pixels(image.size, MAX_THUMB_PIXELS)
            image.thumbnail(THUMB)
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError):
        raise UIError(404, "the image cannot be read") from None
    return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
