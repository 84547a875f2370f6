"""The ``table`` view: raw numbers and integer category codes, the input of tree learners.

One float64 matrix, built from the features' fitted state only (no state of its own), so train,
predict and serve compute the same view. Per feature type:

- a feature with a ``table_columns(column) -> {part: values}`` method (dates) supplies its own
  numeric parts, named ``"feature.part"`` (a single part named ``""`` is named ``"feature"``);
- number: the raw value as the number feature parses it, NaN for missing (no scaling or bins:
  trees are invariant to monotone transforms and handle NaN themselves);
- binary: 1.0 for the positive value, 0.0 for the other, NaN for missing or unseen values;
- category: the 0-based index in the fitted vocabulary, NaN for unseen or rare values. Missing
  values follow the feature's ``missing`` policy, as in its tensor: their own code when
  ``<missing>`` made the vocabulary (``missing: constant``), the mode's code (``missing: mode``),
  else NaN. Listed in ``TableView.categorical`` with the vocabulary size as cardinality.

Any other type (text, image, audio) is refused with an error naming the column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from loopml.errors import LoopmlError
from loopml.features.base import FeatureType, canonical_key, canonical_keys
from loopml.features.number import as_numbers
from loopml.features.views import TableView

#: feature types the table view can read without a ``table_columns`` hook of their own
TABLE_TYPES = ("number", "binary", "category")


def table_view(pre, df: pd.DataFrame) -> TableView:
    """The table view of the rows of ``df`` under the fitted preprocessor ``pre``."""
    pre.check_columns(df)
    blocks: list[np.ndarray] = []
    columns: list[str] = []
    sources: list[str] = []
    categorical: dict[int, int] = {}
    for name, feature in pre.features.items():
        kind = feature.config.type
        if kind == "skip":
            continue
        parts = table_parts(name, feature, df[name])
        for part, values in parts.items():
            if kind == "category" and not hasattr(feature, "table_columns"):
                categorical[len(columns)] = len(feature.state["vocab"])
            columns.append(f"{name}.{part}" if part else name)
            sources.append(name)
            blocks.append(np.asarray(values, dtype=np.float64).reshape(-1))
    x = np.stack(blocks, axis=1) if blocks else np.empty((len(df), 0), dtype=np.float64)
    return TableView(x, columns, categorical, sources)


def table_parts(name: str, feature: FeatureType, column: pd.Series) -> dict[str, np.ndarray]:
    """One feature's columns in the table view: ``{part name: float values}`` ("" = the feature itself)."""
    hook = getattr(feature, "table_columns", None)
    if callable(hook):
        return hook(column)
    kind = feature.config.type
    if kind == "number":
        return {"": as_numbers(column)}
    if kind == "binary":
        return {"": _binary(feature, column)}
    if kind == "category":
        return {"": _category(feature, column)}
    raise LoopmlError(
        f"column '{name}' is {kind}: the table view (tree learners) reads only "
        f"{', '.join(TABLE_TYPES)} and date columns; use a network or a sparse-view learner, or skip it"
    )


def _binary(feature: FeatureType, column: pd.Series) -> np.ndarray:
    s = feature.state
    values = {canonical_key(v) for v in s["values"]}
    positive = canonical_key(s["positive"])
    return np.array(
        [np.nan if k is None or k not in values else float(k == positive) for k in canonical_keys(column)],
        dtype=np.float64,
    )


def _category(feature: FeatureType, column: pd.Series) -> np.ndarray:
    # the feature's own lookup (canonical keys, missing policy, unknown bucket 0), shifted to 0-based
    ids = feature.transform(column).numpy().astype(np.float64) - 1.0
    ids[ids < 0] = np.nan
    return ids
