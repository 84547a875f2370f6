"""Federated fitting of the preprocessing: what a client sends about its training rows, and how the
server merges those statistics into the ordinary fitted state (``Preprocessor``), without rows.

What leaves a client, per column of its training split:

- category / binary: the count of each value (its canonical key) and of missing values. A category
  value seen fewer than ``min_frequency`` times (and at least twice) on that client is left out (and
  counted as unknown), so a value of a single row never leaves it; binary values too (a binary
  column's second value may be one row's).
- number: count, missing count, mean, second and third central moments (also of ``log1p``), whether
  every value is whole and non-negative, the range rounded outward to 3 significant digits; then a
  histogram over the range the server chose for all clients (2,048 equal bins, or one bin per whole
  number for integer columns spanning at most 2,048 values: their quantiles are then exact).
- the target: the count of each class (a number target: count, mean and second moment).

Exact on the server (equal to fitting on the pooled rows): categories, binaries, the target, the
mean/std/skew of numbers, and every number statistic of integer columns of a small range. From the
histogram (within a bin's width): medians and the piecewise-linear bin edges of other number columns.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd

from loopml.errors import LoopmlError
from loopml.features.base import canonical_key, canonical_keys
from loopml.features.number import NumberConfig, _scale_raw, as_numbers
from loopml.features.pipeline import Preprocessor
from loopml.features.target import _label

SUPPORTED = ("number", "category", "binary")
BINS = 2048
#: the fewest rows of a client that a category or binary value must have to leave it
LEAVE_FLOOR = 2


# -- moments (Pébay's pairwise merge: exact, and stable for large values) ---------------------------
def moments(values: np.ndarray) -> list[float]:
    """[count, mean, M2, M3] of ``values`` (M = sum of central powers)."""
    n = int(values.size)
    if not n:
        return [0, 0.0, 0.0, 0.0]
    mean = float(values.mean())
    d = values - mean
    return [n, mean, float((d * d).sum()), float((d * d * d).sum())]


def merge_moments(a: list[float], b: list[float]) -> list[float]:
    na, ma, m2a, m3a = a
    nb, mb, m2b, m3b = b
    n = na + nb
    if not na or not nb:
        return list(b if not na else a)
    delta = mb - ma
    mean = ma + delta * nb / n
    m2 = m2a + m2b + delta * delta * na * nb / n
    m3 = m3a + m3b + delta ** 3 * na * nb * (na - nb) / n ** 2 + 3 * delta * (na * m2b - nb * m2a) / n
    return [n, mean, m2, m3]


def _skew(m: list[float]) -> float:
    """pandas' adjusted Fisher-Pearson skewness from merged moments."""
    n, _, m2, m3 = m
    if n <= 2 or m2 <= 0:
        return 0.0
    g1 = math.sqrt(n) * m3 / m2 ** 1.5
    return g1 * math.sqrt(n * (n - 1)) / (n - 2)


def _round_out(x: float, up: bool) -> float:
    """``x`` rounded away from the data to 3 significant digits (a bound, not one row's value)."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    step = 10.0 ** (math.floor(math.log10(abs(x))) - 2)
    return float((math.ceil(x / step) if up else math.floor(x / step)) * step)


# -- the client side --------------------------------------------------------------------------------
def client_summary(pre: Preprocessor, train: pd.DataFrame) -> dict:
    """Round 1 of the fit: per-column statistics of a client's training rows (see the module doc)."""
    out: dict = {}
    for col, feature in pre.features.items():
        kind = feature.config.type
        if kind == "number":
            values = as_numbers(train[col])
            present = values[~np.isnan(values)]
            logs = _scale_raw(present, "log1p")
            out[col] = {
                "missing": int(np.isnan(values).sum()), "moments": moments(present),
                "log_moments": moments(logs)[:3], "nonnegative": bool(present.size == 0 or present.min() >= 0),
                "integer": bool(present.size and np.all(np.mod(present, 1) == 0)),
                "bounds": [_round_out(float(present.min()), False), _round_out(float(present.max()), True)]
                if present.size else None,
            }
        else:
            keys = canonical_keys(train[col])
            counts = Counter(k for k in keys if k is not None)
            # a value this rare on the client stays on the client; one row's value never leaves, even with
            # min_frequency 1 or in a binary column (two distinct values: one may be a single row's)
            floor = max(LEAVE_FLOOR, feature.config.min_frequency if kind == "category" else 1)
            counts = Counter({k: n for k, n in counts.items() if n >= floor})
            out[col] = {"counts": dict(counts), "missing": sum(k is None for k in keys)}
    out[pre.target.column] = target_summary(pre, train[pre.target.column])
    return out


