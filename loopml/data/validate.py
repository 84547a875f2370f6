"""Value checks that run before anything is fitted or written: numbers training can use, and
input values a trained model can read. Each failure is one line naming the column, the row
(counted from 1, the first data row after any header) and the value.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from loopml.errors import LoopmlError

#: the largest float32: larger magnitudes overflow the tensors (and their squares the statistics)
FLOAT32_MAX = float(np.finfo(np.float32).max)
NUMBER_RANGE = f"finite and within ±{FLOAT32_MAX:.1e}"


def out_of_range(column: pd.Series) -> np.ndarray:
    """Values that read as numbers but are infinite or beyond the float32 range (1e308, inf, -inf)."""
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        return ~np.isnan(numbers) & ~(np.abs(numbers) <= FLOAT32_MAX)


def _example(column: pd.Series, mask: np.ndarray) -> str:
    """"inf at row 6" for the first flagged value (rows counted from 1, in the order given)."""
    position = int(np.flatnonzero(mask)[0])
    return f"{shown(column.iloc[position])} at row {position + 1}"


def shown(value: object) -> str:
    """A cell value as a message quotes it: Python's repr of the plain value, cut to 60 characters."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def check_finite(
    frames: dict[str, pd.DataFrame], columns: list[str], policy: Literal["error", "missing"], names: dict[str, str],
) -> dict[str, int]:
    """Refuse (``error``) or blank out (``missing``) non-finite and out-of-range numbers in ``columns``.

    ``frames`` are changed in place under ``missing``; returns the count per column. ``names``
    says which file each frame came from, for the message.
    """
    counts: dict[str, int] = {}
    problems: list[str] = []
    for name, frame in frames.items():
        for col in columns:
            if col not in frame.columns:
                continue
            bad = out_of_range(frame[col])
            if not bad.any():
                continue
            counts[col] = counts.get(col, 0) + int(bad.sum())
            if policy == "missing":
                frame[col] = frame[col].mask(bad)
            else:
                where = f" of {names[name]}" if names.get(name) else ""
                problems.append(f"'{col}' ({int(bad.sum())}, e.g. {_example(frame[col], bad)}{where})")
    if problems:
        label = "column" if len(problems) == 1 else "columns"
        raise LoopmlError(
            f"non-finite or out-of-range numbers in {label} {', '.join(problems[:5])}; numbers must be "
            f"{NUMBER_RANGE}: fix them, or set data.non_finite: missing to read them as missing values"
        )
    return counts


def check_inputs(df: pd.DataFrame, features: dict, coerce: bool = False) -> tuple[pd.DataFrame, dict[str, int]]:
    """Values a trained model cannot read (``old`` in a number column, a third value in a binary
    one, ``inf``): a LoopmlError naming the first, or with ``coerce`` the same values read as
    missing, counted per column. ``features`` maps a column to its fitted feature type.
    """
    counts: dict[str, int] = {}
    out = df
    for col, feature in features.items():
        if col not in df.columns:
            continue  # Preprocessor.check_columns names every absent column at once
        bad = np.asarray(feature.unusable(df[col]), dtype=bool)
        if not bad.any():
            continue
        if not coerce:
            what = {"number": f"is not a number ({NUMBER_RANGE})",
                    "binary": f"is not one of the two values seen in training ({_two(feature)})",
                    "date": "is not an ISO 8601 date or timestamp (2024-03-05, 2024-03-05T12:30:00+02:00)"}
            reason = what.get(feature.config.type, "cannot be read")
            raise LoopmlError(
                f"column '{col}': {_example(df[col], bad)} {reason}"
                + (f"; {int(bad.sum())} such values" if bad.sum() > 1 else "")
                + "; fix the data, or pass --coerce (coerce=True) to read such values as missing"
            )
        if out is df:
            out = df.copy()
        out[col] = out[col].astype(object).mask(bad)
        counts[col] = int(bad.sum())
    return out, counts


def _two(feature) -> str:
    return ", ".join(repr(v) for v in feature.state.get("values", []))


def describe_coerced(counts: dict[str, int]) -> str:
    """'coerced 3 value(s) to missing: age (2), smoker (1)'."""
    parts = ", ".join(f"{col} ({n})" for col, n in counts.items())
    return f"coerced {sum(counts.values())} value(s) to missing: {parts}"


