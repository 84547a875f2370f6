"""Monitoring a served model from the prediction log: input drift, prediction drift, live metrics."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from loopml.errors import LoopmlError
from loopml.loop.drift import window_drift


def live_metrics(feedback: list[dict], task: str) -> dict:
    """How the served predictions fared against the labels users sent back."""
    pairs = [(f["prediction_outputs"]["prediction"], f["label"]) for f in feedback if f.get("prediction_outputs")]
    if not pairs:
        return {"labelled": 0}
    predicted, actual = zip(*pairs, strict=True)
    if task == "number":
        errors = np.abs(np.array(predicted, dtype=float) - np.array(actual, dtype=float))
        return {"labelled": len(pairs), "mae": float(errors.mean())}
    return {"labelled": len(pairs), "accuracy": float(np.mean([str(p) == str(a) for p, a in pairs]))}


def monitor(store, name: str, alias: str = "production", since: float | None = None, until: float | None = None,
            last: int | None = None, record: bool = True, served: tuple[int, object] | None = None) -> dict:
    """Drift of the logged inputs (``since``..``until``, or the ``last`` N predictions) against the
    reference of the version the alias points at, plus live metrics from feedback in that window.

    ``served``: (version, loaded model) already in memory — the server passes the model it serves,
    so an interval costs a windowed query, not a bundle load.
    """
    if served is not None:
        number, model = served
    else:
        import loopml

        version = store.resolve(f"{name}@{alias}")
        number, model = int(version["version"]), loopml.load(version["path"])
    if not model.reference:
        raise LoopmlError(f"{name}:{number} has no reference statistics (trained before monitoring existed)")
    until = until or time.time()
    rows = store.prediction_window(name, since, until, last)
    start = rows[0]["created_at"] if rows else (since or until)
    frame = pd.DataFrame([r["inputs"] for r in rows])
    # inputs drift whoever served them; predictions and their feedback only judge the version that made them
    ours = [r["outputs"]["prediction"] for r in rows if r.get("model_version") in (None, number)]
    result = window_drift(frame, ours, model.reference)
    feedback = [f for f in store.list_feedback(name, start)
                if f["created_at"] <= until and f.get("model_version") in (None, number)]
    kind = model.preprocessor.target.kind
    result["live"] = live_metrics(feedback, kind)
    test = model.metrics.get("test", {})
    metric = "mae" if kind == "number" else "accuracy"
    if metric in result["live"] and metric in test:
        result["live"]["test_" + metric] = test[metric]
        result["live"]["change"] = result["live"][metric] - test[metric]
    result.update(model=name, version=number, start=start, end=until)
    if record:
        result["window_id"] = store.add_drift_window(name, number, start, until, result)
    return result
