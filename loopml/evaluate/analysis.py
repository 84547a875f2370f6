"""What the report shows about a set of predictions, as JSON-ready data (evaluation.json).

Kept separate from drawing: a model directory stores this data, and `loopml report` draws it
again at any time without the training data.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import torch

from loopml.evaluate.metrics import classification_metrics, regression_metrics
from loopml.features.pipeline import Preprocessor
from loopml.features.target import predicted_class

#: rows of labels and scores kept for the plots (a seeded sample beyond this)
MAX_ROWS = 20_000
WORST = 12
SNIPPET = 300


def score(pre: Preprocessor, outputs: np.ndarray, target: np.ndarray) -> dict:
    """Metrics for model outputs against encoded targets."""
    t = pre.target
    decoded, proba = t.decode(outputs)
    if t.kind == "number":
        return regression_metrics(target * t.state["std"] + t.state["mean"], decoded)
    return classification_metrics(target.astype(np.int64), proba, t.classes, t.state.get("threshold"))


def score_one(pre: Preprocessor, outputs: np.ndarray, target: np.ndarray, metric: str) -> float:
    """``score(...)[metric]`` without computing the other metrics (permutation importance asks ~50 times)."""
    from sklearn import metrics as skm

    t = pre.target
    decoded, proba = t.decode(outputs)
    if t.kind == "number":
        y_true = target * t.state["std"] + t.state["mean"]
        fast = {"mae": lambda: skm.mean_absolute_error(y_true, decoded), "mse": lambda: skm.mean_squared_error(y_true, decoded),
                "rmse": lambda: np.sqrt(float(skm.mean_squared_error(y_true, decoded))),
                "r2": lambda: skm.r2_score(y_true, decoded)}
    else:
        y_true = target.astype(np.int64)
        y_pred = predicted_class(proba, t.state.get("threshold"))
        labels = list(range(len(t.classes)))
        fast = {"accuracy": lambda: np.mean(y_pred == y_true),
                "balanced_accuracy": lambda: skm.balanced_accuracy_score(y_true, y_pred),
                "log_loss": lambda: skm.log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=labels),
                "f1_macro": lambda: skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
                "f1_weighted": lambda: skm.f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)}
        if len(t.classes) == 2 and len(np.unique(y_true)) == 2:
            fast["roc_auc"] = lambda: skm.roc_auc_score(y_true, proba[:, 1])
    if metric in fast:
        return float(fast[metric]())
    return float(score(pre, outputs, target)[metric])


def evaluate_split(
    pre: Preprocessor, name: str, outputs: np.ndarray, target: np.ndarray, inputs: dict[str, torch.Tensor],
    frame: pd.DataFrame | None, seed: int = 0,
) -> dict:
    """Metrics, plot data (labels and scores) and the worst errors with their inputs."""
    t = pre.target
    decoded, proba = t.decode(outputs)
    if t.kind == "number":
        # float64: a float32 target near its ±3.4e38 limit overflows in the residuals and rounding
        y_true = np.asarray(target, dtype=np.float64) * t.state["std"] + t.state["mean"]
        decoded = np.asarray(decoded, dtype=np.float64)
        scores, error = decoded, np.abs(decoded - y_true)
        wrong = np.ones(len(y_true), dtype=bool)
    else:
        y_true = target.astype(np.int64)
        scores = proba
        error = 1.0 - proba[np.arange(len(y_true)), y_true]  # how sure the model was of a wrong answer
        wrong = predicted_class(proba, t.state.get("threshold")) != y_true
    keep = np.arange(len(y_true))
    if len(keep) > MAX_ROWS:
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), MAX_ROWS, replace=False))
    # wrong answers first, most confident first; then the least confident right ones
    worst = np.lexsort((-error, ~wrong))[:WORST]
    return {
        "name": name, "rows": len(y_true), "task": t.kind, "classes": [str(c) for c in t.classes],
        "threshold": t.state.get("threshold"), "metrics": score(pre, outputs, target),
        "y_true": np.round(y_true[keep], 6).tolist(), "scores": np.round(scores[keep], 5).tolist(),
        "worst_errors": [{**_describe(pre, int(i), y_true, decoded, error, inputs, frame), "wrong": bool(wrong[i])}
                         for i in worst],
    }


def _describe(pre: Preprocessor, i: int, y_true: np.ndarray, decoded: np.ndarray, error: np.ndarray,
              inputs: dict[str, torch.Tensor], frame: pd.DataFrame | None) -> dict:
    t = pre.target
    actual = t.classes[int(y_true[i])] if t.kind != "number" else float(y_true[i])
    predicted = decoded[i].item() if hasattr(decoded[i], "item") else decoded[i]
    row = {"row": int(frame.index[i]) if frame is not None else i, "actual": actual, "predicted": predicted,
           "error": float(error[i]), "inputs": {}, "images": {}}
    for col, feature in pre.features.items():
        if feature.config.type == "image" and inputs[col].dtype == torch.uint8:
            row["images"][col] = thumbnail(inputs[col][i])
        if frame is not None and col in frame.columns:
            value = frame[col].iloc[i]
            text = "" if value is None or (np.isscalar(value) and pd.isna(value)) else str(value)
            row["inputs"][col] = text if len(text) <= SNIPPET else text[:SNIPPET] + "…"
    return row


def thumbnail(image: torch.Tensor, size: int = 64) -> str:
    """A uint8 [C, H, W] tensor as a base64 PNG, at most ``size`` pixels wide."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    scale = size / max(picture.size)
    if scale < 1:
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
    elif scale > 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def class_balance(pre: Preprocessor, targets: dict[str, torch.Tensor]) -> dict:
    """Rows per class in each split (classification only)."""
    t = pre.target
    if t.kind == "number":
        return {}
    return {name: dict(zip(map(str, t.classes), np.bincount(y.long().numpy(), minlength=len(t.classes)).tolist(),
                           strict=True))
            for name, y in targets.items()}
