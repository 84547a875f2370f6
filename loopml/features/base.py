"""FeatureType: one subclass per column type. Fit on the training split, transform any split.

A feature type owns its preprocessing options (the nested pydantic ``Config``), its fitted
state (plain JSON) and the tensor it hands to its encoder. Adding a type is adding one class
registered in ``FEATURE_TYPES``.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict

from loopml.plugins import Registry

_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_LONGEST_NUMBER = 64
_NUMBER_START = set("0123456789+-.")
_BOOLEAN_WORDS = {"true": "1", "false": "0"}


def is_missing(value: object) -> bool:
    """None, NaN, pandas' NA/NaT and blank strings: what every reader may turn an empty cell into."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return value != value
    return isinstance(value, str) and not value.strip()


def canonical_key(value: object) -> str | None:
    """The one string form of a cell value used to fit and look up categories, binary values,
    text and class labels, whatever the source: CSV, Parquet, a DataFrame of any dtype or JSON.

    None for a missing value (see ``is_missing``). Numbers: whole numbers print as integers
    (``2``, ``2.0``, ``np.int8(2)`` and the string ``"2.0"`` are all ``"2"``), others in the
    shortest form that reads back to the same float. Booleans, and the words true/false in any
    case, are the numbers they equal in Python and pandas: ``"1"``/``"0"``. Other strings are
    stripped of outer whitespace.
    """
    kind = type(value)
    if kind is str:  # the common case first
        return _text_key(value)
    if kind is float:
        return None if value != value else _number_key(value)
    if is_missing(value):
        return None
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        # float32 0.1 is 0.10000000149...: its own shortest form, as it prints
        return _number_key(float(str(value)) if isinstance(value, np.float16 | np.float32) else float(value))
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, datetime.datetime) and value.tzinfo is None and value.time() == datetime.time():
        return value.strftime("%Y-%m-%d")  # a date column read as timestamps: the date, as a JSON client writes it
    return _text_key(str(value))  # Decimal('2.50') -> '2.5' through the number-in-text rule


def _text_key(value: str) -> str | None:
    text = value.strip()
    if not text:
        return None
    # a number that arrived as text (a JSON string, an object column); long digit runs stay text
    if len(text) <= _LONGEST_NUMBER and text[0] in _NUMBER_START and _DECIMAL.fullmatch(text):
        return str(int(text)) if _INTEGER.fullmatch(text) else _number_key(float(text))
    return _BOOLEAN_WORDS.get(text.lower(), text) if len(text) <= 5 else text


def _number_key(number: float) -> str:
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if number.is_integer():
        return str(int(number))
    return repr(number)


def canonical_keys(column: pd.Series | list) -> list[str | None]:
    """``canonical_key`` of every value (plain Python over the values: no dtype surprises)."""
    values = column.tolist() if isinstance(column, pd.Series) else column
    # columns repeat values: remember each (type, value) once. The type is part of the key so
    # that only same-typed values meet (1 == 1.0 == True already share a key, but pd.NA must
    # never be compared); unhashable values (arrays) are computed each time
    seen: dict = {}
    out = []
    for v in values:
        try:
            key = seen[(type(v), v)]
        except KeyError:
            key = seen[(type(v), v)] = canonical_key(v)
        except TypeError:
            key = canonical_key(v)
        out.append(key)
    return out


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FeatureType:
    Config: ClassVar[type[StrictModel]]
    #: order in which inference asks types whether a column is theirs (lowest first)
    infer_priority: ClassVar[int] = 100
    #: the dtype of the tensor ``transform`` returns, so encoders can be checked against it
    tensor_dtype: ClassVar[torch.dtype] = torch.float32

    def __init__(self, column: str, config: Any, state: dict | None = None) -> None:
        self.column = column
        self.config = config
        self.state: dict = state or {}

    # -- inference ---------------------------------------------------------------------------
    @classmethod
    def infer(cls, column: pd.Series, stats: dict) -> bool:
        """Whether an unlabelled column looks like this type (``stats`` from data.infer)."""
        return False

    # -- fitting and transforming --------------------------------------------------------------
    def fit(self, column: pd.Series) -> dict:
        """Learn the state from the training column; returns (and keeps) the JSON state."""
        raise NotImplementedError

    def transform(self, column: pd.Series) -> torch.Tensor:
        raise NotImplementedError

    def missing_rows(self, column: pd.Series) -> pd.Series:
        """Rows the ``missing: drop`` policy removes from training data."""
        if getattr(self.config, "missing", None) == "drop":
            return pd.Series([is_missing(v) for v in column.tolist()], index=column.index, dtype=bool)
        return pd.Series(False, index=column.index)

    def unusable(self, column: pd.Series) -> pd.Series:
        """Present values this fitted feature cannot read (predict refuses them, or with
        ``coerce`` reads them as missing). Types that can read anything (category, text) keep this."""
        return pd.Series(False, index=column.index)

    def encoder_inputs(self) -> dict:
        """What an encoder needs to size itself (vocab size, width, ...)."""
        return {}


FEATURE_TYPES: Registry[type[FeatureType]] = Registry("feature type")
