"""Decision thresholds for binary tasks: a metric at every threshold, and the best one."""

from __future__ import annotations

import numpy as np

GRID = np.round(np.linspace(0.01, 0.99, 99), 2)


def _counts(y_true: np.ndarray, p1: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    positive = y_true.astype(bool)[:, None]
    predicted = p1[:, None] >= thresholds[None, :]
    tp = (predicted & positive).sum(0).astype(np.float64)
    fp = (predicted & ~positive).sum(0).astype(np.float64)
    fn = (~predicted & positive).sum(0).astype(np.float64)
    tn = len(y_true) - tp - fp - fn
    return tp, fp, fn, tn


def _safe(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def threshold_curve(y_true: np.ndarray, p1: np.ndarray, metric: str = "f1",
                    thresholds: np.ndarray = GRID) -> tuple[np.ndarray, np.ndarray]:
    """``metric`` of the positive class at each threshold (prediction: positive when p1 >= t)."""
    tp, fp, fn, tn = _counts(np.asarray(y_true), np.asarray(p1, dtype=np.float64), thresholds)
    precision, recall = _safe(tp, tp + fp), _safe(tp, tp + fn)
    values = {
        "f1": lambda: _safe(2 * tp, 2 * tp + fp + fn),
        "precision": lambda: precision,
        "recall": lambda: recall,
        "accuracy": lambda: (tp + tn) / max(len(y_true), 1),
        "balanced_accuracy": lambda: (recall + _safe(tn, tn + fp)) / 2,
        "mcc": lambda: _safe(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))),
    }
    return thresholds, values[metric]()


def tune_threshold(y_true: np.ndarray, p1: np.ndarray, metric: str = "f1") -> float:
    """The threshold maximising ``metric``; among ties, the one nearest 0.5."""
    thresholds, values = threshold_curve(y_true, p1, metric)
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return float(thresholds[best[np.argmin(np.abs(thresholds[best] - 0.5))]])
