"""The overview page ``/``: counts, each model's production version, the loop workers, the newest decisions.

Every number is one bounded query: counts are ``SELECT COUNT`` (the 24-hour prediction count over the
``predictions.created_at`` index range), the models table and the decisions are LIMITed, and JSON columns
(metrics, numbers) are read only for the rows shown. The counts are kept for a few seconds per app, so a
dashboard left open (or many tabs) does not recount a million predictions on every refresh.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from loopml.registry import db
from loopml.ui.context import UIContext, get_ctx, render

router = APIRouter()

#: the models table shows this many (the models page lists them all, paged)
MODELS_SHOWN = 50
DECISIONS_SHOWN = 10
LOOPS_SHOWN = 20
#: seconds the counts are reused before they are counted again
COUNTS_TTL_S = 5.0
#: the headline metric of a version: the first of these its test (else validation) metrics has
KEY_METRICS = ("accuracy", "f1", "roc_auc", "r2", "mae", "rmse", "log_loss")


def counts(engine: sa.engine.Engine, now: float) -> dict[str, int]:
    """Runs, models, versions, predictions in the last 24 h, feedback rows: five COUNTs in one round trip."""
    count = sa.func.count()
    p = db.predictions
    query = sa.select(
        sa.select(count).select_from(db.runs).scalar_subquery().label("runs"),
        sa.select(count).select_from(db.registered_models).scalar_subquery().label("models"),
        sa.select(count).select_from(db.model_versions).scalar_subquery().label("versions"),
        sa.select(count).select_from(p).where(p.c.created_at >= now - 86400.0).scalar_subquery().label("predictions_24h"),
        sa.select(count).select_from(db.feedback).scalar_subquery().label("feedback"),
    )
    with engine.connect() as c:
        row = c.execute(query).one()
    return {k: int(v or 0) for k, v in row._mapping.items()}


def headline(metrics: Any) -> tuple[str | None, float | None]:
    """(name, value) of a version's headline test metric, from its stored metrics JSON."""
    if not isinstance(metrics, dict):
        return None, None
    split = metrics.get("test") or metrics.get("validation") or {}
    if not isinstance(split, dict):
        return None, None
    for key in KEY_METRICS:
        value = split.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return key, float(value)
    return None, None


def models_table(engine: sa.engine.Engine) -> tuple[list[dict], bool]:
    """The first models by name: latest version, production version and its headline metric, newest drift window
    (one seek per model: ``max(id)`` over ``ix_drift_windows_model``, however many windows it has)."""
    m, a, v, w = db.registered_models, db.aliases, db.model_versions, db.drift_windows
    older = w.alias("older")
    newest = sa.select(sa.func.max(older.c.id)).where(older.c.model_name == m.c.name).scalar_subquery()
    query = (sa.select(m.c.name, m.c.latest_version, a.c.version.label("production"), v.c.metrics,
                       w.c.model_version.label("drift_version"), w.c.drift, w.c.rows.label("drift_rows"),
                       w.c.created_at.label("drift_at"))
             .select_from(m.outerjoin(a, sa.and_(a.c.name == m.c.name, a.c.alias == "production"))
                          .outerjoin(v, sa.and_(v.c.name == m.c.name, v.c.version == a.c.version))
                          .outerjoin(w, w.c.id == newest))
             .order_by(m.c.name).limit(MODELS_SHOWN + 1))
    with engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(query)]
    for r in rows:
        r["metric"], r["metric_value"] = headline(r.pop("metrics"))
        window = {"model_version": r.pop("drift_version"), "drift": r.pop("drift"), "rows": r.pop("drift_rows"),
                  "created_at": r.pop("drift_at")}
        r["drift"] = window if window["rows"] is not None else None
    return rows[:MODELS_SHOWN], len(rows) > MODELS_SHOWN


def loop_workers(engine: sa.engine.Engine, now: float) -> list[dict]:
    """Each model's loop schedule (loop_state) and whether a live worker holds its loop lock."""
    from loopml.loop.worker import PURPOSE
    from loopml.registry.liveness import pid_alive

    s, lk = db.loop_state, db.model_locks
    query = (sa.select(s.c.model_name, s.c.next_cycle_at, s.c.last_cycle_at, s.c.cycles, s.c.state, s.c.updated_at,
                       lk.c.host, lk.c.pid, lk.c.acquired_at, lk.c.expires_at)
             .select_from(s.outerjoin(lk, sa.and_(lk.c.name == s.c.model_name, lk.c.purpose == PURPOSE)))
             .order_by(s.c.model_name).limit(LOOPS_SHOWN))
    with engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(query)]
    here = socket.gethostname()
    for r in rows:
        state = r.pop("state")
        state = state if isinstance(state, dict) else {}
        r["phase"] = state.get("phase") if isinstance(state.get("phase"), str) else None
        alive = r["expires_at"] is not None and r["expires_at"] > now and (
            r["host"] != here or pid_alive(r["pid"], r["acquired_at"]))
        r["worker"] = "running" if alive else "stopped"
        for key in ("host", "pid", "acquired_at", "expires_at"):  # where a worker runs is not the page's business
            r.pop(key)
    return rows


def newest_decisions(engine: sa.engine.Engine) -> list[dict]:
    from loopml.loop.worker import decision_outcome

    g = db.gate_decisions
    query = (sa.select(g.c.id, g.c.model_name, g.c.kind, g.c.candidate_version, g.c.champion_version, g.c.promoted,
                       g.c.reason, g.c.numbers, g.c.at).order_by(g.c.id.desc()).limit(DECISIONS_SHOWN))
    with engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(query)]
    for r in rows:
        numbers = r.pop("numbers")
        r["kind"] = r["kind"] or "retrain"
        r["outcome"] = decision_outcome({**r, "numbers": numbers if isinstance(numbers, dict) else {}})
    return rows


def cached_counts(ctx: UIContext, now: float) -> dict[str, int]:
    cache = ctx.caches.setdefault("overview", {})
    hit = cache.get("counts")
    if hit is not None and now - hit[0] < COUNTS_TTL_S:
        return hit[1]
    value = counts(ctx.store.engine, now)
    cache["counts"] = (now, value)
    return value


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, ctx: UIContext = Depends(get_ctx)) -> HTMLResponse:
    now = time.time()
    engine = ctx.store.engine
    models, more_models = models_table(engine)
    return render(request, "overview.html", counts=cached_counts(ctx, now), models=models, more_models=more_models,
                  loops=loop_workers(engine, now), decisions=newest_decisions(engine), now=now)
