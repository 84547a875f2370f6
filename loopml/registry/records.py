"""The prediction log and feedback: what the server writes and the loop reads."""

from __future__ import annotations

import time

import sqlalchemy as sa

from loopml.errors import LoopmlError
from loopml.registry import db


class Records:
    """Mixed into ``Store``: rows of ``predictions`` and ``feedback``."""

    engine: sa.engine.Engine
    writer: sa.engine.Engine

    def log_predictions(self, rows: list[dict]) -> None:
        """Insert prediction rows (id, model_name, model_version, created_at, inputs, outputs, latency_ms)."""
        if rows:
            with self.writer.begin() as c:
                c.execute(db.predictions.insert(), rows)

    def add_feedback(self, model_name: str, label: object, prediction_id: str | None = None,
                     inputs: dict | None = None) -> int:
        if prediction_id is None and inputs is None:
            raise LoopmlError("feedback needs a prediction_id or the inputs it is about")
        with self.writer.begin() as c:
            result = c.execute(db.feedback.insert().values(
                model_name=model_name, prediction_id=prediction_id, inputs=inputs, label=label, created_at=time.time()))
            return int(result.inserted_primary_key[0])

    def get_prediction(self, prediction_id: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(db.predictions).where(db.predictions.c.id == prediction_id)).first()
        return dict(row._mapping) if row is not None else None

    def list_predictions(self, model_name: str, since: float = 0.0, until: float | None = None,
                         limit: int | None = None) -> list[dict]:
        query = sa.select(db.predictions).where(db.predictions.c.model_name == model_name,
                                                db.predictions.c.created_at >= since)
        if until is not None:
            query = query.where(db.predictions.c.created_at < until)
        query = query.order_by(db.predictions.c.created_at)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(query)]

    def list_feedback(self, model_name: str, since: float = 0.0) -> list[dict]:
        """Feedback rows with the inputs of their prediction filled in where it was logged."""
        joined = db.feedback.outerjoin(db.predictions, db.feedback.c.prediction_id == db.predictions.c.id)
        query = (sa.select(db.feedback, db.predictions.c.inputs.label("prediction_inputs"),
                           db.predictions.c.outputs.label("prediction_outputs"),
                           db.predictions.c.model_version.label("model_version"))
                 .select_from(joined)
                 .where(db.feedback.c.model_name == model_name, db.feedback.c.created_at >= since)
                 .order_by(db.feedback.c.id))
        with self.engine.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(query)]
        for row in rows:
            row["inputs"] = row["inputs"] if row["inputs"] is not None else row.pop("prediction_inputs")
            row.pop("prediction_inputs", None)
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
                          reason: str, numbers: dict) -> int:
        with self.writer.begin() as c:
            row = c.execute(db.gate_decisions.insert().values(
                model_name=model_name, candidate_version=candidate, champion_version=champion, promoted=promoted,
                reason=reason, numbers=numbers, at=time.time()))
            return int(row.inserted_primary_key[0])

    def list_gate_decisions(self, model_name: str) -> list[dict]:
        query = sa.select(db.gate_decisions).where(db.gate_decisions.c.model_name == model_name).order_by(db.gate_decisions.c.id)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(query)]
