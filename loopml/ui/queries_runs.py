"""The runs pages' reads: SQLAlchemy Core on the store's engine, paged and sorted in SQL.

- The list reads one page (LIMIT/OFFSET) of a few columns, ordered by an index (``started_at``, within
  a status or an experiment: migration 0008); its JSON ``metrics`` are decoded for the rows shown only.
- Sorting by a final metric (``test.accuracy``: a path into ``runs.metrics``) joins ``run_metric_values``
  (its numbers as rows, migration 0010), runs without it (or with a non-number there) last.
- A run's curves come from ``run_metrics`` by (run_id, key, step), an index too.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass

import sqlalchemy as sa

from loopml.evaluate.metrics import LOWER_IS_BETTER
from loopml.registry import db
from loopml.registry.store import RUN_STATUSES, flatten
from loopml.ui.auth import UIError
from loopml.ui.paging import Page

#: a metric key: dotted path of plain names (the only keys the page can sort by, and safe in a JSON path)
METRIC_KEY = re.compile(r"[A-Za-z0-9_\-]{1,100}(\.[A-Za-z0-9_\-]{1,100}){0,5}")
RUN_PREFIX = re.compile(r"[0-9a-f]{4,32}")
MAX_EXPERIMENTS = 500
LIST_COLUMNS = (db.runs.c.id, db.runs.c.experiment, db.runs.c.status, db.runs.c.started_at, db.runs.c.duration,
                db.runs.c.metrics)
SPLIT_ORDER = ("test", "validation", "val", "train")


def nearest(value: str, choices, what: str) -> str:
    """`` (nearest: x)`` or `` (known: a, b, c)`` for an error line."""
    choices = sorted({str(c) for c in choices})
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.4)
    if close:
        return f"{what} {value!r} is unknown (nearest: {close[0]!r})"
    shown = ", ".join(choices[:8]) + (", …" if len(choices) > 8 else "")
    return f"{what} {value!r} is unknown" + (f" (known: {shown})" if choices else "")


def lower_is_better(key: str) -> bool:
    """``test.loss``, ``val_rmse``: the last name, without a split prefix, decides."""
    name = key.rsplit(".", 1)[-1]
    for prefix in ("train_", "val_", "test_"):
        name = name.removeprefix(prefix)
    return name in LOWER_IS_BETTER or name in {"error", "ece", "brier"}


def flat(value) -> dict:
    """A params / metrics JSON value as dotted keys ({} for anything but an object)."""
    return flatten(value) if isinstance(value, dict) else {}


def numeric(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# -- the list ---------------------------------------------------------------------------------------
@dataclass
class RunQuery:
    experiment: str | None = None
    status: str | None = None
    sort: str = "started"  # started | duration | metric:<key>
    order: str = "desc"

    @property
    def metric(self) -> str | None:
        return self.sort.removeprefix("metric:") if self.sort.startswith("metric:") else None

    def as_query(self) -> dict:
        """The non-default parameters, for the pager's links."""
        out = {"experiment": self.experiment, "status": self.status}
        out.update({"sort": self.sort} if self.sort != "started" else {})
        out.update({"order": self.order} if self.order != "desc" else {})
        return {k: v for k, v in out.items() if v}


def parse_query(experiment: str | None, status: str | None, sort: str | None, order: str | None) -> RunQuery:
    """The list's parameters, checked (a bad one: a 400 naming the nearest valid value)."""
    status = (status or "").strip() or None
    if status is not None and status not in RUN_STATUSES:
        raise UIError(400, nearest(status, RUN_STATUSES, "status"))
    sort = (sort or "").strip() or "started"
    if sort not in ("started", "duration") and not sort.startswith("metric:"):
        raise UIError(400, nearest(sort, ("started", "duration", "metric:<key>"), "sort"))
    if sort.startswith("metric:") and not METRIC_KEY.fullmatch(sort.removeprefix("metric:")):
        raise UIError(400, f"sort metric {sort.removeprefix('metric:')!r} is not a metric key "
                           "(dotted names of letters, digits, _ and -, e.g. metric:test.accuracy)")
    order = (order or "").strip() or "desc"
    if order not in ("asc", "desc"):
        raise UIError(400, nearest(order, ("asc", "desc"), "order"))
    return RunQuery((experiment or "").strip() or None, status, sort, order)


def experiments(conn: sa.Connection) -> list[str]:
    """The distinct experiment names (an index-only scan of ix_runs_experiment_started)."""
    query = sa.select(db.runs.c.experiment).distinct().order_by(db.runs.c.experiment).limit(MAX_EXPERIMENTS)
    return [e for e in conn.execute(query).scalars() if e is not None]


def has_experiment(conn: sa.Connection, name: str) -> bool:
    """Whether any run has this experiment (for a name past the menu's first MAX_EXPERIMENTS)."""
    return conn.execute(sa.select(db.runs.c.id).where(db.runs.c.experiment == name).limit(1)).first() is not None


