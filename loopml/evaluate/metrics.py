"""Metrics from true labels and model outputs, as plain JSON-ready dicts."""

from __future__ import annotations

import warnings

import numpy as np

#: metrics where lower is better (everything else: higher is better)
LOWER_IS_BETTER = {"loss", "log_loss", "mae", "rmse", "mse"}


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list, threshold: float | None = None) -> dict:
    """``y_true`` holds class indices; ``proba`` is [n, n_classes]; ``threshold`` applies to binary tasks."""
    from sklearn import metrics as skm  # here, not at import: loading or serving a model never needs it

    from loopml.features.target import predicted_class

    y_pred = predicted_class(proba, threshold)
    labels = list(range(len(classes)))
    with warnings.catch_warnings():  # a window of one class (a gate's few held-back labels): the values stay defined
        warnings.filterwarnings("ignore", message="A single label was found")  # mcc 0
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")  # over the classes present
        out: dict = {
            "accuracy": float(skm.accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
            "log_loss": float(skm.log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=labels)),
            "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
            "expected_calibration_error": float(calibration(y_true, proba)["ece"]),
        }
    if threshold is not None and len(classes) == 2:
        out["threshold"] = float(threshold)
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out.update({f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)})
    p, r, f, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out["per_class"] = {
        str(c): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, c in enumerate(classes)
    }
    out["confusion_matrix"] = {
        "labels": [str(c) for c in classes],
        "matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    present = np.unique(y_true)
    if len(classes) == 2:
        if len(present) == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
            out["average_precision"] = float(skm.average_precision_score(y_true, proba[:, 1]))
        out["f1"] = out["per_class"][str(classes[1])]["f1"]
    elif len(present) == len(classes):
        out["roc_auc"] = float(skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels))
    return out


def calibration(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> dict:
    """Reliability of the top-class confidence: per equal-width bin, mean confidence vs accuracy.

    ECE is the row-weighted mean gap between the two.
    """
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        rows = which == b
        if rows.any():
            table.append({"bin": b, "confidence": float(confidence[rows].mean()), "accuracy": float(correct[rows].mean()),
                          "count": int(rows.sum())})
    ece = sum(t["count"] * abs(t["confidence"] - t["accuracy"]) for t in table) / max(len(y_true), 1)
    return {"bins": table, "ece": float(ece)}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    from sklearn import metrics as skm

    mse = float(skm.mean_squared_error(y_true, y_pred))
    return {
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "r2": float(skm.r2_score(y_true, y_pred)),
    }


def better(metric: str, new: float, best: float | None, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    if metric in LOWER_IS_BETTER:
        return new < best - min_delta
    return new > best + min_delta
