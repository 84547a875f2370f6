"""Media columns (image and audio files): path resolution, confinement and folder-per-class tables."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from loopml.errors import LoopmlError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg"}
MEDIA_KINDS = {"image": IMAGE_EXTENSIONS, "audio": AUDIO_EXTENSIONS}


def extension_ratio(column: pd.Series, extensions: set[str]) -> float:
    """Share of non-missing values that look like file names with one of ``extensions``."""
    values = column.dropna()
    if values.empty or not values.map(lambda v: isinstance(v, str)).all():
        return 0.0
    sample = values.iloc[:500]
    return float(sample.map(lambda v: os.path.splitext(v.strip())[1].lower() in extensions).mean())


def resolve(value: str, base_dir: Path | None) -> Path:
    """A media path from a data file, canonicalised and confined to the data file's folder.

    Relative paths are relative to the data file; absolute ones must still lie inside it, so a
    table (or a request) cannot make loopml read arbitrary files on the machine.
    """
    root = (base_dir or Path.cwd()).resolve()
    path = (root / str(value).strip()).resolve()
    if not path.is_relative_to(root):
        raise LoopmlError(f"media path {value!r} points outside the data folder {root}")
    return path


#: the one answer a request gets for a media path that is missing, not a file, absolute or outside the
#: media root: a client learns nothing about the server's disk beyond the files it may read
NOT_SERVED = "no such file in the server's media folder"


def served_path(value: object, root: Path) -> Path | None:
    """The file a request's media value names inside ``root`` (relative paths only, canonicalised,
    symlinks followed and still confined), or None when there is no such readable file."""
    if not isinstance(value, str) or "\x00" in value or not value.strip():
        return None
    text = value.strip()
    if Path(text).is_absolute() or text.startswith("~"):
        return None
    try:
        path = (root / text).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None
    except (OSError, RuntimeError, ValueError):  # name too long, symlink loop, ...: not a file we serve
        return None


def check_image_pixels(size: tuple[int, int], limit: int) -> None:
    """Refuse an image by its header: a few hundred bytes of PNG can declare gigapixels (a decompression bomb)."""
    width, height = size
    if width * height > limit:
        raise ValueError(f"{width}x{height} pixels declared, over the limit of {limit:,} (max_pixels)")


def folder_table(root: Path) -> pd.DataFrame:
    """``root/<class>/<file>`` -> a table with a path column (``image`` or ``audio``) and ``label``."""
    rows, kinds = [], set()
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_dir.rglob("*")):
            suffix = file.suffix.lower()
            kind = next((k for k, exts in MEDIA_KINDS.items() if suffix in exts), None)
            if kind is None or not file.is_file():
                continue
            kinds.add(kind)
            rows.append({"path": str(file.relative_to(root)), "label": class_dir.name})
    if not rows:
        raise LoopmlError(f"no image or audio files found in class folders under {root} (expected root/<class>/<file>)")
    if len(kinds) > 1:
        raise LoopmlError(f"{root} mixes images and audio; use one kind per folder layout")
    df = pd.DataFrame(rows).rename(columns={"path": kinds.pop()})
    df.attrs["base_dir"] = str(root)
    return df
