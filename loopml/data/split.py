"""Train/validation/test splits: stratified and seeded, duplicates never straddle two splits."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from loopml.data.read import _holds_arrays, row_hashes
from loopml.errors import LoopmlError
from loopml.features.base import StrictModel

SPLITS = ("train", "validation", "test")
_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
            "val": "validation", "dev": "validation", "test": "test", "testing": "test"}


class SplitConfig(StrictModel):
    #: a column saying train / validation / test for each row (used instead of random splitting)
    column: str | None = None
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.2, ge=0.0, lt=1.0)
    stratify: bool = True
    seed: int = 0
    #: exact duplicate rows: group = kept, always in the same split; drop = keep the first only
    duplicates: Literal["group", "drop", "keep"] = "group"


def duplicate_groups(df: pd.DataFrame) -> np.ndarray:
    """An id per distinct row; equal ids mean exact duplicates."""
    _, ids = np.unique(row_hashes(df), return_inverse=True)
    return ids


def split_frame(
    df: pd.DataFrame, target: str, cfg: SplitConfig, classification: bool
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Split ``df``; returns the parts and a report (duplicate count, sizes)."""
    groups = duplicate_groups(df)
    n_duplicates = int(len(groups) - len(np.unique(groups)))
    if cfg.duplicates == "keep":  # each row on its own: copies may land in different splits
        groups = np.arange(len(df))
    report = {"rows": len(df), "duplicate_rows": n_duplicates, "duplicates": cfg.duplicates}
    if cfg.duplicates == "drop" and n_duplicates:
        keep = ~pd.Series(groups).duplicated().to_numpy()
        df, groups = df[keep], groups[keep]
    if cfg.column:
        parts = _by_column(df, cfg.column)
        if not len(parts["validation"]) and cfg.validation > 0:  # only train/test given: carve validation
            train = parts["train"]
            inner = cfg.model_copy(update={"column": None, "test": 0.0, "validation": cfg.validation})
            sub = _random(train, target, inner, classification, duplicate_groups(train))
            parts["train"], parts["validation"] = sub["train"], sub["validation"]
    else:
        parts = _random(df, target, cfg, classification, groups)
    report["sizes"] = {name: len(part) for name, part in parts.items()}
    if not len(parts["train"]):
        raise LoopmlError("the train split is empty; use more data or smaller split fractions")
    return parts, report


def split_names(values: pd.Series) -> pd.Series:
    """A split column's values as train / validation / test (aliases such as val or dev read too); NaN otherwise."""
    return values.astype(str).str.strip().str.lower().map(_ALIASES)


def _by_column(df: pd.DataFrame, column: str) -> dict[str, pd.DataFrame]:
    if column not in df.columns:
        raise LoopmlError(f"split column '{column}' not found")
    names = split_names(df[column])
    if names.isna().any():
        bad = df[column][names.isna()].iloc[0]
        raise LoopmlError(f"split column '{column}' has value {bad!r}; use train, validation or test")
    return {name: df[names == name].drop(columns=[column]) for name in SPLITS}


def _random(df, target, cfg, classification, groups) -> dict[str, pd.DataFrame]:
    unique_groups, first = np.unique(groups, return_index=True)
    labels = df[target].to_numpy()[first]
    test_frac = cfg.test
    if test_frac + cfg.validation >= 1.0:
        raise LoopmlError("split.validation + split.test must leave some rows for training")
    if classification and cfg.stratify:
        _check_class_sizes(labels, target, [p for p, f in (("validation", cfg.validation), ("test", test_frac)) if f > 0])
    strata = _strata(labels, classification) if cfg.stratify else None
    rest, test = _take(unique_groups, test_frac, strata, cfg.seed)
    # strata in the order of `rest` (shuffled by the split), not of unique_groups (sorted)
    rest_strata = None if strata is None else strata[np.searchsorted(unique_groups, rest)]
    val_frac = cfg.validation / (1.0 - test_frac)
    train, val = _take(rest, val_frac, rest_strata, cfg.seed + 1)
    parts = {}
    for name, chosen in (("train", train), ("validation", val), ("test", test)):
        parts[name] = df[np.isin(groups, chosen)]
    return parts


