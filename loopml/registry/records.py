"""The prediction log and feedback: what the server writes and the loop reads."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from loopml.errors import LoopmlError
from loopml.registry import db


def answered(p: sa.Table = db.predictions) -> sa.ColumnElement:
    """Predictions a client got (``served`` NULL in rows older than 0007, or True); not shadow rows."""
    return p.c.served.is_not(sa.false())


class FeedbackExists(LoopmlError):
    """A second label for one prediction, not marked as a correction (the server answers 409)."""

    def __init__(self, prediction_id: str) -> None:
        self.prediction_id = prediction_id
        super().__init__(f"prediction {prediction_id} already has feedback (to replace its label, send it as a "
                         "correction: \"corrects\": true)")


class Records:
    """Mixed into ``Store``: rows of ``predictions`` and ``feedback``."""

    engine: sa.engine.Engine
    writer: sa.engine.Engine

    def log_predictions(self, rows: list[dict]) -> None:
        """Insert prediction rows (id, model_name, model_version, created_at, inputs, outputs, latency_ms).

        Rows whose id is already in the store are skipped, so a spool replayed after a crash (some of
        its rows written, some not) lands exactly once. ``served`` (False: a shadow prediction, never
        returned) and ``shadow_of`` (the answered prediction it shadows) default to an answered row."""
        if not rows:
            return
        rows = [{"served": True, "shadow_of": None, **r} for r in rows]  # one key set: executemany needs it
        with self.writer.begin() as c:
            dialect = c.dialect.name
            if dialect in ("sqlite", "postgresql"):
                insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
                c.execute(insert(db.predictions).on_conflict_do_nothing(index_elements=["id"]), rows)
                return
            ids = [r["id"] for r in rows]
            known = set(c.execute(sa.select(db.predictions.c.id).where(db.predictions.c.id.in_(ids))).scalars())
            fresh = [r for r in rows if r["id"] not in known]
            if fresh:
                c.execute(db.predictions.insert(), fresh)

    def add_feedback(self, model_name: str, label: object, prediction_id: str | None = None,
                     inputs: dict | None = None, outputs: dict | None = None, model_version: int | None = None,
                     corrects: bool = False) -> int:
        """``outputs``/``model_version`` (and ``inputs``) snapshot the prediction the feedback is about, so the row
        stands on its own: before its prediction reaches the store, and after retention deleted it.

        One label per prediction: a second one raises ``FeedbackExists`` (two labellers, or a client retrying),
        unless ``corrects``: then, in the same transaction, the old row lets go of the prediction (it stays, on its
        inputs alone: a champion that learned it still finds it by id) and the new one takes it, with a new id and
        time, so a retrain counts it as new feedback and its label wins for those inputs (the latest label wins,
        as ``feedback_relabelled`` counts across turns). The unique index on ``feedback.prediction_id`` (0009)
        makes this hold under concurrent writers too."""
        if prediction_id is None and inputs is None:
            raise LoopmlError("feedback needs a prediction_id or the inputs it is about")
        f = db.feedback
        try:
            with self.writer.begin() as c:
                if prediction_id is not None:
                    known = c.execute(sa.select(f.c.id, f.c.inputs).where(f.c.prediction_id == prediction_id)).first()
                    if known is not None and not corrects:
                        raise FeedbackExists(prediction_id)
                    if known is not None:
                        inputs = inputs if inputs is not None else known.inputs
                        c.execute(f.update().where(f.c.id == known.id).values(
                            prediction_id=None, inputs=known.inputs if known.inputs is not None else inputs))
                result = c.execute(f.insert().values(
                    model_name=model_name, prediction_id=prediction_id, inputs=inputs, label=label,
                    created_at=time.time(), prediction_outputs=outputs, model_version=model_version))
                return int(result.inserted_primary_key[0])
        except sa.exc.IntegrityError:  # a concurrent writer labelled it between our check and our insert
            if prediction_id is None:
                raise
            raise FeedbackExists(prediction_id) from None

    def prune_predictions(self, model_name: str, older_than: float | None = None, keep_rows: int | None = None,
                          chunk: int = 5000, max_chunks: int = 100) -> int:
        """Delete ``model_name``'s predictions created before ``older_than`` (a time) or beyond the newest
        ``keep_rows``, ``chunk`` rows per transaction (short write locks), at most ``max_chunks`` per call.
        Feedback rows carry a snapshot of their prediction, so none of them needs its prediction kept."""
        p = db.predictions
        if keep_rows is not None:
            with self.engine.connect() as c:
                # the newest ``keep_rows`` answered predictions; shadow rows go with the rows they shadow
                cutoff = c.execute(sa.select(p.c.created_at).where(p.c.model_name == model_name, answered(p))
                                   .order_by(p.c.created_at.desc()).offset(keep_rows - 1).limit(1)).scalar()
            if cutoff is None:
                return 0
            older_than = cutoff if older_than is None else max(older_than, cutoff)
        if older_than is None:
            return 0
        deleted = 0
        for _ in range(max_chunks):
            ids = (sa.select(p.c.id).where(p.c.model_name == model_name, p.c.created_at < older_than)
                   .limit(chunk).scalar_subquery())
            with self.writer.begin() as c:
                if c.dialect.name == "mysql":  # no LIMIT inside IN (subquery)
                    ids = list(c.execute(sa.select(p.c.id).where(p.c.model_name == model_name,
                                                                 p.c.created_at < older_than).limit(chunk)).scalars())
                n = c.execute(p.delete().where(p.c.id.in_(ids))).rowcount
            deleted += n
            if n < chunk:
                break
        return deleted

    def get_prediction(self, prediction_id: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(db.predictions).where(db.predictions.c.id == prediction_id)).first()
        return dict(row._mapping) if row is not None else None

    def list_predictions(self, model_name: str, since: float = 0.0, until: float | None = None,
                         limit: int | None = None) -> list[dict]:
        query = sa.select(db.predictions).where(db.predictions.c.model_name == model_name,
                                                db.predictions.c.created_at >= since, answered(db.predictions))
        if until is not None:
            query = query.where(db.predictions.c.created_at < until)
        query = query.order_by(db.predictions.c.created_at)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(query)]

    def prediction_window(self, model_name: str, since: float | None = None, until: float | None = None,
                          last: int | None = None) -> list[dict]:
        """The logged predictions monitoring looks at, oldest first: those in ``since``..``until`` and,
        with ``last``, only the newest ``last`` of them. The database does the windowing (newest first
        over the (model_name, created_at) index, LIMIT), so the cost follows the window, not the log."""
        p = db.predictions
        # shadow rows (a candidate on trial) are not traffic: counting them would double the champion's drift
        query = sa.select(p.c.created_at, p.c.inputs, p.c.outputs, p.c.model_version).where(
            p.c.model_name == model_name, answered(p))
        if since is not None:
            query = query.where(p.c.created_at >= since)
        if until is not None:
            query = query.where(p.c.created_at <= until)
        query = query.order_by(p.c.created_at.desc())
        if last:
            query = query.limit(last)
        with self.engine.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(query)]
        return rows[::-1]

    def unlabelled_predictions(self, model_name: str, last: int = 5000) -> list[dict]:
        """The newest ``last`` answered predictions (shadow rows left out) that no feedback names, newest first:
        what the labelling queue ranks."""
        p, f = db.predictions, db.feedback
        labelled = sa.select(f.c.id).where(f.c.prediction_id == p.c.id).exists()
        query = (sa.select(p.c.id, p.c.created_at, p.c.inputs, p.c.outputs, p.c.model_version)
                 .where(p.c.model_name == model_name, answered(p), ~labelled)
                 .order_by(p.c.created_at.desc(), p.c.id).limit(last))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(query)]

    def labelled_inputs(self, model_name: str, last: int = 5000) -> list[dict]:
        """The inputs snapshot of the newest ``last`` feedback rows (the queue drops their twins; bounded as it is)."""
        f = db.feedback
        query = (sa.select(f.c.inputs).where(f.c.model_name == model_name, f.c.inputs.is_not(None))
                 .order_by(f.c.created_at.desc()).limit(last))
        with self.engine.connect() as c:
            return [r for r in c.execute(query).scalars() if isinstance(r, dict)]

    def labelled(self, prediction_ids: list[str]) -> set[str]:
        """Which of these predictions have feedback (a labeller skips one labelled since its queue was read)."""
        if not prediction_ids:
            return set()
        f = db.feedback
        with self.engine.connect() as c:
            return set(c.execute(sa.select(f.c.prediction_id).where(f.c.prediction_id.in_(prediction_ids))).scalars())

    def list_feedback(self, model_name: str, since: float = 0.0) -> list[dict]:
        """Feedback rows with the inputs of their prediction filled in where it was logged."""
        joined = db.feedback.outerjoin(db.predictions, db.feedback.c.prediction_id == db.predictions.c.id)
        query = (sa.select(db.feedback, db.predictions.c.inputs.label("prediction_inputs"),
                           db.predictions.c.outputs.label("logged_outputs"),
                           db.predictions.c.model_version.label("logged_version"))
                 .select_from(joined)
                 .where(db.feedback.c.model_name == model_name, db.feedback.c.created_at >= since)
                 .order_by(db.feedback.c.id))
        with self.engine.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(query)]
        for row in rows:  # the feedback's own snapshot first; older rows have only the logged prediction
            row["inputs"] = row["inputs"] if row["inputs"] is not None else row.pop("prediction_inputs")
            row.pop("prediction_inputs", None)
            logged_outputs, logged_version = row.pop("logged_outputs"), row.pop("logged_version")
            row["prediction_outputs"] = row["prediction_outputs"] if row["prediction_outputs"] is not None else logged_outputs
            row["model_version"] = row["model_version"] if row["model_version"] is not None else logged_version
        return rows

    def add_drift_window(self, model_name: str, version: int, start: float, end: float, result: dict) -> int:
        with self.writer.begin() as c:
            row = c.execute(db.drift_windows.insert().values(
                model_name=model_name, model_version=version, start=start, end=end, rows=result["rows"],
                drift=bool(result["drift"]), results=result, created_at=time.time()))
            return int(row.inserted_primary_key[0])

    def list_drift_windows(self, model_name: str, limit: int = 50) -> list[dict]:
        query = (sa.select(db.drift_windows).where(db.drift_windows.c.model_name == model_name)
                 .order_by(db.drift_windows.c.id.desc()).limit(limit))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(query)]

    def add_gate_decision(self, model_name: str, candidate: int | None, champion: int | None, promoted: bool,
                          reason: str, numbers: dict, kind: str = "retrain") -> int:
        """One row of the decisions table; ``kind``: retrain | rollout | watch | loop."""
        with self.writer.begin() as c:
            row = c.execute(db.gate_decisions.insert().values(
                model_name=model_name, candidate_version=candidate, champion_version=champion, promoted=promoted,
                reason=reason, numbers=numbers, at=time.time(), kind=kind))
            return int(row.inserted_primary_key[0])

    def list_gate_decisions(self, model_name: str) -> list[dict]:
        query = sa.select(db.gate_decisions).where(db.gate_decisions.c.model_name == model_name).order_by(db.gate_decisions.c.id)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(query)]
