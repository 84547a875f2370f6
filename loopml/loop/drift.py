"""Reference statistics (kept with each model version) and drift of a window of inputs against them.

Every column becomes a histogram over the same buckets — numbers over their point masses (a value
holding ≥ 5% of the rows, like the zeros of a mostly-zero column, gets a bucket of its own) and the
deciles of the rest, categories over their most frequent training values, text over its most frequent words, each with
"other" and "missing" buckets — and the population stability index (PSI) compares the two:
PSI ≥ 0.2 is drift, 0.1–0.2 a warning (the usual reading). Numbers also get the Kolmogorov-Smirnov
test and the Wasserstein distance (in training standard deviations); categories chi-square and
Jensen-Shannon. Images and audio are not monitored yet.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

DRIFT, WARN = 0.2, 0.1
SAMPLE = 2000
TOP_VALUES, TOP_WORDS = 20, 50
MIN_ROWS = 50
#: a number holding at least this share of the training rows gets a bucket of its own
POINT_SHARE = 0.05
_WORD = re.compile(r"\w+")
_EPS = 1e-4


def _missing(values: pd.Series) -> np.ndarray:
    return values.isna().to_numpy()


def _words(text: object) -> list[str]:
    return _WORD.findall(str(text).lower()) if isinstance(text, str) else []


def _days(values: pd.Series) -> pd.Series:
    """Dates as days since 1970-01-01 (UTC for zoned values), parsed as the date feature parses them; else NaN."""
    from loopml.features.date import DAY, instants

    micros, missing, bad = instants(values)
    days = micros / DAY
    days[missing | bad] = np.nan
    return pd.Series(days, index=values.index)


def column_reference(values: pd.Series, kind: str, seed: int = 0) -> dict | None:
    if kind == "date":  # a date drifts as its day number: the number statistics, on days
        ref = column_reference(_days(values), "number", seed)
        return None if ref is None else {**ref, "kind": "date"}
    if kind == "number":
        numbers = pd.to_numeric(values, errors="coerce")
        present = numbers.dropna().to_numpy(dtype=np.float64)
        if not len(present):
            return None
        points = point_masses(present)
        rest = present[~np.isin(present, points)]
        edges = np.unique(np.quantile(rest, np.linspace(0.1, 0.9, 9))) if len(rest) else np.array([])
        sample = np.random.default_rng(seed).choice(present, min(SAMPLE, len(present)), replace=False)
        ref = {"kind": "number", "points": points.tolist(), "edges": edges.tolist(),
               "sample": np.round(sample, 6).tolist(), "std": float(present.std()) or 1.0}
    elif kind in ("category", "binary"):
        from loopml.features.base import canonical_keys  # the features' keys: CSV 2.0 and JSON 2 are one value

        counts = pd.Series([k for k in canonical_keys(values) if k is not None], dtype=object).value_counts()
        ref = {"kind": "category", "values": counts.index[:TOP_VALUES].tolist()}
    elif kind == "text":
        counts = Counter(w for text in values.dropna() for w in _words(text))
        ref = {"kind": "text", "values": [w for w, _ in counts.most_common(TOP_WORDS)]}
    else:
        return None
    ref["histogram"] = histogram(values, ref).tolist()
    return ref


def point_masses(present: np.ndarray) -> np.ndarray:
    """Values that alone hold at least POINT_SHARE of the rows (at most TOP_VALUES of them).

    Decile edges cannot split such a value: with 92% zeros every decile is 0, all rows land in one
    bucket and the PSI cannot see the rest move. A bucket of its own per point mass, and deciles of
    the remaining rows, can.
    """
    values, counts = np.unique(present, return_counts=True)
    heavy = counts >= POINT_SHARE * len(present)
    order = np.argsort(-counts[heavy], kind="stable")[:TOP_VALUES]
    return np.sort(values[heavy][order])


def _number_buckets(numbers: np.ndarray, ref: dict) -> np.ndarray:
    """Counts per bucket: one per point mass, then the bins between the edges of the rest."""
    points = np.asarray(ref.get("points", []), dtype=np.float64)  # references before point masses: none
    edges = ref["edges"]
    at_point = np.isin(numbers, points)
    point_counts = np.array([np.count_nonzero(numbers[at_point] == p) for p in points], dtype=np.float64)
    rest = np.bincount(np.searchsorted(edges, numbers[~at_point], side="right"),
                       minlength=len(edges) + 1).astype(np.float64)
    return np.concatenate([point_counts, rest])


def histogram(values: pd.Series, ref: dict, counts_too: bool = False) -> np.ndarray | tuple[np.ndarray, float]:
    """Shares per bucket: the reference's bins or values, then 'other', then 'missing' (and the count)."""
    missing = _missing(values)
    if ref["kind"] == "number":
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        missing = np.isnan(numbers)
        counts = np.append(_number_buckets(numbers[~missing], ref), [0.0, missing.sum()])
    else:
        from loopml.features.base import canonical_key

        category = ref["kind"] == "category"  # references saved with '1.0'-style keys read the same
        index = {(canonical_key(v) if category else v): i for i, v in enumerate(ref["values"])}
        counts = np.zeros(len(ref["values"]) + 2)
        for value in values[~missing]:
            tokens = [canonical_key(value)] if category else _words(value)
            # a text counts once, its weight shared by its words: one 1 MB request must not outweigh a window
            share = 1.0 / max(len(tokens), 1)
            for token in tokens:
                counts[index.get(token, len(ref["values"]))] += share
        counts[-1] = missing.sum()
    shares = counts / max(counts.sum(), 1.0)
    return (shares, float(counts.sum())) if counts_too else shares


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    p, q = np.asarray(reference) + _EPS, np.asarray(current) + _EPS
    return float(np.sum((q - p) * np.log(q / p)))