def _check_class_sizes(labels: np.ndarray, target: str, held_out: list[str]) -> None:
    """Every class needs a row in train and in each held-out split (one label per distinct row)."""
    counts = pd.Series(labels).astype(str).value_counts().sort_index().sort_values(kind="stable")
    need = 1 + len(held_out)
    if len(counts) < 2 or counts.iloc[0] >= need:
        return  # a single class is Target.fit's message
    rare, n = counts.index[0], int(counts.iloc[0])
    splits = ", ".join(["train", *held_out])
    raise LoopmlError(
        f"class {rare!r} of target '{target}' has only {n} row{'s' if n != 1 else ''}; need at least {need} "
        f"per class for a stratified split (one each for {splits}): add rows of that class, relabel or drop "
        "them, or set split.stratify: false"
    )


def _strata(labels: np.ndarray, classification: bool) -> np.ndarray | None:
    if not classification:  # regression: stratify on target deciles
        values = pd.to_numeric(pd.Series(labels), errors="coerce")
        return pd.qcut(values.rank(method="first"), q=min(10, len(values) // 2 or 1), labels=False).to_numpy()
    strata = pd.Series(labels).astype(str).to_numpy()
    counts = pd.Series(strata).value_counts()
    return strata if counts.min() >= 2 else None  # sklearn cannot stratify a class of one


def _take(items: np.ndarray, fraction: float, strata, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split  # here: loading or serving a model never needs it

    if fraction <= 0 or len(items) < 2:
        return items, items[:0]
    try:
        return train_test_split(items, test_size=fraction, random_state=seed, stratify=strata)
    except ValueError:  # too few rows per class for a stratified split of this size
        return train_test_split(items, test_size=fraction, random_state=seed)


# -- the split record: which rows of which source every split holds (kept in the model directory) --
def rows_fingerprint(df: pd.DataFrame, columns: list[str]) -> str:
    """A hash of the values the model reads from these rows (numbers as float64, the rest as text),
    independent of row order and of the file's other columns."""
    import hashlib

    canonical = pd.DataFrame(index=range(len(df)))
    for col in sorted(columns):
        values = df[col] if col in df.columns else pd.Series([None] * len(df))
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            canonical[col] = values.to_numpy(dtype="float64", na_value=np.nan)  # nullable Int64/boolean too
        elif _holds_arrays(values):  # in-memory images: row_hashes hashes their bytes
            canonical[col] = values.to_numpy()
        else:
            canonical[col] = values.astype("string").to_numpy()
    digest = hashlib.sha256(",".join(sorted(columns)).encode())
    digest.update(np.sort(row_hashes(canonical)).tobytes() if len(canonical) else b"")  # order-free
    return digest.hexdigest()[:24]


def encode_rows(positions: list[int]) -> dict:
    """Row positions as a compressed bitmap (a million-row split stays ~100 kB in the manifest)."""
    import base64
    import zlib

    positions = np.asarray(sorted(positions), dtype=np.int64)
    length = int(positions[-1]) + 1 if len(positions) else 0
    bits = np.zeros(length, dtype=bool)
    bits[positions] = True
    packed = zlib.compress(np.packbits(bits).tobytes(), 9)
    return {"count": len(positions), "length": length, "bitmap": base64.b64encode(packed).decode("ascii")}


def decode_rows(encoded: dict) -> np.ndarray:
    import base64
    import zlib

    packed = np.frombuffer(zlib.decompress(base64.b64decode(encoded["bitmap"])), dtype=np.uint8)
    return np.flatnonzero(np.unpackbits(packed)[: encoded["length"]]).astype(np.int64)


def split_record(sources: dict, rows: dict[str, list[int]], frames: dict[str, pd.DataFrame | None],
                 columns: list[str]) -> dict:
    """Per split, the parts it was made of: the source file (None for in-memory data), which of its
    rows, and a fingerprint of those rows' values, so a later retrain can rebuild and verify them."""
    from pathlib import Path

    record = {}
    for name in SPLITS:
        role = name if name != "train" and sources.get(name) is not None else "data"
        source = sources.get(role)
        path = str(Path(source).resolve()) if isinstance(source, (str, Path)) or hasattr(source, "__fspath__") else None
        frame = frames.get(name)
        positions = rows.get(name, [])
        record[name] = [{"role": role, "source": path, "rows": encode_rows(positions),
                         "fingerprint": rows_fingerprint(frame if frame is not None else pd.DataFrame(), columns)}]
    return record
