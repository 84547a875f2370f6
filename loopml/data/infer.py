"""Infer each column's type from its values, keeping the evidence for ``loopml describe``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from loopml.data.media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, extension_ratio
from loopml.features import FEATURE_TYPES
from loopml.features.date import INFER_RATIO, date_ratio


def column_stats(column: pd.Series) -> dict:
    n = len(column)
    present = column.dropna()
    first = present.iloc[0] if len(present) else None
    if isinstance(first, np.ndarray | list | bytes):  # in-memory images or signals
        shape = np.asarray(first).shape if not isinstance(first, bytes) else ()
        return {"rows": n, "missing": int(n - len(present)), "missing_pct": round(100.0 * (n - len(present)) / n, 2),
                "unique": len(present), "numeric_ratio": 0.0, "integer": False, "mean_words": 0.0, "mean_length": 0.0,
                "id_like": False, "array_ndim": len(shape), "samples": [f"array{list(shape)}"]}
    numbers = pd.to_numeric(present, errors="coerce")
    numeric_ratio = float(numbers.notna().mean()) if len(present) else 0.0
    as_text = present.astype(str)
    sample = as_text.iloc[: min(len(as_text), 2000)]
    unique = int(present.nunique())
    mean_words = float(sample.str.split().str.len().mean()) if len(sample) else 0.0
    is_integer = numeric_ratio == 1.0 and len(numbers) > 0 and bool(np.all(np.mod(numbers, 1) == 0))
    consecutive = is_integer and unique == len(present) and numbers.max() - numbers.min() + 1 == len(present)
    dates = date_ratio(present)
    all_unique_tokens = numeric_ratio < 0.5 and unique == len(present) and mean_words <= 1 and dates < INFER_RATIO
    if all_unique_tokens:  # unique file names are media, not row ids
        all_unique_tokens = extension_ratio(present, IMAGE_EXTENSIONS | AUDIO_EXTENSIONS) < 0.5
    return {
        "rows": n,
        "missing": int(n - len(present)),
        "missing_pct": round(100.0 * (n - len(present)) / n, 2) if n else 0.0,
        "unique": unique,
        "numeric_ratio": numeric_ratio,
        "date_ratio": dates,
        "integer": is_integer,
        "mean_words": round(mean_words, 2),
        "mean_length": round(float(sample.str.len().mean()), 1) if len(sample) else 0.0,
        "id_like": bool(len(present) >= 20 and dates < INFER_RATIO and (consecutive or all_unique_tokens)),
        "samples": [str(v)[:40] for v in present.drop_duplicates().iloc[:3]],
    }


def infer_feature_type(column: pd.Series, stats: dict | None = None) -> str:
    stats = stats or column_stats(column)
    for name, ftype in sorted(FEATURE_TYPES, key=lambda item: item[1].infer_priority):
        if ftype.infer(column, stats):
            return name
    return "category"


def infer_target_kind(column: pd.Series, stats: dict | None = None) -> str:
    stats = stats or column_stats(column)
    if stats["unique"] == 2:
        return "binary"
    if stats["numeric_ratio"] == 1.0 and not (stats["integer"] and stats["unique"] <= 20):
        return "number"
    return "category"


def reason(type_name: str, stats: dict) -> str:
    """A short human reason for an inferred type, shown by ``describe``."""
    if type_name == "skip":
        return "every value unique, looks like a row id"
    if type_name == "binary":
        return "exactly two distinct values"
    if type_name == "number":
        return f"{stats['numeric_ratio']:.0%} of values numeric"
    if type_name == "date":
        return f"{stats['date_ratio']:.0%} of values ISO dates or timestamps"
    if type_name == "text":
        return f"free text: {stats['mean_words']} words on average"
    return f"{stats['unique']} distinct values"
