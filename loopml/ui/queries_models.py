"""What the models and decisions pages read: SQLAlchemy Core on the store's engine, paged in SQL.

Every list is one ``LIMIT/OFFSET`` query over an index plus one ``COUNT`` over the same index; the JSON
columns (metrics, lineage, numbers) are read only for the rows of the page shown. Writes never happen
here: promote and rollback go through ``Store`` so the audit row is written exactly as the CLI writes it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loopml.errors import LoopmlError, did_you_mean
from loopml.registry import db
from loopml.registry.artifacts import check_relative
from loopml.ui.paging import Page

#: the metrics a row shows first (the CLI's, then the usual others), from the test split (else validation)
KEY_METRICS = ("accuracy", "f1", "roc_auc", "r2", "mae", "balanced_accuracy", "f1_macro", "average_precision",
               "log_loss", "rmse")
#: decision kinds the code writes (loopml/registry/gating.py, loopml/loop/rollout.py, loopml/loop/worker.py)
KINDS = ("retrain", "rollout", "watch", "loop")
OUTCOMES = ("promoted", "rejected")
#: how many model names a "did you mean" looks through (a bounded read, even on a huge store)
SUGGEST_LIMIT = 5000
#: decisions and alias events are counted this far, no further (bounded whatever the filter): past it the
#: pager says "10000+"
COUNT_CAP = 10_000
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def test_metrics(metrics: Any) -> dict:
    """The test split's scalars (else validation's), as the CLI shows them."""
    if not isinstance(metrics, dict):
        return {}
    chosen = metrics.get("test") or metrics.get("validation") or {}
    return {k: v for k, v in chosen.items() if isinstance(v, int | float) and not isinstance(v, bool)} \
        if isinstance(chosen, dict) else {}


def key_metrics(metric_dicts: list[dict], limit: int = 5) -> list[str]:
    """The KEY_METRICS present in any of ``metric_dicts`` (test metrics, as ``test_metrics`` gives), in that
    order, at most ``limit``."""
    present: set[str] = set()
    for metrics in metric_dicts:
        present.update(metrics or {})
    return [k for k in KEY_METRICS if k in present][:limit]


def key_values(value: Any, limit: int = 60) -> list[tuple[str, str]]:
    """A JSON document (a decision's numbers, a version's lineage) as (dotted key, text) rows for a small
    table, formatted here (numbers as the ``num`` filter writes them, lists as compact JSON), so a page of
    them costs no template macro per cell; at most ``limit`` rows. The template escapes the text."""
    from loopml.registry.store import flatten
    from loopml.ui.context import num, short

    if value is None:
        return []
    flat = flatten(value) if isinstance(value, dict) else {"value": value}
    rows = []
    for key, item in list(flat.items())[:limit]:
        if item is None:
            text = "—"
        elif isinstance(item, int | float) and not isinstance(item, bool):
            text = num(item)
        elif isinstance(item, str):
            text = short(item, 120)
        else:
            text = short(json.dumps(item, default=str, sort_keys=True), 120)
        rows.append((short(key, 80), text))
    return rows


def _count(c, query, cap: int) -> int:
    """How many rows ``query`` has, counting no further than ``cap + 1`` (a bounded read, whatever the filter)."""
    return int(c.execute(sa.select(sa.func.count()).select_from(query.limit(cap + 1).subquery())).scalar() or 0)


@dataclass
class CappedPage(Page):
    """A page whose total is exact up to ``COUNT_CAP`` rows and "more than that" beyond (``capped``)."""

    capped: bool = False
    more: bool = False

    @property
    def pages(self) -> int | None:
        return None if self.capped else super().pages

    @property
    def has_next(self) -> bool:
        return self.more


def unknown_model(c, name: str) -> str:
    """The one line for a model name the store does not have, with the nearest name."""
    known = c.execute(sa.select(db.registered_models.c.name).limit(SUGGEST_LIMIT)).scalars().all()
    return f"no model named '{name}'{did_you_mean(name, known)}"


def model_names(engine: Engine, limit: int = 500) -> list[str]:
    with engine.connect() as c:
        return list(c.execute(sa.select(db.registered_models.c.name).order_by(db.registered_models.c.name)
                              .limit(limit)).scalars())


def list_models(engine: Engine, page: Page) -> list[dict]:
    """A page of registered models (by name): description, latest version, aliases, the production test metrics."""
    m, a, v = db.registered_models, db.aliases, db.model_versions
    with engine.connect() as c:
        page.total = int(c.execute(sa.select(sa.func.count()).select_from(m)).scalar() or 0)
        rows = [dict(r._mapping) for r in c.execute(
            sa.select(m.c.name, m.c.description, m.c.latest_version, m.c.created_at)
            .order_by(m.c.name).limit(page.per).offset(page.offset))]
        names = [r["name"] for r in rows]
        aliases: dict[str, dict[str, int]] = {}
        production: dict[str, dict] = {}
        if names:
            for r in c.execute(sa.select(a.c.name, a.c.alias, a.c.version).where(a.c.name.in_(names))
                               .order_by(a.c.name, a.c.alias)):
                aliases.setdefault(r.name, {})[r.alias] = r.version
            joined = v.join(a, sa.and_(a.c.name == v.c.name, a.c.version == v.c.version))
            for r in c.execute(sa.select(v.c.name, v.c.version, v.c.metrics).select_from(joined)
                               .where(a.c.alias == "production", a.c.name.in_(names))):
                production[r.name] = {"version": r.version, "metrics": test_metrics(r.metrics)}
    for row in rows:
        row["aliases"] = aliases.get(row["name"], {})
        row["production"] = production.get(row["name"])
    return rows


def get_model(engine: Engine, name: str) -> dict:
    """The model row, or LoopmlError (the CLI's line, nearest name suggested)."""
    m = db.registered_models
    with engine.connect() as c:
        row = c.execute(sa.select(m).where(m.c.name == name)).first() if NAME.match(name or "") else None
        if row is None:
            raise LoopmlError(unknown_model(c, name))
    return dict(row._mapping)


def model_detail(engine: Engine, name: str, versions: Page, events: Page) -> dict:
    """One model: a page of versions (newest first), every alias, a page of the alias audit log (newest first;
    ``epage``: its pager, the count bounded by ``COUNT_CAP`` — a busy alias can have 100k moves)."""
    model = get_model(engine, name)
    v, a, e = db.model_versions, db.aliases, db.alias_events
    with engine.connect() as c:
        versions.total = int(c.execute(sa.select(sa.func.count()).select_from(v).where(v.c.name == name)).scalar() or 0)
        rows = [dict(r._mapping) for r in c.execute(
            sa.select(v.c.version, v.c.run_id, v.c.artifact_uri, v.c.metrics, v.c.parent_version, v.c.data_fingerprint,
                      v.c.config_hash, v.c.created_at, v.c.description, v.c.lineage)
            .where(v.c.name == name).order_by(v.c.version.desc()).limit(versions.per).offset(versions.offset))]
        alias_rows = [dict(r._mapping) for r in c.execute(
            sa.select(a.c.alias, a.c.version, a.c.updated_at).where(a.c.name == name).order_by(a.c.alias))]
        total = _count(c, sa.select(e.c.id).where(e.c.name == name), COUNT_CAP)
        event_rows = [dict(r._mapping) for r in c.execute(
            sa.select(e.c.id, e.c.alias, e.c.action, e.c.from_version, e.c.to_version, e.c.actor, e.c.reason, e.c.at)
            .where(e.c.name == name).order_by(e.c.id.desc()).limit(events.per + 1).offset(events.offset))]
    events_page = CappedPage(events.page, events.per, total=min(total, COUNT_CAP), capped=total > COUNT_CAP,
                             more=len(event_rows) > events.per)
    event_rows = event_rows[:events.per]
    by_version: dict[int, list[str]] = {}
    for r in alias_rows:
        by_version.setdefault(r["version"], []).append(r["alias"])
    for row in rows:
        row["aliases"] = by_version.get(row["version"], [])
        row["test"] = test_metrics(row["metrics"])
    return {"model": model, "versions": rows, "aliases": alias_rows, "events": event_rows, "epage": events_page,
            "metric_keys": key_metrics([r["test"] for r in rows])}


def version_exists(engine: Engine, name: str, version: int) -> bool:
    v = db.model_versions
    with engine.connect() as c:
        return c.execute(sa.select(v.c.version).where(v.c.name == name, v.c.version == version)).first() is not None


def version_uri(engine: Engine, name: str, version: int) -> str:
    """The artifact URI of ``name`` version ``version``, or LoopmlError naming what is missing."""
    model = get_model(engine, name)
    v = db.model_versions
    with engine.connect() as c:
        uri = c.execute(sa.select(v.c.artifact_uri).where(v.c.name == name, v.c.version == version)).scalar()
    if uri is None:
        raise LoopmlError(f"'{name}' has no version {version} (latest is {model['latest_version']})")
    return uri


def local_report(artifacts, uri: str) -> Path | None:
    """``report.html`` of the artifact at ``uri`` when the root is a local folder and the file exists, confined
    to the root (no symlink out); None otherwise. No path here comes from the request."""
    try:
        folder = artifacts.root / check_relative(uri)
    except LoopmlError:
        return None
    path = (folder / "report.html").resolve()
    return path if path.is_relative_to(artifacts.root) and path.is_file() else None


def report_file(artifacts, uri: str) -> Path | None:
    """The version's ``report.html`` (remote roots: fetched into the cache first), confined to where the
    artifact root keeps files; None when the version has no report."""
    if artifacts.local:
        return local_report(artifacts, uri)
    try:
        folder = artifacts.fetch(uri)
    except LoopmlError:
        return None
    path = (folder / "report.html").resolve()
    return path if path.is_relative_to(artifacts.cache.resolve()) and path.is_file() else None


def decisions(engine: Engine, page: Page, model: str | None = None, kind: str | None = None,
              outcome: str | None = None) -> tuple[list[dict], CappedPage]:
    """A page of gate decisions across models, newest first, filtered by model, kind and outcome.

    Each filter alone has its index in id order ((model_name, id), (kind, id), (promoted, id)), so the page
    is a short backwards scan; the count of a combination needs row lookups, so it stops at ``COUNT_CAP``."""
    g = db.gate_decisions
    query = sa.select(g.c.id)
    if model:
        query = query.where(g.c.model_name == model)
    if kind:  # rows older than 0007 had no kind (retrain): 0008 fills it in, so the (kind, id) index serves
        query = query.where(g.c.kind == kind)
    if outcome:
        query = query.where(g.c.promoted == (sa.true() if outcome == "promoted" else sa.false()))
    with engine.connect() as c:
        total = _count(c, query, COUNT_CAP)
        ids = query.order_by(g.c.id.desc()).limit(page.per + 1).offset(page.offset).subquery()
        rows = [dict(r._mapping) for r in c.execute(
            sa.select(g).join(ids, ids.c.id == g.c.id).order_by(g.c.id.desc()))]
    shown = CappedPage(page.page, page.per, total=min(total, COUNT_CAP), capped=total > COUNT_CAP,
                       more=len(rows) > page.per)
    rows = rows[:page.per]
    for row in rows:
        row["kind"] = row["kind"] or "retrain"
        numbers = row["numbers"]
        row["numbers"] = numbers if isinstance(numbers, dict) else ({} if numbers is None else {"value": numbers})
    return rows, shown
