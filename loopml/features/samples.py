"""Sample rows for the contract checks of every built-in feature type (see loopml.features.checks).

Each generator gives the same rows in the dtypes a DataFrame, CSV or Parquet may hold them and in
the forms a JSON client may send them, with the documented outcome for missing and unseen values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from loopml.features.base import FeatureType
from loopml.features.category import MISSING_TOKEN, UNKNOWN
from loopml.features.checks import Sample, register_sample


def _series(values: list, dtype: str) -> pd.Series:
    return pd.Series(values, dtype=dtype)


def _strings(values: list, pad: str = "") -> list:
    return [None if v is None else f"{pad}{v}{pad}" for v in values]


# -- category -----------------------------------------------------------------------------------
def _expect_category_missing(feature: FeatureType, tensor: torch.Tensor) -> None:
    vocab = feature.state["vocab"]
    token = feature.state["mode"] if feature.config.missing == "mode" else MISSING_TOKEN
    expected = vocab.index(token) + 1 if token in vocab else UNKNOWN
    assert (tensor == expected).all(), f"missing values should be id {expected} ({token}), got {tensor}"


def _expect_category_unknown(feature: FeatureType, tensor: torch.Tensor) -> None:
    assert (tensor == UNKNOWN).all(), f"unseen values should be the unknown id {UNKNOWN}, got {tensor}"


@register_sample("category")
def category_samples(folder: Path) -> list[Sample]:
    ints = [1, 2, 3, 1, 2, 3, None, 1, 2, 3, None, 2]
    colours = ["red", "green", "blue", "red", None, "green", "blue", "red", "green", None]
    flags = [True, False, True, None, False, True, False, None, True, False]
    common = {"expect_missing": _expect_category_missing, "expect_unseen": _expect_category_unknown}
    return [
        Sample(
            "integers with gaps", {},
            frames={"float64": _series(ints, "float64"), "Int64": _series(ints, "Int64"),
                    "object": _series(ints, object), "category": _series(ints, "category"),
                    "string": _series(_strings(ints), "string")},
            json_forms={"ints": ints, "floats": [None if v is None else float(v) for v in ints],
                        "strings": _strings(ints), "float strings": [None if v is None else f"{v}.0" for v in ints]},
            other=_series([7, 8, 7, 8, 9, 9], "int64"), unseen=[4, 4.5, "4", "zebra", False], **common),
        Sample(
            "strings with gaps", {"min_frequency": 1},
            frames={"object": _series(colours, object), "string": _series(colours, "string"),
                    "category": _series(colours, "category")},
            json_forms={"strings": colours, "padded strings": _strings(colours, " ")},
            other=_series(["a", "b", "a"], object), unseen=["purple", 3, "Red"], **common),
        Sample(
            "strings, missing: mode", {"missing": "mode"},
            frames={"object": _series(colours, object), "string": _series(colours, "string")},
            json_forms={"strings": colours}, other=_series(["a", "b", "a", None], object), unseen=["purple"], **common),
        Sample(
            "booleans with gaps", {},
            frames={"object": _series(flags, object), "boolean": _series(flags, "boolean"),
                    "category": _series(flags, "category")},
            json_forms={"bools": flags, "strings": [None if v is None else str(v).lower() for v in flags],
                        "capitalised strings": _strings(flags)},
            other=_series(["x", "y", "x", "y"], object), unseen=["maybe", 2], **common),
    ]


# -- binary -------------------------------------------------------------------------------------
def _expect_binary_fill(feature: FeatureType, tensor: torch.Tensor) -> None:
    fill = float(feature.state["fill"])
    assert (tensor == fill).all(), f"missing and unseen values should be the fill value {fill}, got {tensor}"


@register_sample("binary")
def binary_samples(folder: Path) -> list[Sample]:
    bits = [0, 1, 1, 0, None, 1, 0, 1, 1, None]
    flags = [True, False, True, None, False, True, True]
    words = ["yes", "no", "no", None, "yes", "no"]
    common = {"expect_missing": _expect_binary_fill, "expect_unseen": _expect_binary_fill}
    return [
        Sample(
            "0/1 with gaps", {},
            frames={"float64": _series(bits, "float64"), "Int64": _series(bits, "Int64"),
                    "object": _series(bits, object), "string": _series(_strings(bits), "string"),
                    "category": _series(bits, "category")},
            json_forms={"ints": bits, "floats": [None if v is None else float(v) for v in bits],
                        "strings": _strings(bits), "bools": [None if v is None else bool(v) for v in bits]},
            other=_series([5, 6, 6], "int64"), unseen=[7, "maybe", 0.5], **common),
        Sample(
            "booleans with gaps", {"missing": "constant", "fill_value": 0.5},
            frames={"object": _series(flags, object), "boolean": _series(flags, "boolean")},
            json_forms={"bools": flags, "strings": _strings(flags),
                        "ints": [None if v is None else int(v) for v in flags]},
            other=_series(["a", "b", "b"], object), unseen=["maybe", 2], **common),
        Sample(
            "yes/no with gaps", {},
            frames={"object": _series(words, object), "string": _series(words, "string")},
            json_forms={"strings": words, "padded strings": _strings(words, " ")},
            other=_series(["t", "f", "f"], object), unseen=["perhaps"], **common),
        Sample(
            "0/1, missing: drop", {"missing": "drop"},
            frames={"float64": _series(bits, "float64"), "object": _series(bits, object)},
            json_forms={"ints": bits}, other=_series([1, 0, 0], "int64"), unseen=[7], **common),
    ]


# -- number -------------------------------------------------------------------------------------
def _expect_number_missing(feature: FeatureType, tensor: torch.Tensor) -> None:
    filled = feature.transform(pd.Series([feature.state["fill"]] * len(tensor), dtype="float64"))
    width = filled.shape[1] - (1 if feature.state["indicator"] else 0)
    assert torch.equal(tensor[:, :width], filled[:, :width]), "missing numbers should read as the fill value"
    if feature.state["indicator"]:
        assert (tensor[:, -1] == 1).all(), "missing numbers should set the was-missing input"


def _expect_number_unseen(feature: FeatureType, tensor: torch.Tensor) -> None:
    assert torch.isfinite(tensor).all(), "numbers outside the training range should give finite inputs"
    if feature.state["edges"]:
        bins = tensor[:, 1 : len(feature.state["edges"])]
        assert ((bins >= 0) & (bins <= 1)).all(), "bin inputs should stay within [0, 1]"


@register_sample("number")
def number_samples(folder: Path) -> list[Sample]:
    floats = [1.5, 2.0, -3.25, None, 10.0, 0.0, 7.75, None, 2.5, 4.0, 100.0, -1.0]
    ints = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    common = {"expect_missing": _expect_number_missing, "expect_unseen": _expect_number_unseen}
    return [
        Sample(
            "floats with gaps", {"bins": 4},
            frames={"float64": _series(floats, "float64"), "Float64": _series(floats, "Float64"),
                    "object": _series(floats, object)},
            json_forms={"floats": floats, "strings": [None if v is None else repr(v) for v in floats]},
            other=_series([10.0, 20.0, 30.0, None], "float64"), unseen=[1e6, -1e6], **common),
        Sample(
            "integers", {},
            frames={"int64": _series(ints, "int64"), "Int64": _series(ints, "Int64"), "object": _series(ints, object),
                    "float64": _series(ints, "float64")},
            json_forms={"ints": ints, "floats": [float(v) for v in ints]},
            other=_series([100, 200, 300], "int64"), unseen=[10**6, -(10**6)], **common),
    ]


# -- date ---------------------------------------------------------------------------------------
def _expect_date_missing(feature: FeatureType, tensor: torch.Tensor) -> None:
    assert (tensor[:, :-1] == 0).all() and (tensor[:, -1] == 1).all(), (
        f"a missing date should be all zeros with the was-missing flag set, got {tensor}")


def _expect_date_unseen(feature: FeatureType, tensor: torch.Tensor) -> None:
    assert torch.isfinite(tensor).all(), "dates outside the training range should give finite inputs"
    assert (tensor[:, -1] == 0).all(), "a date outside the training range is not missing"
    assert (tensor[:, 2:-1].abs() <= 1).all(), "cyclic inputs should stay within [-1, 1]"


def _datetimes(values: list, dtype: str) -> pd.Series:
    return pd.to_datetime(pd.Series(values), format="ISO8601").astype(dtype)


@register_sample("date")
def date_samples(folder: Path) -> list[Sample]:
    days = ["2024-03-05", "2023-12-31", None, "2024-02-29", "1999-01-01", "2024-03-05", None, "2030-07-14"]
    naive = ["2024-03-05 12:30:00", "2024-03-05 08:15:00", "2023-01-01 00:00:00", None, "2024-11-30 23:59:59.250000",
             "1970-01-01 00:00:00"]
    zoned = ["2024-03-05T12:30:00+02:00", "2024-03-05T10:30:00Z", None, "2023-11-26T23:59:59.5-05:00",
             "2024-06-30T00:00:00+00:00", "2024-12-31T22:00:00-0130"]
    extremes = ["0001-01-01", "9999-12-31", "1969-12-31T23:59:59.999999", None, "1900-02-28T06:00"]
    common = {"expect_missing": _expect_date_missing, "expect_unseen": _expect_date_unseen}
    utc = pd.to_datetime(pd.Series(zoned), utc=True, format="ISO8601").astype("datetime64[ns, UTC]")
    return [
        Sample(
            "dates with gaps", {},
            frames={"object": _series(days, object), "string": _series(days, "string"),
                    "datetime64[ns]": _datetimes(days, "datetime64[ns]"),
                    "datetime64[s]": _datetimes(days, "datetime64[s]"),
                    "dates": _series([None if d is None else pd.Timestamp(d).date() for d in days], object)},
            json_forms={"strings": days, "padded strings": _strings(days, " "),
                        "midnight timestamps": [None if d is None else f"{d}T00:00:00" for d in days]},
            other=_series(["2010-05-05", "2011-06-06", None], object),
            unseen=["2100-01-01", "1850-06-15", "2024-03-05T12:00:00"], **common),
        Sample(
            "naive timestamps", {},
            frames={"object": _series(naive, object), "datetime64[ns]": _datetimes(naive, "datetime64[ns]"),
                    "Timestamps": _series([None if v is None else pd.Timestamp(v) for v in naive], object)},
            json_forms={"strings": naive, "T separator": [None if v is None else v.replace(" ", "T") for v in naive]},
            other=_series(["2010-05-05T01:02:03", "2010-05-06"], object),
            unseen=["2100-01-01T05:00:00", "1900-01-01"], **common),
        Sample(
            "timestamps with time zones", {},
            frames={"object": _series(zoned, object), "datetime64[ns, UTC]": utc,
                    "datetime64[ns, Kolkata]": utc.dt.tz_convert("Asia/Kolkata")},
            json_forms={"strings": zoned,
                        "UTC strings": [None if pd.isna(v) else v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for v in utc]},
            other=_series(["2010-05-05T01:02:03+05:00", "2010-05-06T00:00:00Z"], object),
            unseen=["2100-01-01T05:00:00+14:00"], **common),
        Sample(
            "far dates, missing: drop", {"missing": "drop"},
            frames={"object": _series(extremes, object), "string": _series(extremes, "string")},
            json_forms={"strings": extremes}, other=_series(["2010-05-05", "2011-06-06"], object),
            unseen=["2024-03-05"], **common),
    ]


# -- text ---------------------------------------------------------------------------------------
def _expect_text_empty(feature: FeatureType, tensor: torch.Tensor) -> None:
    assert (tensor == 0).all(), f"a missing text should be all padding (id 0), got {tensor}"


def _expect_text_unknown(feature: FeatureType, tensor: torch.Tensor) -> None:
    assert (tensor[:, :2] == 1).all() and (tensor[:, 2:] == 0).all(), (
        f"unseen words should be the unknown id 1, then padding; got {tensor}")


def _expect_tfidf_nothing(feature: FeatureType, tensor: torch.Tensor) -> None:
    assert tensor.dtype == torch.float32 and tuple(tensor.shape[1:]) == (2, feature.state["max_length"]), (
        f"a tfidf text should be [N, 2, max_length] float32 (term ids over weights), got {tensor.dtype}{tuple(tensor.shape)}")
    assert (tensor == 0).all(), f"a text with no known word or char n-gram should be all padding, got {tensor}"


@register_sample("text")
def text_samples(folder: Path) -> list[Sample]:
    texts = ["the cat sat on the mat", "a dog ran", None, "The cat ran, fast!", "dogs and cats", "",
             "on the mat a cat", "ran ran ran"]
    codes = [12, 7, None, 12, 3, 7, 40]  # a text column a CSV reader sees as numbers (floats, for the gap)
    common = {"expect_missing": _expect_text_empty, "expect_unseen": _expect_text_unknown}
    return [
        Sample(
            "sentences with gaps", {},
            frames={"object": _series(texts, object), "string": _series(texts, "string")},
            json_forms={"strings": texts},
            other=_series(["x y z", "y z"], object), unseen=["zebra quokka", "quokka zebra"], **common),
        Sample(
            "numbers as text", {},
            frames={"float64": _series(codes, "float64"), "object": _series(codes, object),
                    "string": _series(_strings(codes), "string")},
            json_forms={"strings": _strings(codes)},
            other=_series(["x y z", "y z"], object), unseen=["zebra quokka"], **common),
        # tokenizer: tfidf: (term id, weight) pairs of word 1-2-grams and char 2-5-grams; the training texts hold
        # no q, z, j or x, so the unseen texts share no term with them
        Sample(
            "tfidf sentences with gaps", {"tokenizer": "tfidf"},
            frames={"object": _series(texts, object), "string": _series(texts, "string")},
            json_forms={"strings": texts, "padded strings": _strings(texts, " ")},
            other=_series(["x y z", "y z x", "z"], object), unseen=["zzqq jqxj", "qq\tzz  jj"],
            expect_missing=_expect_tfidf_nothing, expect_unseen=_expect_tfidf_nothing),
        Sample(
            "tfidf numbers as text", {"tokenizer": "tfidf", "max_length": 4},
            frames={"float64": _series(codes, "float64"), "object": _series(codes, object),
                    "string": _series(_strings(codes), "string")},
            json_forms={"strings": _strings(codes)},
            other=_series(["x y z", "y z"], object), unseen=["zebra quokka"],
            expect_missing=_expect_tfidf_nothing, expect_unseen=_expect_tfidf_nothing),
    ]


# -- media --------------------------------------------------------------------------------------
def _expect_image_size(feature: FeatureType, tensor: torch.Tensor) -> None:
    s = feature.state
    assert tuple(tensor.shape[1:]) == (s["channels"], *s["size"]), "an unseen image should be resized to the state's size"


@register_sample("image")
def image_samples(folder: Path) -> list[Sample]:
    from PIL import Image

    media = folder / "images"
    media.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def image(name: str, size: tuple[int, int], mode: str = "RGB") -> str:
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(media / name)
        return name

    paths = [image(f"a{i}.png", (6, 5)) for i in range(4)] + [image("grey.png", (6, 5), "L"), image("big.png", (8, 8))]
    others = [image(f"b{i}.png", (4, 4)) for i in range(3)]
    unseen = [image("new.png", (9, 3))]
    return [Sample(
        "png files", {},
        frames={"object": _series(paths, object), "string": _series(paths, "string")},
        json_forms={"strings": paths}, other=_series(others, object),
        missing=[None, float("nan"), "", "  "], unseen=unseen, expect_missing=None,
        expect_unseen=_expect_image_size, media_dir=media)]


def _expect_audio_length(feature: FeatureType, tensor: torch.Tensor) -> None:
    assert tuple(tensor.shape[1:]) == (feature.state["samples"],), "an unseen clip should be cut to the clip length"


@register_sample("audio")
def audio_samples(folder: Path) -> list[Sample]:
    import soundfile as sf

    media = folder / "audio"
    media.mkdir(parents=True, exist_ok=True)

    def clip(name: str, hz: float, seconds: float, rate: int = 8000, channels: int = 1) -> str:
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.5 * np.sin(2 * np.pi * hz * t)
        sf.write(media / name, np.stack([wave] * channels, axis=1) if channels > 1 else wave, rate)
        return name

    paths = [clip("low.wav", 220, 0.1), clip("high.wav", 880, 0.05), clip("stereo.wav", 440, 0.12, channels=2),
             clip("fast.wav", 330, 0.1, rate=16000)]
    others = [clip("other1.wav", 100, 0.1), clip("other2.wav", 1000, 0.1)]
    return [Sample(
        "wav files", {"sample_rate": 8000, "duration": 0.1, "n_fft": 128, "n_mels": 8},
        frames={"object": _series(paths, object), "string": _series(paths, "string")},
        json_forms={"strings": paths}, other=_series(others, object),
        missing=[None, float("nan"), "", "  "], unseen=[clip("new.wav", 500, 0.3, rate=11025)],
        expect_missing=None, expect_unseen=_expect_audio_length, media_dir=media)]


# -- ignored ------------------------------------------------------------------------------------
@register_sample("skip")
def skip_samples(folder: Path) -> list[Sample]:
    ids = [101, 102, 103, 104]
    return [Sample("row ids", {}, frames={"int64": _series(ids, "int64")},
                   json_forms={"ints": ids, "strings": _strings(ids), "anything": [None, 1.5, True, "x"]},
                   other=_series(ids, "int64"))]