def _metric_order(conn: sa.Connection, q: RunQuery, page: Page) -> list:
    """The page's ``(id, sort_value)`` sorted by the number at ``q.metric`` (a dotted path into the final
    metrics), runs without it (or with a non-number there) last, newest first; 400 when no run here has it.

    The numbers come from ``run_metric_values`` (one row per run and numeric metric, written by ``end_run``;
    migration 0010), read in the order of its ``(key, value, run_id)`` index: a page of ranked runs is an index
    range, not a parse of every run's JSON (a JSON scan of 10k runs was the slowest page). Ties in value go by
    id, in the same direction. Filters (experiment, status) join ``runs`` by primary key."""
    v = db.run_metric_values
    direction = sa.desc if q.order == "desc" else sa.asc
    filtered = q.experiment is not None or q.status is not None
    source = v.join(db.runs, db.runs.c.id == v.c.run_id) if filtered else v
    ranked = _where(sa.select(v.c.run_id.label("id"), v.c.value.label("sort_value")).select_from(source)
                    .where(v.c.key == q.metric), q)
    having = conn.execute(sa.select(sa.func.count()).select_from(ranked.subquery())).scalar_one()
    if not having and not page.total:  # a filter no run matches: an empty page, not an error
        return []
    if not having:
        raise UIError(400, nearest(q.metric, _known_keys(conn), "metric") + " — no run here has it as a number")
    out = []
    if page.offset < having:
        out = conn.execute(ranked.order_by(direction(v.c.value), direction(v.c.run_id))
                           .limit(page.per).offset(page.offset)).all()
    if len(out) < page.per and page.offset + page.per > having:  # past the ranked runs: those without it
        has_it = sa.select(v.c.run_id).where(v.c.run_id == db.runs.c.id, v.c.key == q.metric).exists()
        rest = _where(sa.select(db.runs.c.id, sa.null().label("sort_value")).where(~has_it), q).order_by(
            db.runs.c.started_at.desc(), db.runs.c.id)
        out += conn.execute(rest.limit(page.per - len(out)).offset(max(0, page.offset - having))).all()
    return out


def _known_keys(conn: sa.Connection, limit: int = 200) -> list[str]:
    """Some metric keys runs have (for the nearest-key hint): distinct over the index's leading column."""
    v = db.run_metric_values
    return list(conn.execute(sa.select(v.c.key).distinct().order_by(v.c.key).limit(limit)).scalars())


def _where(query, q: RunQuery):
    if q.experiment is not None:
        query = query.where(db.runs.c.experiment == q.experiment)
    if q.status is not None:
        query = query.where(db.runs.c.status == q.status)
    return query


def list_runs(conn: sa.Connection, q: RunQuery, page: Page) -> list[dict]:
    """One page of runs (``page.total`` set), each with its flattened numeric final metrics.

    Two steps: the page's ids in order (by an index for ``started``; only ids and the sort value pass
    through a sort otherwise, so a deep OFFSET never drags JSON along), then those rows by primary key."""
    page.total = conn.execute(_where(sa.select(sa.func.count()).select_from(db.runs), q)).scalar_one()
    direction = sa.desc if q.order == "desc" else sa.asc
    if q.metric is not None:
        ids_query = None
    elif q.sort == "duration":
        ids_query = _where(sa.select(db.runs.c.id, db.runs.c.duration.label("sort_value")), q).order_by(
            direction(db.runs.c.duration).nulls_last(), db.runs.c.started_at.desc(), db.runs.c.id)
    else:
        ids_query = _where(sa.select(db.runs.c.id, sa.null().label("sort_value")), q).order_by(
            direction(db.runs.c.started_at), direction(db.runs.c.id))
    order = _metric_order(conn, q, page) if ids_query is None else \
        conn.execute(ids_query.limit(page.per).offset(page.offset)).all()
    found = {r.id: dict(r._mapping) for r in conn.execute(sa.select(*LIST_COLUMNS).where(
        db.runs.c.id.in_([o.id for o in order])))} if order else {}
    rows = []
    for o in order:
        if o.id not in found:  # deleted between the two reads
            continue
        row = found[o.id]
        row["sort_value"] = o.sort_value
        row["flat"] = {k: v for k, v in flat(row.pop("metrics")).items() if numeric(v) is not None}
        rows.append(row)
    return rows


def metric_columns(rows: list[dict], sort_key: str | None, limit: int = 5) -> list[str]:
    """Which final metrics the list shows: the sort key, then the most common ones (test split first)."""
    counts = Counter(k for r in rows for k in r["flat"])

    def rank(key: str):
        split = key.split(".", 1)[0]
        return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), -counts[key], key)

    keys = sorted(counts, key=rank)
    chosen = [sort_key] if sort_key else []
    return chosen + [k for k in keys if k != sort_key][: limit - len(chosen)]


def sort_keys(rows: list[dict], current: str | None) -> list[str]:
    """The metric keys the sort menu offers: those of the rows shown (and the current one)."""
    keys = {k for r in rows for k in r["flat"]}
    return sorted(keys | ({current} if current else set()))[:60]