def check_training_values(frames: dict[str, pd.DataFrame], schema, non_finite: Literal["error", "missing"],
                          names: dict[str, str]) -> dict:
    """The value checks of a training's data (every file of it), before anything is fitted.

    Returns the report entries: values read as missing per column, by reason.
    """
    check_number_target(frames, schema, names)
    numbers = [c.name for c in schema.inputs if c.type == "number"]
    report = {}
    counts = check_finite(frames, numbers + ([schema.target] if schema.target_kind == "number" else []),
                          non_finite, names)
    if counts:
        report["non_finite_as_missing"] = counts
    counts = non_numeric_in_number_columns(frames, numbers, names)
    if counts:
        report["non_numeric_as_missing"] = counts
    counts = unreadable_dates(frames, [c.name for c in schema.inputs if c.type == "date"])
    if counts:
        report["unreadable_dates_as_missing"] = counts
    return report


def unreadable_dates(frames: dict[str, pd.DataFrame], columns: list[str]) -> dict[str, int]:
    """Training reads the few values of a date column that are not ISO dates as missing: count them per column."""
    from loopml.features.date import instants

    counts: dict[str, int] = {}
    for frame in frames.values():
        for col in columns:
            if col in frame.columns:
                bad = int(instants(frame[col])[2].sum())
                if bad:
                    counts[col] = counts.get(col, 0) + bad
    return counts


def check_number_target(frames: dict[str, pd.DataFrame], schema, names: dict[str, str]) -> None:
    """A target set to (or inferred as) a number must hold numbers: name the first that is not."""
    if schema.target_kind != "number":
        return
    for name, frame in frames.items():
        if schema.target not in frame.columns:
            continue
        column = frame[schema.target]
        present = column.notna().to_numpy()
        bad = present & pd.to_numeric(column, errors="coerce").isna().to_numpy()
        if bad.any():
            where = f" of {names[name]}" if names.get(name) else ""
            raise LoopmlError(
                f"target '{schema.target}' is a number target but has non-numeric values, e.g. "
                f"{_example(column, bad)}{where} ({int(bad.sum())} of {int(present.sum())}); "
                "set target.type to category or binary, or fix those values"
            )


def check_enough_rows(df: pd.DataFrame, split, name: str, missing_target: int, carve: dict[str, bool]) -> None:
    """Enough (distinct) labelled rows for one in each split carved from this file, said before
    a later step reports an empty split or a column it thinks is entirely missing."""
    if split.column:  # the file's own split column decides; its parts are checked when split
        return
    carved = ["train"] + [part for part in ("validation", "test") if carve[part] and getattr(split, part) > 0]
    need = len(carved)
    from loopml.data.split import duplicate_groups

    distinct = len(df) if split.duplicates == "keep" else len(np.unique(duplicate_groups(df))) if len(df) else 0
    if distinct >= need:
        return
    have = f"{distinct} distinct of {rows(len(df))}" if distinct < len(df) else rows(len(df))
    also = f" ({missing_target} more with a missing target)" if missing_target else ""
    raise LoopmlError(
        f"{name} has too few rows: {have} with a target{also}; training needs at least {need}, "
        f"one for each split ({', '.join(carved)})"
    )


def non_numeric_in_number_columns(frames: dict[str, pd.DataFrame], columns: list[str],
                                  names: dict[str, str]) -> dict[str, int]:
    """Training reads the few text values of a number column (``n/a``, ``-``) as missing: count them
    per column for the report; a number column with no number at all is a mistake, not missing data."""
    counts: dict[str, int] = {}
    for name, frame in frames.items():
        for col in columns:
            if col not in frame.columns:
                continue
            column = frame[col]
            present = column.notna().to_numpy()
            text = present & pd.to_numeric(column, errors="coerce").isna().to_numpy()
            if not text.any():
                continue
            if name == "data" and text.sum() == present.sum():
                where = f" of {names[name]}" if names.get(name) else ""
                raise LoopmlError(
                    f"column '{col}' is a number column but holds no numbers, e.g. {_example(column, text)}{where}; "
                    "set its type to category or text"
                )
            counts[col] = counts.get(col, 0) + int(text.sum())
    return counts
