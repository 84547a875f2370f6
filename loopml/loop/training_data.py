"""The champion's own train/validation/test rows, rebuilt from the split record in its model directory.

Every model directory records, per split, the parts it was made of: rows of a file (by position,
with a fingerprint of their values) or feedback rows (by id, with the weight they had). A retrained
model records its champion's parts plus the feedback it learned from, so any number of turns can
rebuild exactly what each model was trained and tested on, and the gate scores on the champion's
real test rows. When the data behind a part changed, retraining refuses rather than guess.

Image and audio paths are resolved per part, after its fingerprint check: a file's against its folder
(or data.media_root), feedback's against the media root it was served from, which is not recorded but
given: ``--media-root`` of ``loopml retrain`` / ``loopml loop`` (``serve --loop-policy`` passes its own),
else the policy's data.media_root, else the champion's data.media_root, else the working directory.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from loopml.data.media import resolve
from loopml.data.split import SPLITS, decode_rows, encode_rows, rows_fingerprint
from loopml.errors import LoopmlError
from loopml.loop.feedback_rows import usable_feedback

#: the column a retrain's training frame says train/validation/test in
RETRAIN_SPLIT_COLUMN = "__loopml_split__"


def model_columns(model) -> list[str]:
    return [*model.preprocessor.features, model.preprocessor.target.column]


def media_columns(model) -> list[str]:
    """The model's image and audio columns: their values are file paths, resolved against a frame's base."""
    return [col for col, f in model.preprocessor.features.items() if f.config.type in ("image", "audio")]


def feedback_media_root(given: str | None, champion) -> Path:
    """The folder feedback media paths are relative to: ``given`` (``--media-root``, the policy's
    data.media_root), else the champion's data.media_root, else the working directory."""
    recorded = next((part["media_root"] for parts in (champion.info.get("splits") or {}).values()
                     if isinstance(parts, list) for part in parts if part.get("media_root")), None)
    chosen = given or recorded or champion.config.data.media_root  # recorded: absolute, the config's may be relative
    root = Path(chosen).expanduser() if chosen else Path.cwd()
    if chosen and media_columns(champion) and not root.is_dir():
        raise LoopmlError(f"the media root of the feedback is not a folder: {chosen} (--media-root, data.media_root)")
    return root.resolve()


