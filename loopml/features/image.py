"""Images: file paths (relative to the data file) or arrays, decoded with Pillow to uint8 [N, C, H, W].

The cached tensors stay uint8 (4x smaller than floats); scaling, per-channel normalisation and
training-only augmentation happen in the encoder, batch by batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from loopml.data.media import IMAGE_EXTENSIONS, check_image_pixels, extension_ratio, resolve
from loopml.errors import LoopmlError
from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


class AugmentConfig(StrictModel):
    """Training-only augmentation, applied per batch in the encoder; off at evaluation and predict."""

    #: pad by this many pixels, then crop back to size at a random offset
    crop_padding: int = Field(0, ge=0)
    flip: bool = False
    #: random rotation within +- this many degrees
    rotation: float = Field(0.0, ge=0, le=180)
    #: random brightness/contrast/saturation factors in [1 - x, 1 + x]
    color_jitter: float = Field(0.0, ge=0, le=1)
    #: side of a random square set to the mean (0 = off)
    cutout: int = Field(0, ge=0)


class ImageConfig(StrictModel):
    type: Literal["image"] = "image"
    #: [height, width]; None = the most common size among training images
    size: tuple[int, int] | None = None
    #: auto = 1 when every training image is grey, else 3
    channels: Literal["auto", 1, 3] = "auto"
    resize: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    #: a missing or undecodable image: error (naming the file) or skip the row in training
    on_error: Literal["error", "skip"] = "error"
    augment: AugmentConfig = AugmentConfig()
    #: larger images (by their declared width x height) are refused before decoding
    max_pixels: int = Field(50_000_000, ge=1)
    #: test-time augmentation: flip = at evaluation and predict the encoder averages its features over the
    #: image and its left-right mirror (twice the inference compute; training is unchanged)
    tta: Literal["none", "flip"] = "none"


def _is_array(value: object) -> bool:
    return isinstance(value, np.ndarray | list) and np.asarray(value).ndim in (2, 3)


class _Bad(Exception):
    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")


@FEATURE_TYPES.register("image")
class ImageFeature(FeatureType):
    Config = ImageConfig
    infer_priority = 40
    tensor_dtype = torch.uint8

    @classmethod
    def infer(cls, column: pd.Series, stats: dict) -> bool:
        if stats.get("array_ndim") in (2, 3):
            return True
        return extension_ratio(column, IMAGE_EXTENSIONS) >= 0.9

    # -- decoding ----------------------------------------------------------------------------
    def _open(self, value: object, base: Path | None) -> Image.Image:
        if _is_array(value):
            array = np.asarray(value)
            if array.dtype != np.uint8:
                array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
        if not isinstance(value, str) or not value.strip():
            raise _Bad(repr(value), "no image path")
        path = resolve(value, base)
        shown = value.strip()  # messages name the value as given, never the resolved (server) path
        try:
            image = Image.open(path)
            check_image_pixels(image.size, self.config.max_pixels)  # from the header, before decoding
            image.load()  # decode now: truncated files fail here, not later
            return image
        except FileNotFoundError:
            raise _Bad(shown, "file not found") from None
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
            reason = str(e).replace(f"'{path}'", "").replace(str(path), "").strip(" :") or type(e).__name__
            raise _Bad(shown, f"cannot decode image ({reason})") from None

    def _decode(self, column: pd.Series, size, channels) -> tuple[list[np.ndarray | None], list[str]]:
        base = Path(column.attrs["base_dir"]) if column.attrs.get("base_dir") else None
        mode = {1: "L", 3: "RGB"}.get(channels)
        resample = RESAMPLE[self.config.resize]

        def one(value):
            try:
                image = self._open(value, base)
            except _Bad as e:
                return None, str(e)
            if mode:
                image = image.convert(mode)
            if size and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), resample)
            return np.asarray(image), None

        with ThreadPoolExecutor(max_workers=4) as pool:  # Pillow releases the GIL while decoding
            results = list(pool.map(one, column.tolist()))
        return [r[0] for r in results], [r[1] for r in results if r[1]]

    def missing_rows(self, column: pd.Series) -> pd.Series:
        if self.config.on_error != "skip":
            return pd.Series(False, index=column.index)
        arrays, _ = self._decode(column, None, None)
        bad = pd.Series([a is None for a in arrays], index=column.index)
        self.skipped = int(bad.sum())
        return bad

    def fit(self, column: pd.Series) -> dict:
        cfg: ImageConfig = self.config
        images, errors = self._decode(column, None, None)
        self._raise(errors)
        size = list(cfg.size) if cfg.size else list(pd.Series([im.shape[:2] for im in images]).mode().iloc[0])
        grey = all(im.ndim == 2 or im.shape[-1] == 1 for im in images)
        channels = cfg.channels if cfg.channels != "auto" else (1 if grey else 3)
        self.state = {"size": size, "channels": channels}
        pixels = self.transform(column).float().div_(255.0)
        self.state["mean"] = pixels.mean(dim=(0, 2, 3)).tolist()
        self.state["std"] = pixels.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()
        return self.state

    def transform(self, column: pd.Series) -> torch.Tensor:
        s = self.state
        images, errors = self._decode(column, s["size"], s["channels"])
        self._raise(errors)
        batch = np.stack([im if im.ndim == 3 else im[:, :, None] for im in images])  # N, H, W, C
        return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))

    def _raise(self, errors: list[str]) -> None:
        if errors:
            more = f" (and {len(errors) - 1} more; on_error: skip drops them from training)" if len(errors) > 1 else ""
            raise LoopmlError(f"image column '{self.column}': {errors[0]}{more}")

    def encoder_inputs(self) -> dict:
        s = self.state
        return {"channels": s["channels"], "size": tuple(s["size"]), "mean": s["mean"], "std": s["std"],
                "augment": self.config.augment, "tta": self.config.tta}
