"""Dates and timestamps: one canonical parsing at train, predict and serve time.

Every value becomes an integer count of microseconds since 1970-01-01 (the ``instant``):

- text in ISO 8601 form: ``2024-03-05``, ``2024-03-05T12:30``, ``2024-03-05 12:30:00.25``, with an
  optional zone ``Z`` / ``+02:00`` / ``-0500``; nothing else (``20240305`` and ``03/05/2024`` are
  not dates: an 8-digit id must not become one, and day/month order cannot be guessed);
- ``datetime``/``date``/``pd.Timestamp`` objects and ``datetime64`` columns (any unit, naive or
  with a time zone).

A value with a time zone is converted to UTC; a naive value is kept as written (its clock time).
Sub-microsecond digits are dropped. Numbers, booleans and other text are not dates (``unusable``:
predict refuses them, or with ``coerce`` reads them as missing; training reads them as missing).

From the instant come the parts: ``ordinal`` (days since the epoch, with the time as a fraction),
``year``, ``month``, ``day`` (of the month), ``dayofweek`` (Monday = 0) and, when the training
column has times, ``hour`` (with minutes and seconds as a fraction). Networks get the standardised
ordinal and year, sin/cos of month, day of week, day of month (and hour), and a was-missing flag;
trees get the plain parts (``table_columns``).
"""

from __future__ import annotations

import datetime
import re
from typing import Literal

import numpy as np
import pandas as pd
import torch

from loopml.data.validate import shown
from loopml.errors import LoopmlError
from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel, is_missing

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"(?: ?(Z|z|[+-]\d{2}(?::?\d{2})?))?)?",
    re.ASCII,
)
_EPOCH = datetime.date(1970, 1, 1).toordinal()
_SECOND = 1_000_000
DAY = 86_400 * _SECOND
#: the share of present values that must be dates for a column to be inferred as one
INFER_RATIO = 0.98
_INFER_SAMPLE = 2000


class DateConfig(StrictModel):
    type: Literal["date"] = "date"
    #: mean = a missing date reads as the training mean (0 in every network input) with the
    #: was-missing flag set, NaN in every tree part; drop = such training rows are removed
    missing: Literal["mean", "drop"] = "mean"


def _text_instant(text: str) -> int | None:
    match = _ISO.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        days = datetime.date(int(year), int(month), int(day)).toordinal() - _EPOCH
    except ValueError:  # 2023-02-29, month 13
        return None
    h, m, s = int(hour or 0), int(minute or 0), int(second or 0)
    if h > 23 or m > 59 or s > 59:
        return None
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    offset = 0
    if zone and zone not in "Zz":
        digits = zone[1:].replace(":", "")
        zh, zm = int(digits[:2]), int(digits[2:] or 0)
        if zh > 23 or zm > 59:
            return None
        offset = (1 if zone[0] == "+" else -1) * (zh * 3600 + zm * 60) * _SECOND
    return days * DAY + (h * 3600 + m * 60 + s) * _SECOND + micros - offset


