"""Feedback as training rows: the ones a retrain can use, and a count of the others by reason.

Feedback is stored as sent; a row that training cannot use (no inputs, a lone surrogate, 1e308, a
label the champion has no class for, an image or audio path that is not a file inside the media root:
absolute, ``..``, a symlink out) is skipped and counted, never allowed to stop a retrain, and never read.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from loopml.data.media import served_path
from loopml.errors import LoopmlError

#: the largest float32: larger magnitudes overflow the tensors
FLOAT32_MAX = float(np.finfo(np.float32).max)
SCALARS = (str, int, float, bool)
#: a media feature's error names the file ('image column 'x': a/b.png: file not found'): counted by column instead
MEDIA_ERROR = re.compile(r"^(image|audio) column '(.*?)': ")


def _bad_scalar(value: object) -> str | None:
    """Why a single JSON value cannot go into a training frame (None when it can)."""
    if value is None:
        return None
    if not isinstance(value, SCALARS):
        return "a value is not a single number or text"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "text that is not valid Unicode (a lone surrogate)"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "a non-finite number"
    if not isinstance(value, bool) and abs(value) > FLOAT32_MAX:
        return "a number out of range"
    return None


def _row_problem(f: dict, columns: list[str]) -> str | None:
    inputs = f.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        return "no inputs"
    if not any(col in inputs for col in columns):
        return "none of the model's input columns"
    if f.get("label") is None:
        return "no label"
    for value in (f["label"], *(inputs.get(col) for col in columns)):
        why = _bad_scalar(value)
        if why:
            return why
    return None


def usable_feedback(feedback: list[dict], champion, exclude_ids: set[int] = frozenset(),
                    media_root: Path | None = None) -> tuple[pd.DataFrame, Counter]:
    """One row per distinct input (the latest label wins), oldest first, with ``_feedback_id`` and
    ``_at``; rows the champion cannot encode are left out and counted by reason. Image/audio paths are
    relative to ``media_root`` (default: the working directory), the frame's ``base_dir``."""
    pre = champion.preprocessor
    columns, target = list(pre.features), pre.target.column
    skipped: Counter = Counter()
    rows = []
    for f in feedback:
        if int(f["id"]) in exclude_ids:
            continue
        why = _row_problem(f, columns)
        if why:
            skipped[why] += 1
            continue
        rows.append({**{col: f["inputs"].get(col) for col in columns}, target: f["label"],
                     "_feedback_id": int(f["id"]), "_at": float(f["created_at"])})
    frame = pd.DataFrame(rows, columns=[*columns, target, "_feedback_id", "_at"])
    frame.attrs["base_dir"] = str(Path(media_root or Path.cwd()).resolve())
    if not len(frame):
        return frame, skipped
    frame = frame[_encodable(frame, pre, skipped)]
    # one row per distinct input, the latest usable label winning, in the order of those latest labels
    keys = input_keys(frame, columns)
    frame = frame[~pd.Series(keys).duplicated(keep="last").to_numpy()].reset_index(drop=True)
    for col, feature in pre.features.items():  # JSON numbers with nulls arrive as objects: match the file's dtype
        if feature.config.type == "number":
            frame[col] = pd.to_numeric(frame[col], errors="coerce")  # unusable values were dropped above
    return frame, skipped