def noise(buckets: int, observations: float) -> float:
    """PSI a window of this size shows with no drift at all: about (k - 1) / n (chi-square over n)."""
    return (buckets - 1) / max(observations, 1.0)


def level(value: float, allowance: float = 0.0) -> str:
    """drift / warn / ok, with the thresholds raised by twice the sampling noise of the window."""
    return "drift" if value >= DRIFT + 2 * allowance else "warn" if value >= WARN + 2 * allowance else "ok"


def column_drift(values: pd.Series, ref: dict) -> dict:
    if ref["kind"] == "date":
        return {**column_drift(_days(values), {**ref, "kind": "number"}), "kind": "date"}
    current, observations = histogram(values, ref, counts_too=True)
    out = {"kind": ref["kind"], "psi": psi(ref["histogram"], current),
           "js": float(jensenshannon(np.asarray(ref["histogram"]) + _EPS, current + _EPS))}
    if ref["kind"] == "number":
        present = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=np.float64)
        if len(present):
            ks = stats.ks_2samp(ref["sample"], present)
            out.update(ks=float(ks.statistic), ks_p=float(ks.pvalue),
                       wasserstein=float(stats.wasserstein_distance(ref["sample"], present) / ref["std"]))
    else:
        n = len(values)
        expected = (np.asarray(ref["histogram"]) + _EPS) * n
        observed = current * n
        out["chi2_p"] = float(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)
    out["noise"] = noise(len(current), observations)
    out["level"] = level(out["psi"], out["noise"])
    return out


def reference(frame: pd.DataFrame, kinds: dict[str, str], predictions: np.ndarray | None, classes: list | None) -> dict:
    """What monitoring needs from the training data, small enough to keep in the model directory."""
    columns = {col: column_reference(frame[col], kind) for col, kind in kinds.items() if col in frame.columns}
    ref = {"rows": len(frame), "columns": {c: r for c, r in columns.items() if r is not None}}
    if predictions is not None:
        ref["predictions"] = prediction_reference(predictions, classes)
    return ref


def prediction_reference(predictions: np.ndarray, classes: list | None) -> dict:
    if classes:
        return {"kind": "category", "values": [str(c) for c in classes],
                "histogram": histogram(pd.Series([str(p) for p in predictions]), {"kind": "category",
                                                                                   "values": [str(c) for c in classes]}).tolist()}
    return column_reference(pd.Series(predictions), "number")


def window_drift(frame: pd.DataFrame, predictions: list, ref: dict) -> dict:
    """Per column and for the predictions: PSI and tests; ``drift`` when any column or the predictions drift."""
    if len(frame) < MIN_ROWS:
        return {"rows": len(frame), "drift": False, "status": f"fewer than {MIN_ROWS} rows", "columns": {}}
    columns = {col: column_drift(frame[col] if col in frame.columns else pd.Series([None] * len(frame)), r)
               for col, r in ref["columns"].items()}
    out = {"rows": len(frame), "columns": columns, "status": "ok"}
    if "predictions" in ref and predictions:
        values = pd.Series([str(p) for p in predictions]) if ref["predictions"]["kind"] == "category" else pd.Series(predictions)
        out["predictions"] = column_drift(values, ref["predictions"])
    drifted = [c for c, d in columns.items() if d["level"] == "drift"]
    if out.get("predictions", {}).get("level") == "drift":
        drifted.append("(predictions)")
    out["drifted"] = drifted
    out["drift"] = bool(drifted)
    return out