def combine(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """``frames`` as one, with one ``base_dir`` (the common folder of theirs) and each media value in
    ``columns`` rewritten relative to it; a value outside its own frame's base is refused, never read."""
    bases = [Path(f.attrs.get("base_dir") or Path.cwd()).resolve() for f in frames]
    used = {b for f, b in zip(frames, bases, strict=True) if len(f)}
    if not columns or len(used) < 2:
        out = pd.concat(frames, ignore_index=True)
        if columns and used:  # concat drops attrs that differ (an empty frame's)
            out.attrs["base_dir"] = str(used.pop())
        return out
    common = Path(os.path.commonpath([str(b) for b in used]))
    rebased = []
    for frame, base in zip(frames, bases, strict=True):
        frame = frame.copy()
        for col in columns:
            if col in frame.columns and base != common:
                frame[col] = frame[col].map(lambda v, b=base: str(resolve(v, b).relative_to(common))
                                            if isinstance(v, str) and v.strip() else v)
        rebased.append(frame)
    out = pd.concat(rebased, ignore_index=True)
    out.attrs = {"base_dir": str(common)}
    return out


@contextlib.contextmanager
def own_media_base(*models) -> Iterator[None]:
    """While open, ``models`` read a frame's media paths against the frame's own base (a combined frame's)
    instead of their data.media_root, which read_table would put in its place."""
    saved = [m.config.data.media_root for m in models]
    for m in models:
        m.config.data.media_root = None
    try:
        yield
    finally:
        for m, root in zip(models, saved, strict=True):
            m.config.data.media_root = root


def feedback_ids(record: dict) -> set[int]:
    """Every feedback id a split record trained on."""
    return {int(i) for part in record.get("train", []) for i in part.get("feedback", [])}


def champion_splits(store, name: str, champion, training_data: str | None,
                    drop_feedback: set[int] = frozenset(), media_root: Path | None = None,
                    skipped: Counter | None = None) -> tuple[dict[str, pd.DataFrame], dict]:
    """(frames per split, the record they came from). ``training_data`` replaces the path of the
    champion's main data file (moved, or the model was trained on an in-memory frame);
    ``drop_feedback``: feedback ids left out (relabelled since), and out of the returned record;
    ``media_root``: the folder feedback media paths are relative to (default: feedback_media_root).
    Learned feedback whose image/audio file is gone or unreadable now is left out of frames and record and
    counted in ``skipped`` (one file removed from the media root must not stop every later turn), unless
    none of it reads: then the media root is wrong, and that is an error."""
    record = champion.info.get("splits")
    if not record:
        return _legacy_splits(champion, training_data)
    record = without_feedback(record, drop_feedback)
    reader = _Reader(store, name, champion, training_data, media_root or feedback_media_root(None, champion))
    own_split_column = champion.config.split.column  # the user's train/test column: the record replaces it
    frames = {}
    for split in SPLITS:
        parts = [reader.part(split, part) for part in record.get(split, [])]
        parts = [p.drop(columns=[own_split_column], errors="ignore") if own_split_column else p for p in parts if len(p)]
        frames[split] = combine(parts, media_columns(champion)) if parts else pd.DataFrame(columns=model_columns(champion))
    if reader.lost_ids:
        if not reader.found:
            raise LoopmlError(f"none of the {len(reader.lost_ids)} feedback rows the champion learned has its image/audio "
                              "file in the media root: give the server's --media-root; cannot rebuild its training data")
        record = without_feedback(record, reader.lost_ids)
        if skipped is not None:
            skipped.update(reader.lost)
    return frames, record


class _Reader:
    def __init__(self, store, name: str, champion, training_data: str | None, media_root: Path) -> None:
        self.store, self.name, self.champion, self.training_data = store, name, champion, training_data
        self.media_root = media_root
        self.columns = model_columns(champion)
        self._files: dict[tuple[str, str | None], pd.DataFrame] = {}
        self._feedback: list[dict] | None = None
        self.lost: Counter = Counter()  # learned feedback whose media file no longer reads, by reason
        self.lost_ids: set[int] = set()
        self.found = 0  # learned feedback rows that still read

    def part(self, split: str, part: dict) -> pd.DataFrame:
        if "feedback" in part:
            return self._feedback_part(split, part)
        source = self.training_data if part.get("role") == "data" and self.training_data else part.get("source")
        if source is None:
            raise LoopmlError(f"the champion's {split} rows came from in-memory data; set data.training_data in the "
                              "policy to the file they were read from")
        if not Path(source).exists():
            raise LoopmlError(f"cannot find the champion's {split} data ({source}); set data.training_data in the "
                              "policy if the file moved")
        frame = self._read(source, part.get("media_root"))
        positions = decode_rows(part["rows"])
        if len(positions) and positions[-1] >= len(frame):
            raise LoopmlError(self._changed(split, source, f"it has {len(frame)} rows, the champion used row "
                                                           f"{int(positions[-1]) + 1}"))
        rows = frame.iloc[positions]
        found = rows_fingerprint(rows, self.columns)
        if found != part["fingerprint"]:
            raise LoopmlError(self._changed(split, source, f"fingerprint {found}, recorded {part['fingerprint']}"))
        return rows

    def _feedback_media_reasons(self, why: Counter) -> list[str]:
        """The skip reasons in ``why`` that name an image/audio file (gone, outside the root, unreadable)."""
        from loopml.loop.feedback_rows import outside_root_reason, unreadable_media_reason

        media = {reason for c in media_columns(self.champion)
                 for reason in (outside_root_reason(c), unreadable_media_reason(c, "image"),
                                unreadable_media_reason(c, "audio"))}
        return [r for r in why if r in media]

    def _changed(self, split: str, source: str, detail: str) -> str:
        return (f"the champion's {split} rows in {source} changed since it was trained ({detail}); retraining needs "
                "the exact rows it was trained and tested on: restore that file, or train a new champion by hand")

    def _read(self, source: str, media_root: str | None = None) -> pd.DataFrame:
        """``source`` read as the champion read it; ``media_root``: the absolute data.media_root its
        training recorded (the config's may be relative to another working directory)."""
        from loopml.data.read import read_table

        data = self.champion.config.data
        if media_root:
            data = data.model_copy(update={"media_root": media_root})
        key = (source, data.media_root)
        if key not in self._files:
            self._files[key] = read_table(source, data).reset_index(drop=True)
        return self._files[key]

    def _feedback_part(self, split: str, part: dict) -> pd.DataFrame:
        if self._feedback is None:
            self._feedback = self.store.list_feedback(self.name)
        wanted = [int(i) for i in part["feedback"]]
        chosen = set(wanted)  # one part was deduplicated when it was made: no input repeats inside it
        rows, why = usable_feedback([f for f in self._feedback if int(f["id"]) in chosen], self.champion,
                                    media_root=self.media_root)
        missing = len(wanted) - len(rows)
        if missing and len(self._feedback_media_reasons(why)) == len(why) and sum(why.values()) == missing:
            self.lost.update({f"learned earlier, {reason}": n for reason, n in why.items()})
            self.lost_ids |= chosen - {int(i) for i in rows["_feedback_id"]}
        elif missing:
            media = (", or their image/audio files are not in the media root: give the server's --media-root"
                     if media_columns(self.champion) else "")
            raise LoopmlError(f"{len(wanted) - len(rows)} of the {len(wanted)} feedback rows in the champion's {split} "
                              f"split are gone from the store (or lost their inputs{media}); cannot rebuild its "
                              "training data")
        self.found += len(rows)
        rows = rows.drop(columns=["_feedback_id", "_at"])
        return pd.concat([rows] * int(part.get("weight", 1)), ignore_index=True)  # one base: attrs kept


def without_feedback(record: dict, ids: set[int]) -> dict:
    """``record`` with the feedback ``ids`` taken out of its parts (parts left empty dropped)."""
    if not ids:
        return record
    out = {}
    for split, parts in record.items():
        if not isinstance(parts, list):
            out[split] = parts
            continue
        kept = []
        for part in parts:
            if "feedback" in part:
                part = {**part, "feedback": [i for i in part["feedback"] if int(i) not in ids]}
                if not part["feedback"]:
                    continue
            kept.append(part)
        out[split] = kept
    return out


def feedback_part(rows: pd.DataFrame, weight: int) -> dict:
    return {"feedback": [int(i) for i in rows["_feedback_id"]], "weight": int(weight)}


def _legacy_splits(champion, training_data: str | None) -> tuple[dict[str, pd.DataFrame], dict]:
    """A model directory from before split records: split its training file again as it was split."""
    from loopml.data.read import read_table
    from loopml.data.split import split_frame

    data_path = training_data or champion.info.get("data_source")
    if not data_path and (champion.info.get("training") or {}).get("federated"):
        raise LoopmlError("the champion was trained federated: its training rows stay with the clients; run "
                          "`loopml federate` again, or set data.training_data in the policy to a table you hold")
    if not data_path or not Path(data_path).is_file():
        raise LoopmlError(f"cannot find the champion's training data ({data_path}); set data.training_data in the policy")
    cfg, target = champion.config, champion.preprocessor.target.column
    split = cfg.split
    if split.column == RETRAIN_SPLIT_COLUMN:  # an old retrained model: its first ancestor's random split
        split = split.model_copy(update={"column": None})
    df = read_table(data_path, cfg.data).reset_index(drop=True)
    df = df[df[target].notna()]
    frames, _ = split_frame(df, target, split, champion.preprocessor.target.kind != "number")
    columns = model_columns(champion)
    record = {split: [{"role": "data", "source": str(Path(data_path).resolve()), "rows": encode_rows(part.index.tolist()),
                       "fingerprint": rows_fingerprint(part, columns)}] for split, part in frames.items()}
    return frames, record