def _key_value(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
        return float(value) + 0.0  # 7 and 7.0 (an int column, or one a missing value made float) are one input; + 0.0: -0.0 too
    return value


def input_keys(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """One string per row naming its input values, the same whatever dtype the frame gave them."""
    return [json.dumps({c: _key_value(r[c]) for c in columns}, sort_keys=True, default=str)
            for r in frame[columns].to_dict("records")]


def latest_across_turns(new: pd.DataFrame, learned: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, set[int]]:
    """The latest label wins across turns: ``new`` rows (not learned yet) less those an earlier turn already
    learned a newer label for (a stale label must not come back once its correction was learned), and the ids
    of ``learned`` rows a newer ``new`` row labels again (they leave the training data)."""
    learned_keys = list(zip(learned["_feedback_id"].astype(int), input_keys(learned, columns), strict=True))
    newest_learned: dict[str, int] = {}
    for i, key in learned_keys:
        newest_learned[key] = max(i, newest_learned.get(key, -1))
    keys = input_keys(new, columns)
    keep = np.array([int(i) > newest_learned.get(key, -1) for i, key in zip(new["_feedback_id"], keys, strict=True)],
                    dtype=bool)
    relabelled = {key for key, kept in zip(keys, keep, strict=True) if kept and key in newest_learned}
    return new[keep].reset_index(drop=True), {i for i, key in learned_keys if key in relabelled}


def outside_root_reason(column: str) -> str:
    """The skip reason of a media path that is not a file inside the media root."""
    return f"a path in '{column}' that is not a file inside the media root"


def unreadable_media_reason(column: str, kind: str) -> str:
    """The skip reason of a media file that does not decode as ``kind`` (image, audio)."""
    return f"a file in '{column}' that cannot be read as {kind}"


def _encodable(frame: pd.DataFrame, pre, skipped: Counter) -> np.ndarray:
    """Rows whose every value the champion's fitted preprocessing reads into finite tensors."""
    keep = np.ones(len(frame), dtype=bool)
    root = Path(frame.attrs["base_dir"])
    for col, feature in pre.features.items():
        if feature.config.type in ("image", "audio"):  # confined as the server confines it: never read outside
            bad = np.array([served_path(v, root) is None for v in frame[col].tolist()], dtype=bool) & keep
            skipped[outside_root_reason(col)] += int(bad.sum())
            keep &= ~bad
        unusable = getattr(feature, "unusable", None)
        if unusable is not None:
            bad = np.asarray(unusable(frame[col]), dtype=bool) & keep
            skipped[f"a value '{col}' cannot read"] += int(bad.sum())
            keep &= ~bad
    _keep_encodable(frame, np.flatnonzero(keep), pre, skipped, keep)
    for k in [k for k, n in skipped.items() if n == 0]:
        del skipped[k]
    return keep


def _keep_encodable(frame: pd.DataFrame, rows: np.ndarray, pre, skipped: Counter, keep: np.ndarray) -> None:
    """Encode ``rows`` in one batch; when that fails, halve it and retry each half, so k bad rows
    among n cost about 2·k·log2(n) encodings instead of n (rows encode the same alone or in a batch)."""
    if not len(rows):
        return
    batch = frame.iloc[rows]
    try:
        tensors = [*pre.transform(batch).values(), pre.transform_target(batch)]
    except (LoopmlError, ValueError, TypeError) as e:  # a bad value somewhere in this batch
        if len(rows) > 1:
            middle = len(rows) // 2
            _keep_encodable(frame, rows[:middle], pre, skipped, keep)
            _keep_encodable(frame, rows[middle:], pre, skipped, keep)
            return
        media = MEDIA_ERROR.match(str(e))
        if media:  # one reason per column, not per file
            skipped[unreadable_media_reason(media[2], media[1])] += 1
        elif isinstance(e, LoopmlError):  # e.g. a label that is not one of the champion's classes
            skipped[f"cannot be encoded ({str(e).split(';')[0]})"] += 1
        else:  # pandas / torch on a value of an unexpected type
            skipped["cannot be encoded (a value of the wrong type)"] += 1
        keep[rows[0]] = False
        return
    finite = np.ones(len(rows), dtype=bool)
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            if len(t) == len(rows):
                finite &= torch.isfinite(t.reshape(len(rows), -1)).all(1).numpy()
            elif len(rows) == 1 and not bool(torch.isfinite(t).all()):
                finite[:] = False
    skipped["a value that encodes to a non-finite number"] += int((~finite).sum())
    keep[rows[~finite]] = False


def describe_skipped(skipped: dict) -> str:
    """'skipped 3 feedback rows it cannot use: no inputs (2), a number out of range (1)'."""
    total = sum(skipped.values())
    return f"skipped {total} feedback row{'s' if total != 1 else ''} it cannot use: " + ", ".join(
        f"{why} ({n})" for why, n in sorted(skipped.items(), key=lambda kv: -kv[1]))
