"""The output column: label vocabulary (classification) or standardisation (regression)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from loopml.errors import LoopmlError
from loopml.features.base import canonical_key, canonical_keys

KINDS = ("binary", "category", "number")


def _label(value: object) -> object:
    """Labels as JSON-friendly Python values: whole floats become ints (1.0 -> 1)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, np.generic):
        return value.item()
    return value.strip() if isinstance(value, str) else value


class Target:
    def __init__(self, column: str, kind: str, state: dict | None = None) -> None:
        self.column, self.kind, self.state = column, kind, state or {}

    @property
    def classes(self) -> list:
        return self.state.get("classes", [])

    def fit(self, column: pd.Series, positive_class: object = None, normalize: bool = True) -> dict:
        values = column.dropna()
        if self.kind == "number":
            numbers = pd.to_numeric(values, errors="coerce").dropna()
            mean, std = (float(numbers.mean()), float(numbers.std()) or 1.0) if normalize else (0.0, 1.0)
            self.state = {"mean": mean, "std": std}
            return self.state
        # one class per canonical key: 1, 1.0 and "1" in one column are one class
        by_key: dict[str, object] = {}
        for v in values.tolist():
            by_key.setdefault(canonical_key(v), _label(v))
        by_key.pop(None, None)
        classes = sorted(by_key.values(), key=lambda v: (str(type(v)), v))
        if len(classes) < 2:
            raise LoopmlError(
                f"target '{self.column}' has only one class in the training rows ({classes[0] if classes else 'none'}); "
                "a classifier needs at least two"
            )
        if self.kind == "binary":
            if len(classes) != 2:
                raise LoopmlError(f"target '{self.column}' is binary but has {len(classes)} classes")
            if positive_class is not None:
                keys = {canonical_key(c): c for c in classes}
                if canonical_key(positive_class) not in keys:
                    raise LoopmlError(f"positive_class {positive_class!r} is not a class of '{self.column}': {classes}")
                positive = keys[canonical_key(positive_class)]
                classes = [c for c in classes if c != positive] + [positive]
        self.state = {"classes": classes}
        return self.state

    def _class_index(self) -> dict[str, int]:
        index: dict[str, int] = {}
        for i, c in enumerate(self.classes):
            index.setdefault(canonical_key(c), i)
        return index

    def class_of(self, label: object) -> object | None:
        """The class a label (from feedback, a file, JSON) stands for, as at training; None if none."""
        i = self._class_index().get(canonical_key(label))
        return None if i is None else self.classes[i]

    def transform(self, column: pd.Series) -> torch.Tensor:
        if column.isna().any():
            raise LoopmlError(f"target '{self.column}' has {int(column.isna().sum())} missing values")
        if self.kind == "number":
            numbers = pd.to_numeric(column, errors="coerce")
            if numbers.isna().any():
                bad = column[numbers.isna()].iloc[0]
                raise LoopmlError(f"target '{self.column}' has a non-numeric value {bad!r}")
            scaled = (numbers.to_numpy(dtype=np.float64) - self.state["mean"]) / self.state["std"]
            return torch.from_numpy(scaled.astype(np.float32))
        index = self._class_index()
        keys = pd.Series(canonical_keys(column), index=column.index, dtype=object)
        if keys.isna().any():  # blank strings: missing, as in a CSV
            raise LoopmlError(f"target '{self.column}' has {int(keys.isna().sum())} missing values")
        unseen = sorted(set(keys) - set(index))
        if unseen:
            raise LoopmlError(
                f"target '{self.column}' has values not seen in training: {', '.join(map(repr, unseen[:5]))}; "
                f"known classes: {', '.join(map(repr, self.classes))}"
            )
        ids = keys.map(index).to_numpy(dtype=np.int64)
        return torch.from_numpy(ids.astype(np.float32) if self.kind == "binary" else ids.copy())

    def decode(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Model outputs -> (predictions in the user's terms, class probabilities or None)."""
        if self.kind == "number":
            return scores.reshape(-1) * self.state["std"] + self.state["mean"], None
        if self.kind == "binary":
            x = scores.reshape(-1).astype(np.float64)
            e = np.exp(-np.abs(x))  # 1 / (1 + exp(-x)) without overflowing (and warning) for large logits
            p1 = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
            proba = np.stack([1.0 - p1, p1], axis=1)
        else:
            z = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
            proba = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        labels = np.array(self.classes, dtype=object)[predicted_class(proba, self.state.get("threshold"))]
        return labels, proba


def predicted_class(proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class indices: argmax, or for two classes "positive when p(positive) >= threshold"."""
    if threshold is not None and proba.shape[1] == 2:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return proba.argmax(axis=1)