# -- one run ----------------------------------------------------------------------------------------
def find_run(conn: sa.Connection, run_id: str) -> dict:
    """A run by id, or by a unique hex prefix (as the CLI accepts); 404 naming it otherwise."""
    row = conn.execute(sa.select(db.runs).where(db.runs.c.id == run_id)).first()
    if row is None and RUN_PREFIX.fullmatch(run_id):
        # a range on the primary key (an index), not LIKE: ids are lowercase hex
        matches = conn.execute(sa.select(db.runs).where(db.runs.c.id >= run_id, db.runs.c.id < run_id + "g")
                               .limit(2)).all()
        if len(matches) > 1:
            raise UIError(404, f"run id prefix {run_id!r} is ambiguous: give more characters")
        row = matches[0] if matches else None
    if row is None:
        raise UIError(404, f"no run {run_id!r}")
    return dict(row._mapping)


def versions_of(conn: sa.Connection, run_id: str) -> list[dict]:
    query = (sa.select(db.model_versions.c.name, db.model_versions.c.version, db.model_versions.c.created_at)
             .where(db.model_versions.c.run_id == run_id).order_by(db.model_versions.c.name, db.model_versions.c.version)
             .limit(100))
    return [dict(r._mapping) for r in conn.execute(query)]


def history_keys(conn: sa.Connection, run_ids: list[str]) -> list[str]:
    query = (sa.select(db.run_metrics.c.key).where(db.run_metrics.c.run_id.in_(run_ids)).distinct()
             .order_by(db.run_metrics.c.key).limit(200))
    return list(conn.execute(query).scalars())


def curve_groups(keys: list[str]) -> list[str]:
    """The learning-curve figures of a run: ``loss`` for train_loss + val_loss, else the key itself."""
    groups: list[str] = []
    for key in keys:
        base = key.removeprefix("train_").removeprefix("val_") if key.startswith(("train_", "val_")) else key
        if base not in groups:
            groups.append(base)
    # the fitted metrics first, bookkeeping (lr, time) last
    return sorted(groups, key=lambda g: (g in ("lr", "time"), g != "loss", g))


def history(conn: sa.Connection, run_ids: list[str], keys: list[str], max_points: int = 5000) -> list[tuple]:
    """``(run_id, key, step, value)`` rows in step order (ix_run_metrics_run_key_step)."""
    query = (sa.select(db.run_metrics.c.run_id, db.run_metrics.c.key, db.run_metrics.c.step, db.run_metrics.c.value)
             .where(db.run_metrics.c.run_id.in_(run_ids), db.run_metrics.c.key.in_(keys))
             .order_by(db.run_metrics.c.run_id, db.run_metrics.c.key, db.run_metrics.c.step, db.run_metrics.c.id)
             .limit(max_points * max(1, len(run_ids)) * max(1, len(keys))))
    return [tuple(r) for r in conn.execute(query)]


def epochs_for(rows: list[tuple]) -> list[dict]:
    """One run's history rows as the report's per-epoch dicts ``{"epoch": step, key: value, ...}``."""
    epochs: dict[int, dict] = {}
    for _run, key, step, value in rows:
        epochs.setdefault(step, {"epoch": step})[key] = value
    return [epochs[s] for s in sorted(epochs)]


# -- comparing runs ---------------------------------------------------------------------------------
def parse_ids(values: list[str]) -> list[str]:
    """``?ids=a,b`` and ``?ids=a&ids=b`` (the list's checkboxes) alike; 2 to 4 distinct ids."""
    ids: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in ids:
                ids.append(part)
    if not 2 <= len(ids) <= 4:
        raise UIError(400, f"compare needs 2 to 4 run ids (ids=a,b), got {len(ids)}")
    return ids


def metric_table(runs: list[dict]) -> list[dict]:
    """One row per final metric key: the values per run and which column is best."""
    flats = [flat(r.get("metrics")) for r in runs]
    keys = sorted({k for f in flats for k in f})
    table = []
    for key in keys:
        values = [f.get(key) for f in flats]
        numbers = [(numeric(v), i) for i, v in enumerate(values) if numeric(v) is not None]
        best = None
        if len(numbers) >= 2 and len({n for n, _ in numbers}) > 1:
            best = (min if lower_is_better(key) else max)(numbers)[1]
        table.append({"key": key, "values": values, "best": best, "lower": lower_is_better(key)})
    return table


def param_diff(runs: list[dict]) -> list[dict]:
    """One row per flattened param (a.b.c): the values per run and whether they differ."""
    flats = [flat(r.get("params")) for r in runs]
    keys = sorted({k for f in flats for k in f})
    missing = object()
    rows = []
    for key in keys:
        values = [f.get(key, missing) for f in flats]
        differs = len({repr(v) for v in values}) > 1
        rows.append({"key": key, "values": [None if v is missing else v for v in values], "differs": differs})
    return rows
