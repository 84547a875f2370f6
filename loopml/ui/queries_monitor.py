"""The reads behind the monitor and feedback pages: SQLAlchemy Core on the store's engine, bounded.

Every list is one indexed, LIMITed query: drift windows over ``ix_drift_windows_model`` (model, id),
predictions over ``ix_predictions_model_time`` (model, created_at), a prediction's label over the
feedback table's ``prediction_id`` index. JSON columns are decoded only for the rows shown.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from loopml.registry import db
from loopml.registry.records import answered

#: at most this many windows in the monitor's table and chart
MAX_WINDOWS = 50
#: the predictions table pages through the newest this many (a deep OFFSET walks the index: 10k rows stay fast)
MAX_LISTED = 10_000


def model_page(engine: sa.engine.Engine, offset: int, limit: int) -> tuple[list[dict], int]:
    """A page of registered models by name, each with its production version and newest drift window."""
    m, a, w = db.registered_models, db.aliases, db.drift_windows
    production = (sa.select(a.c.version).where(a.c.name == m.c.name, a.c.alias == "production")
                  .scalar_subquery().label("production"))
    newest = sa.select(sa.func.max(w.c.id)).where(w.c.model_name == m.c.name).scalar_subquery().label("window_id")
    query = (sa.select(m.c.name, m.c.latest_version, production, newest).order_by(m.c.name)
             .offset(offset).limit(limit))
    with engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(query)]
        total = c.execute(sa.select(sa.func.count()).select_from(m)).scalar() or 0
        ids = [r["window_id"] for r in rows if r["window_id"] is not None]
        windows = {r.id: dict(r._mapping) for r in c.execute(
            sa.select(w.c.id, w.c.created_at, w.c.drift, w.c.rows, w.c.model_version).where(w.c.id.in_(ids)))} if ids else {}
    for r in rows:
        r["window"] = windows.get(r["window_id"])
    return rows, int(total)


def require_model(engine: sa.engine.Engine, name: str) -> None:
    """Nothing, or LookupError with the one line a page shows (naming the nearest model)."""
    from loopml.ui.queries_models import unknown_model

    m = db.registered_models
    with engine.connect() as c:
        if c.execute(sa.select(m.c.name).where(m.c.name == name)).first() is not None:
            return
        raise LookupError(unknown_model(c, name))


def drift_windows(engine: sa.engine.Engine, name: str, limit: int) -> list[dict]:
    """The newest ``limit`` drift windows of ``name``, oldest first."""
    w = db.drift_windows
    query = sa.select(w).where(w.c.model_name == name).order_by(w.c.id.desc()).limit(min(limit, MAX_WINDOWS))
    with engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(query)]
    return rows[::-1]


def version_test_metrics(engine: sa.engine.Engine, name: str, versions: set[int]) -> dict[int, dict]:
    """The ``test`` metrics of these versions of ``name`` (what a live metric is compared with)."""
    if not versions:
        return {}
    v = db.model_versions
    with engine.connect() as c:
        rows = c.execute(sa.select(v.c.version, v.c.metrics).where(v.c.name == name, v.c.version.in_(sorted(versions))))
        return {r.version: (r.metrics or {}).get("test", {}) if isinstance(r.metrics, dict) else {} for r in rows}


def _label_of(p: sa.Table) -> sa.ScalarSelect:
    """The newest label given for the prediction row ``p`` (NULL when none): one probe of the feedback index."""
    f = db.feedback
    return (sa.select(f.c.label).where(f.c.prediction_id == p.c.id).order_by(f.c.id.desc()).limit(1)
            .scalar_subquery())


def recent_predictions(engine: sa.engine.Engine, name: str, offset: int, limit: int) -> tuple[list[dict], bool]:
    """A page of ``name``'s newest answered predictions (inputs, outputs, version, latency, label if any),
    newest first, and whether an older page exists (one row more is read instead of counting a million)."""
    p = db.predictions
    query = (sa.select(p.c.id, p.c.created_at, p.c.model_version, p.c.inputs, p.c.outputs, p.c.latency_ms,
                       _label_of(p).label("label"))
             .where(p.c.model_name == name, answered(p))
             .order_by(p.c.created_at.desc(), p.c.id.desc()).offset(offset).limit(limit + 1))
    with engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(query)]
    return rows[:limit], len(rows) > limit


def prediction(engine: sa.engine.Engine, prediction_id: str) -> dict | None:
    p = db.predictions
    with engine.connect() as c:
        row = c.execute(sa.select(p).where(p.c.id == prediction_id)).first()
    return dict(row._mapping) if row is not None else None


def is_labelled(engine: sa.engine.Engine, prediction_id: str) -> bool:
    f = db.feedback
    with engine.connect() as c:
        return c.execute(sa.select(f.c.id).where(f.c.prediction_id == prediction_id).limit(1)).first() is not None


def columns_of(windows: list[dict]) -> list[str]:
    """The columns any window measured, in the newest window's order, then the older ones'."""
    seen: dict[str, None] = {}
    for w in reversed(windows):
        for col in ((w.get("results") or {}).get("columns") or {}):
            seen.setdefault(col, None)
    return list(seen)


def cell(window: dict, column: str | None) -> dict | None:
    """One window's drift of ``column`` (None: the predictions) as stored: psi, level, kind…, or None."""
    results: Any = window.get("results") or {}
    value = results.get("predictions") if column is None else (results.get("columns") or {}).get(column)
    return value if isinstance(value, dict) else None
