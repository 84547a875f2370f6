"""Evaluation assembly: from a fitted learner's scores to metrics, report data, importance and the
drift reference. Works from ``predict_scores`` in every learner's own view, so it is the same
whichever learner made the scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from loopml.evaluate.analysis import class_balance, evaluate_split, score, score_one
from loopml.features.pipeline import Preprocessor


@dataclass
class Assembled:
    metrics: dict
    evaluation: dict
    reference: dict


# -- scoring --------------------------------------------------------------------------------------
def scores_metrics(pre: Preprocessor, outputs: np.ndarray, target: np.ndarray, full: bool = True) -> dict:
    """Metrics of scores against encoded targets; ``full=False``: only accuracy for classifiers (per epoch)."""
    t = pre.target
    if not full and t.kind != "number":
        proba = t.decode(outputs)[1]
        return {"accuracy": float((proba.argmax(1) == target.astype(np.int64)).mean())}
    return score(pre, outputs, target)


def epoch_metric_fn(pre: Preprocessor, monitor: str) -> Callable[[torch.Tensor, torch.Tensor], dict]:
    """The per-epoch metrics a network logs: accuracy or r2 and the monitored one."""
    def metric_fn(outputs: torch.Tensor, target: torch.Tensor) -> dict:
        scores = scores_metrics(pre, outputs.numpy(), target.numpy(), full=monitor not in ("loss", "accuracy", "r2"))
        keep = {"accuracy", "r2", monitor}
        return {k: v for k, v in scores.items() if k in keep}

    return metric_fn


def metric_scorer(pre: Preprocessor, metric: str) -> Callable[[torch.Tensor, torch.Tensor], dict]:
    """Scores ``metric`` alone: permutation importance needs one number ~50 times, not every metric."""
    def scorer(outputs: torch.Tensor, target: torch.Tensor) -> dict:
        return {metric: score_one(pre, outputs.numpy(), target.numpy(), metric)}

    return scorer


def set_threshold(pre: Preprocessor, target_cfg: Any, val_scores: np.ndarray, val_target: np.ndarray) -> None:
    """Binary: the decision threshold, fixed by the config or tuned on the validation split."""
    from loopml.evaluate.threshold import tune_threshold

    t, setting = pre.target, target_cfg.threshold
    t.state.pop("threshold", None)
    if t.kind != "binary":
        return
    if setting == "auto":
        p1 = t.decode(val_scores)[1][:, 1]
        t.state["threshold"] = tune_threshold(val_target.astype(np.int64), p1, target_cfg.threshold_metric)
    elif setting != 0.5:
        t.state["threshold"] = float(setting)


# -- the evaluation stored with a fitted model ---------------------------------------------------
def assemble(config: Any, prepared: Any, pre: Preprocessor, learner: Any, splits: dict, monitor: str,
             sizes: dict[str, int], train_rows: int, inputs_fn: Callable | None = None,
             budget: Any = None) -> Assembled:
    """Threshold, metrics per held-out split, report data, importance and the drift reference.

    ``splits``: name -> Split in the learner's view (train included, for the class balance);
    ``inputs_fn(frame)``: the learner's input for raw rows (permutation importance);
    ``budget``: with a time budget, importance gets only what is left of it (fewer repeats and rows).
    """
    from loopml.evaluate.explain import importance_metric

    held_out = {name: split for name, split in splits.items() if split is not None and name != "train"}
    scores = {name: learner.predict_scores(split.x) for name, split in held_out.items()}
    set_threshold(pre, config.target, scores["validation"], held_out["validation"].y)
    metrics = {name: score(pre, out, held_out[name].y) for name, out in scores.items()}
    evaluations = {
        name: evaluate_split(pre, name, out, held_out[name].y, tensor_inputs(held_out[name].x, learner.view),
                             prepared.raw(name, config))
        for name, out in scores.items()
    }
    metric = importance_metric(pre.target.kind, monitor)
    imp = importance(learner, pre, held_out["validation"].x, held_out["validation"].y, metric,
                     prepared.raw("validation", config), seed=config.training.seed, inputs_fn=inputs_fn,
                     budget=budget)
    targets = {name: torch.as_tensor(split.y) for name, split in splits.items() if split is not None}
    data = {"sizes": sizes, "train_rows_after_sampling": train_rows, "class_balance": class_balance(pre, targets)}
    ref = drift_reference(prepared, config, pre, scores.get("test", scores["validation"]))
    return Assembled(metrics, {"data": data, "evaluations": evaluations, "importance": imp}, ref)


def tensor_inputs(x: Any, view: str) -> dict:
    """The tensors the report's worst-error rows draw images from (none for the other views)."""
    if view == "tensors":
        return x
    return x.get("tensors", {}) if view == "multi" else {}


def drift_reference(prepared: Any, config: Any, pre: Preprocessor, held_out_scores: np.ndarray) -> dict:
    """Training-data statistics for drift monitoring (kept in the model directory as reference.json)."""
    from loopml.loop.drift import reference

    frame = prepared.raw("train", config)
    if frame is None:
        return {}
    predictions = pre.target.decode(held_out_scores)[0]
    kinds = {col: f.config.type for col, f in pre.features.items()}
    return reference(frame, kinds, predictions, pre.target.classes or None)


# -- permutation importance for every view --------------------------------------------------------
def importance(learner: Any, pre: Preprocessor, x: Any, y: np.ndarray, metric: str, frame: Any = None,
               repeats: int = 5, seed: int = 0, inputs_fn: Callable | None = None, budget: Any = None) -> dict:
    """Mean and spread, over ``repeats`` shuffles, of the drop in ``metric`` per input column.

    The network shuffles its tensors ``x``; any other learner shuffles, in its computed input ``x``,
    the view columns each feature feeds (explain.inputs_importance: no view is computed again).
    With a time budget, the shuffles are sized to half of what is left of it (at least one repeat
    on at least 500 rows): an ensemble of fold models predicts ~100x slower than one tree model.
    """
    network = getattr(learner, "network", None)
    if isinstance(x, dict) and network is not None and getattr(learner, "view", None) == "tensors":
        from loopml.evaluate.explain import permutation_importance
        from loopml.train.trainer import TensorData

        return permutation_importance(network, TensorData(x, torch.as_tensor(y)), metric_scorer(pre, metric), metric,
                                      repeats, seed)
    from loopml.evaluate.explain import MAX_IMPORTANCE_ROWS, inputs_importance, take_inputs

    def one(scores: np.ndarray, target: np.ndarray) -> float:
        return score_one(pre, scores, target, metric)

    left = budget.remaining() if budget is not None else None
    if left is not None and len(y):
        rows = min(len(y), MAX_IMPORTANCE_ROWS)
        keep = np.sort(np.random.default_rng(seed).choice(len(y), rows, replace=False))
        x, y = take_inputs(x, keep), y[keep]
        start = time.perf_counter()
        learner.predict_scores(x)
        per_row = (time.perf_counter() - start) / rows
        allowed = max(0.5, 0.5 * left)
        shuffles = len(pre.features) + 1
        # min() before int(): a budget of 1e308 s (or inf) left over a fast predict is inf, which int() refuses
        repeats = max(1, int(min(repeats, allowed / (per_row * rows * shuffles))))
        fit_rows = int(min(rows, allowed / (per_row * repeats * shuffles)))
        if fit_rows < rows:
            keep = np.sort(np.random.default_rng(seed + 1).choice(rows, min(rows, max(500, fit_rows)), replace=False))
            x, y = take_inputs(x, keep), y[keep]
    return inputs_importance(learner.predict_scores, pre, x, y, metric, repeats, seed, one)