def target_summary(pre: Preprocessor, column: pd.Series) -> dict:
    if pre.target.kind == "number":
        numbers = pd.to_numeric(column, errors="coerce").dropna().to_numpy(dtype=np.float64)
        return {"moments": moments(numbers)[:3]}
    labels: dict[str, list] = {}
    for value in column.dropna().tolist():
        key = canonical_key(value)
        if key is not None:
            labels.setdefault(key, [_label(value), 0])[1] += 1
    return {"labels": labels}


def client_histograms(pre: Preprocessor, train: pd.DataFrame, grids: dict) -> dict:
    """Round 2: each number column's histogram over the server's grid ``{col: [lo, width, bins]}``."""
    out = {}
    for col, (lo, width, bins) in grids.items():
        values = as_numbers(train[col])
        present = values[~np.isnan(values)]
        index = np.clip(np.floor((present - lo) / width), 0, bins - 1).astype(np.int64)
        out[col] = np.bincount(index, minlength=bins).tolist()
    return out


# -- the server side --------------------------------------------------------------------------------
def merge_summaries(pre: Preprocessor, summaries: list[dict]) -> dict:
    """The clients' round-1 statistics summed per column."""
    merged: dict = {}
    for col, feature in pre.features.items():
        parts = [s[col] for s in summaries]
        if feature.config.type == "number":
            m = [0, 0.0, 0.0, 0.0]
            lm = [0, 0.0, 0.0, 0.0]
            for p in parts:
                m = merge_moments(m, p["moments"])
                lm = merge_moments(lm, [*p["log_moments"], 0.0])
            bounds = [p["bounds"] for p in parts if p["bounds"]]
            merged[col] = {"missing": sum(p["missing"] for p in parts), "moments": m, "log_moments": lm,
                           "nonnegative": all(p["nonnegative"] for p in parts),
                           "integer": all(p["integer"] for p in parts if p["bounds"]),
                           "bounds": [min(b[0] for b in bounds), max(b[1] for b in bounds)] if bounds else None}
        else:
            counts: Counter = Counter()
            for p in parts:
                counts.update(p["counts"])
            merged[col] = {"counts": dict(counts), "missing": sum(p["missing"] for p in parts)}
    target = pre.target
    if target.kind == "number":
        m = [0, 0.0, 0.0, 0.0]
        for s in summaries:
            m = merge_moments(m, [*s[target.column]["moments"], 0.0])
        merged[target.column] = {"moments": m}
    else:
        labels: dict[str, list] = {}
        for s in summaries:
            for key, (label, n) in s[target.column]["labels"].items():
                labels.setdefault(key, [label, 0])[1] += n
        merged[target.column] = {"labels": labels}
    return merged


def grids(pre: Preprocessor, merged: dict) -> dict:
    """The shared histogram grid of every number column with values: ``{col: [lo, width, bins]}``."""
    out = {}
    for col, feature in pre.features.items():
        s = merged[col]
        if feature.config.type != "number" or s["bounds"] is None:
            continue
        lo, hi = s["bounds"]
        if s["integer"] and math.floor(hi) - math.ceil(lo) + 1 <= BINS:
            out[col] = [float(math.ceil(lo)), 1.0, int(math.floor(hi) - math.ceil(lo) + 1)]
        else:
            out[col] = [lo, ((hi - lo) or 1.0) / BINS, BINS]
    return out


def fit_preprocessor(pre: Preprocessor, merged: dict, grid: dict, histograms: list[dict],
                     positive_class: object = None, normalize_target: bool = True) -> Preprocessor:
    """``pre`` (unfitted) with every feature's and the target's state set from the merged statistics."""
    for col, feature in pre.features.items():
        s = merged[col]
        if feature.config.type == "number":
            if s["bounds"] is None:  # no values anywhere: as fitting on an all-missing column
                feature.fit(pd.Series([np.nan] * max(1, s["missing"])))
                continue
            counts = np.sum([h[col] for h in histograms], axis=0)
            lo, width, bins = grid[col]
            if width == 1.0 and s["integer"]:  # one bin per whole number: the histogram is the values
                values = np.repeat(lo + np.arange(bins, dtype=np.float64), counts)
                feature.fit(pd.Series(np.concatenate([values, np.full(s["missing"], np.nan)])))
            else:
                feature.state = _number_state(feature.config, s, grid[col], counts)
        else:
            keys = [k for k, n in s["counts"].items() for _ in range(n)] + [None] * s["missing"]
            feature.fit(pd.Series(keys, dtype=object))
    _fit_target(pre, merged[pre.target.column], positive_class, normalize_target)
    return pre