def _object_instant(value: object) -> int | None:
    """The instant of a datetime-like object (``pd.Timestamp`` is a ``datetime``), else None."""
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value) if np.datetime_data(value.dtype)[0] == "ns" else value.astype("datetime64[us]").item()
    if isinstance(value, datetime.datetime):
        offset = value.utcoffset()
        clock = ((value.hour * 60 + value.minute) * 60 + value.second) * _SECOND + value.microsecond
        shift = 0 if offset is None else (offset // datetime.timedelta(microseconds=1))
        return (value.toordinal() - _EPOCH) * DAY + clock - shift
    if isinstance(value, datetime.date):
        return (value.toordinal() - _EPOCH) * DAY
    return None


def instant(value: object) -> int | None:
    """Microseconds since 1970-01-01 (UTC for zoned values), or None when ``value`` is not a date."""
    if isinstance(value, str):
        return _text_instant(value)
    if isinstance(value, bytes):
        return _text_instant(value.decode("utf-8", errors="replace"))
    return _object_instant(value)


def instants(column: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(instants, missing, unreadable)`` of every value: int64 microseconds (0 where absent), and
    two masks, for missing values and present values that are not dates."""
    if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(column.dtype):
        return _datetime64_instants(column)
    values = column.tolist()
    n = len(values)
    out = np.zeros(n, dtype=np.int64)
    missing = np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    seen: dict = {}  # columns repeat values: parse each (type, value) once
    for i, v in enumerate(values):
        if is_missing(v) or (isinstance(v, np.datetime64) and np.isnat(v)):
            missing[i] = True
            continue
        try:
            parsed = seen[(type(v), v)]
        except KeyError:
            parsed = seen[(type(v), v)] = instant(v)
        except TypeError:  # unhashable (a list sent as JSON): not a date
            parsed = None
        if parsed is None:
            bad[i] = True
        else:
            out[i] = parsed
    return out, missing, bad


def _datetime64_instants(column: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    array = column.to_numpy()
    missing = np.isnat(array)
    unit, count = np.datetime_data(array.dtype)
    raw = array.view(np.int64) * count
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    # floor division drops nanoseconds the way the per-value parsing does (they only ever add time)
    micros = raw // (per_second // _SECOND) if per_second > _SECOND else raw * (_SECOND // per_second)
    return np.where(missing, 0, micros).astype(np.int64), missing, np.zeros(len(array), dtype=bool)


def date_ratio(present: pd.Series) -> float:
    """The share of present (non-null) values that parse as dates, for type inference."""
    if not len(present):
        return 0.0
    dtype = present.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        return 1.0
    if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        return 0.0
    sample = present.iloc[:_INFER_SAMPLE]  # most columns are refused on their first values
    for part in (sample, present) if len(present) > _INFER_SAMPLE else (present,):
        _, missing, bad = instants(part)
        counted = int((~missing).sum())
        ratio = float((~missing & ~bad).sum() / counted) if counted else 0.0
        if ratio < INFER_RATIO:
            return ratio
    return ratio


def date_parts(micros: np.ndarray) -> dict[str, np.ndarray]:
    """Calendar parts of instants (int64 microseconds since the epoch), as float64 arrays."""
    days = np.floor_divide(micros, DAY)
    clock = micros - days * DAY
    day64 = days.astype("datetime64[D]")
    month64 = day64.astype("datetime64[M]")
    month_start = month64.astype("datetime64[D]")
    return {
        "ordinal": days + clock / DAY,
        "year": (day64.astype("datetime64[Y]").astype(np.int64) + 1970).astype(np.float64),
        "month": (np.mod(month64.astype(np.int64), 12) + 1).astype(np.float64),
        "day": ((day64 - month_start).astype(np.int64) + 1).astype(np.float64),
        "month_days": ((month64 + 1).astype("datetime64[D]") - month_start).astype(np.int64).astype(np.float64),
        "dayofweek": np.mod(days + 3, 7).astype(np.float64),  # 1970-01-01 was a Thursday
        "hour": clock / (3600 * _SECOND),
    }


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    if not values.size:
        return 0.0, 1.0
    return float(values.mean()), float(values.std()) or 1.0


@FEATURE_TYPES.register("date")
class DateFeature(FeatureType):
    Config = DateConfig
    infer_priority = 5  # before skip: unique ISO dates are dates, not row ids

    @classmethod
    def infer(cls, column: pd.Series, stats: dict) -> bool:
        return stats.get("date_ratio", 0.0) >= INFER_RATIO

    def fit(self, column: pd.Series) -> dict:
        micros, missing, bad = instants(column)
        if bad.any() and bad.sum() == (~missing).sum():
            example = column.iloc[int(np.flatnonzero(bad)[0])]
            raise LoopmlError(
                f"column '{self.column}' is a date column but holds no ISO 8601 dates or timestamps, e.g. "
                f"{shown(example)}; write them as 2024-03-05 or 2024-03-05T12:30:00, or set its type to category")
        present = micros[~missing & ~bad]
        parts = date_parts(present)
        ordinal_mean, ordinal_std = _mean_std(parts["ordinal"])
        year_mean, year_std = _mean_std(parts["year"])
        self.state = {
            "has_time": bool(np.any(np.mod(present, DAY))),
            "ordinal_mean": ordinal_mean,
            "ordinal_std": ordinal_std,
            "year_mean": year_mean,
            "year_std": year_std,
        }
        return self.state

    def _parts(self, column: pd.Series) -> tuple[dict[str, np.ndarray], np.ndarray]:
        micros, missing, bad = instants(column)
        return date_parts(micros), missing | bad  # unreadable values read as missing (check_inputs refuses them first)

    def transform(self, column: pd.Series) -> torch.Tensor:
        s = self.state
        parts, absent = self._parts(column)
        inputs = [(parts["ordinal"] - s["ordinal_mean"]) / s["ordinal_std"], (parts["year"] - s["year_mean"]) / s["year_std"]]
        cycles = [(parts["month"] - 1, 12.0), (parts["dayofweek"], 7.0), (parts["day"] - 1, parts["month_days"])]
        if s["has_time"]:
            cycles.append((parts["hour"], 24.0))
        for value, period in cycles:
            angle = 2 * np.pi * value / period
            inputs += [np.sin(angle), np.cos(angle)]
        # a missing date sits at the centre of every circle and at the training mean, flagged
        x = np.where(absent[:, None], 0.0, np.stack(inputs, axis=1))
        return torch.from_numpy(np.concatenate([x, absent[:, None]], axis=1).astype(np.float32))

    def table_columns(self, column: pd.Series) -> dict[str, np.ndarray]:
        """Plain parts for tree learners (NaN for missing or unreadable values)."""
        parts, absent = self._parts(column)
        names = ["ordinal", "year", "month", "day", "dayofweek"] + (["hour"] if self.state["has_time"] else [])
        return {name: np.where(absent, np.nan, parts[name]) for name in names}

    def unusable(self, column: pd.Series) -> pd.Series:
        """Present values that are not ISO dates or timestamps (``yesterday``, ``2023-02-29``, a number)."""
        return pd.Series(instants(column)[2], index=column.index)

    def encoder_inputs(self) -> dict:
        return {"width": 2 + 2 * (4 if self.state["has_time"] else 3) + 1}
