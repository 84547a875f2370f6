"""What the recipes (train/recipes.py) look at: the data as inferred, and the machine it trains on.

The probe reads the table before preparation (audio settings shape the cached tensors, so they must
be known before the cache key), infers the column types as preparation will, and samples a few
image headers / audio headers — never decodes a whole data set.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import LoopmlError

#: files larger than this are not read twice: tables that big are tabular, and the recipes leave those alone
PROBE_MAX_BYTES = 64 * 2**20
#: image / audio files whose headers are read (evenly spread over the rows); audio headers are cheaper, and
#: the 99% duration needs more of them
SAMPLE_IMAGES = 400
SAMPLE_CLIPS = 2_000
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P"}


@dataclass
class ImageInfo:
    #: the most common [height, width] among the sampled images (or the configured size)
    size: tuple[int, int]
    #: 1 when every sampled image is grey (or the configured channels)
    channels: int


@dataclass
class AudioInfo:
    #: the most common native sample rate (Hz) among the sampled clips
    rate: int
    #: the duration (s) that covers 99% of the sampled clips
    duration_p99: float
    clips: int


@dataclass
class DataProfile:
    rows: int
    #: rows the training split will get (an estimate from the split settings)
    train_rows: int
    #: binary, category or number
    task: str
    #: classes of a classification target (0 for a number)
    classes: int
    #: input column -> inferred (or configured) type
    columns: dict[str, str]
    images: dict[str, ImageInfo] = field(default_factory=dict)
    audio: dict[str, AudioInfo] = field(default_factory=dict)

    def of_type(self, kind: str) -> list[str]:
        return [c for c, t in self.columns.items() if t == kind]


@dataclass
class Machine:
    #: cpu or cuda (mps counts as cpu here: no fast bf16 autocast there)
    device: str
    #: bf16 autocast is fast here (AMX / AVX512-BF16 CPU, or a GPU with bf16)
    fast_bf16: bool
    #: why, for the printed block (e.g. "AMX")
    why: str


def detect_machine(device_setting: str = "auto", cpuinfo: str = "/proc/cpuinfo") -> Machine:
    import torch

    from loopml.train.device import resolve_device

    device = resolve_device(device_setting)
    if device.type == "cuda":
        fast = bool(torch.cuda.is_bf16_supported())
        return Machine("cuda", fast, torch.cuda.get_device_name(device) if fast else "GPU without bf16")
    if device.type != "cpu":
        return Machine(device.type, False, device.type)
    try:
        flags = set(Path(cpuinfo).read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        flags = set()
    if "amx_bf16" in flags:
        return Machine("cpu", True, "AMX")
    if "avx512_bf16" in flags:
        return Machine("cpu", True, "AVX512-BF16")
    return Machine("cpu", False, f"CPU {torch.backends.cpu.get_cpu_capability()} without bf16 units")


def probe(config: Any, data: Any, validation: Any = None, test: Any = None) -> DataProfile | None:
    """The data as preparation will see it; None when it cannot be read cheaply (or not at all:
    preparation then reports the problem in its usual place)."""
    from loopml.data.read import read_table
    from loopml.schema import build_schema

    if not _cheap(data):
        return None
    split = config.split
    try:
        frame = read_table(data, config.data)
        if not _has_media(frame, config):  # tabular/text: skip the type inference (most of the probe's cost)
            return None
        schema = build_schema(frame, config, ignore=(split.column,) if split.column else ())
    except LoopmlError:
        return None
    target = frame[schema.target]
    labelled = frame[target.notna()]
    columns = {c.name: c.type for c in schema.inputs}
    classes = 0 if schema.target_kind == "number" else int(labelled[schema.target].nunique())
    profile = DataProfile(len(labelled), _train_rows(labelled, split, validation, test), schema.target_kind,
                          classes, columns)
    base = Path(frame.attrs["base_dir"]) if frame.attrs.get("base_dir") else None
    for col in profile.of_type("image"):
        profile.images[col] = _image_info(labelled[col], base, _feature(config, col, "image"))
    for col in profile.of_type("audio"):
        info = _audio_info(labelled[col], base)
        if info is not None:
            profile.audio[col] = info
    return profile


def _cheap(source: Any) -> bool:
    if isinstance(source, (pd.DataFrame, list, dict)):
        return True
    try:
        path = Path(source)
        return path.is_dir() or (path.is_file() and path.stat().st_size <= PROBE_MAX_BYTES)
    except (TypeError, OSError):
        return False


def _has_media(frame: pd.DataFrame, config: Any) -> bool:
    """Whether a column is configured as, or may be inferred as, image or audio (arrays, media file names)."""
    from loopml.data.media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, extension_ratio

    configured = {name for name, f in config.features.items() if f.type in ("image", "audio")}
    for name in frame.columns:
        if name in configured:
            return True
        if name == config.target.column or name in config.features or frame[name].dtype.kind in "biufcmM":
            continue
        first = frame[name].dropna().head(1).tolist()
        if first and isinstance(first[0], (np.ndarray, list)):
            return True
        if extension_ratio(frame[name], IMAGE_EXTENSIONS | AUDIO_EXTENSIONS) >= 0.9:
            return True
    return False


def _train_rows(frame: pd.DataFrame, split: Any, validation: Any, test: Any) -> int:
    if split.column and split.column in frame:
        from loopml.data.split import split_names

        names = split_names(frame[split.column])
        train = int((names == "train").sum())
        has_validation = bool((names == "validation").any()) or validation is not None
        return max(1, round(train * (1.0 if has_validation else 1.0 - split.validation)))
    share = 1.0 - (0.0 if validation is not None else split.validation) - (0.0 if test is not None else split.test)
    return max(1, round(len(frame) * share))


def _feature(config: Any, column: str, kind: str) -> Any:
    from loopml.config import resolve_feature

    return resolve_feature(config, kind, config.features.get(column))


def _spread(values: pd.Series, count: int) -> list:
    if len(values) <= count:
        return values.tolist()
    index = np.linspace(0, len(values) - 1, count).round().astype(int)
    return values.iloc[index].tolist()


def _image_info(column: pd.Series, base: Path | None, feature: Any) -> ImageInfo:
    from PIL import Image, UnidentifiedImageError

    from loopml.data.media import resolve

    sizes: Counter = Counter()
    grey = True
    for value in _spread(column.dropna(), SAMPLE_IMAGES):
        if isinstance(value, (np.ndarray, list)):
            array = np.asarray(value)
            sizes[tuple(array.shape[:2])] += 1
            grey = grey and (array.ndim == 2 or array.shape[-1] == 1)
            continue
        if not isinstance(value, str):
            continue
        try:
            with Image.open(resolve(value, base)) as image:  # the header only: nothing is decoded
                sizes[(image.height, image.width)] += 1
                grey = grey and image.mode in GREY_MODES and (image.mode != "P" or _grey_palette(image))
        except (LoopmlError, OSError, UnidentifiedImageError, ValueError):
            continue  # preparation names unreadable files
    size = tuple(feature.size) if feature.size else (sizes.most_common(1)[0][0] if sizes else (32, 32))
    channels = feature.channels if feature.channels != "auto" else (1 if grey and sizes else 3)
    return ImageInfo((int(size[0]), int(size[1])), int(channels))


def _grey_palette(image: Any) -> bool:
    palette = image.getpalette() or []
    triples = [palette[i : i + 3] for i in range(0, len(palette) - 2, 3)]
    return all(r == g == b for r, g, b in triples)


def _audio_info(column: pd.Series, base: Path | None) -> AudioInfo | None:
    import soundfile as sf

    from loopml.data.media import resolve

    rates: Counter = Counter()
    durations = []
    for value in _spread(column.dropna(), SAMPLE_CLIPS):
        if not isinstance(value, str):
            continue
        try:
            info = sf.info(str(resolve(value, base)))
        except (LoopmlError, OSError, RuntimeError, ValueError, sf.LibsndfileError):
            continue
        if info.samplerate > 0:
            rates[int(info.samplerate)] += 1
            durations.append(info.frames / info.samplerate)
    if not durations:
        return None
    return AudioInfo(rates.most_common(1)[0][0], float(np.quantile(durations, 0.99)), len(durations))