def _fit_target(pre: Preprocessor, s: dict, positive_class: object, normalize: bool) -> None:
    target = pre.target
    if target.kind == "number":
        n, mean, m2, _ = s["moments"]
        std = math.sqrt(m2 / (n - 1)) if n > 1 else float("nan")
        target.state = {"mean": mean, "std": (std if std == std else 0.0) or 1.0} if normalize else \
            {"mean": 0.0, "std": 1.0}
        return
    labels = [label for label, n in s["labels"].values() if n]  # the classes; their counts do not matter here
    target.fit(pd.Series(labels, dtype=object), positive_class)


def class_counts(pre: Preprocessor, merged: dict) -> list[int]:
    """Training rows per class (in ``pre.target.classes`` order), for ``class_weights: auto``."""
    labels = merged[pre.target.column]["labels"]
    return [labels.get(canonical_key(c), [c, 0])[1] for c in pre.target.classes]


def _number_state(cfg: NumberConfig, s: dict, grid: list, counts: np.ndarray) -> dict:
    """``NumberFeature.fit``'s state, from merged moments and a histogram instead of the column."""
    lo, width, _ = grid
    present, missing = s["moments"], s["missing"]
    median = _quantiles(counts, lo, width, [0.5])[0]
    fill = {"mean": present[1], "median": median, "drop": median}.get(cfg.missing, cfg.fill_value)
    method = cfg.normalize
    if method == "auto":
        method = "log1p" if s["nonnegative"] and abs(_skew(present)) > 2.0 else "zscore"
    lo_v, hi_v = s["bounds"]
    if method == "minmax":
        low, high = min(lo_v, fill), max(hi_v, fill)
        center, scale = low, (high - low) or 1.0
    elif method == "none":
        center, scale = 0.0, 1.0
    else:
        base = s["log_moments"] if method == "log1p" else present
        filled = merge_moments(base, [missing, float(_scale_raw(np.array([fill]), method)[0]), 0.0, 0.0])
        center, scale = filled[1], math.sqrt(max(filled[2], 0.0) / filled[0]) or 1.0
    edges: list = []
    if cfg.bins:
        with_fill = counts.astype(np.float64).copy()
        with_fill[int(np.clip(math.floor((fill - lo) / width), 0, len(counts) - 1))] += missing
        qs = _quantiles(with_fill, lo, width, np.linspace(0, 1, cfg.bins + 1))
        edges = np.unique(qs).tolist()
    return {"edges": edges if len(edges) > 2 else [], "fill": float(fill), "method": method,
            "center": float(center), "scale": float(scale), "indicator": bool(cfg.missing_indicator and missing > 0)}


def _quantiles(counts: np.ndarray, lo: float, width: float, qs) -> np.ndarray:
    """numpy's linear-interpolation quantiles of the values a histogram holds, spread evenly within a bin."""
    total = counts.sum()
    if total <= 0:
        return np.zeros(len(qs))
    cum = np.cumsum(counts)

    def order_stat(k: np.ndarray) -> np.ndarray:
        i = np.searchsorted(cum, k, side="right")  # the bin holding the k-th value (0-based)
        before = np.where(i > 0, cum[np.maximum(i - 1, 0)], 0)
        return lo + width * (i + (k - before + 0.5) / counts[i])

    h = (total - 1) * np.asarray(qs, dtype=np.float64)
    below = np.floor(h)
    a, b = order_stat(below), order_stat(np.minimum(below + 1, total - 1))
    return a + (h - below) * (b - a)


def check_supported(pre: Preprocessor) -> None:
    for col, feature in pre.features.items():
        if feature.config.type not in SUPPORTED:
            raise LoopmlError(f"column '{col}' is {feature.config.type}; federated training fits number, category "
                              "and binary columns only: exclude it or set its type in the config")


__all__ = ["check_supported", "client_histograms", "client_summary", "fit_preprocessor",
           "grids", "merge_summaries"]
