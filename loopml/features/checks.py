"""The feature-type contract, checked for every registered type (like scikit-learn's ``check_estimator``).

``check_feature_type(name, folder)`` runs every check on the sample rows of ``SAMPLES[name]``; a
type registered in ``FEATURE_TYPES`` without a sample generator fails (``register_sample`` adds
one for a plugin type). The contract, for the same rows of one column:

1. sources agree: read from CSV, Parquet, JSON lines, DataFrames of any dtype and JSON records
   (through the server's own request model and frame), they fit the same state and give identical tensors;
2. the fitted state is plain JSON and a saved-and-loaded preprocessor transforms identically;
3. a row transformed alone equals the same row inside a batch;
4. missing and unseen values behave as documented (``Sample.expect_missing``/``expect_unseen``);
5. ``fit`` starts afresh: fitting on A, then B equals fitting on B only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from loopml.errors import LoopmlError
from loopml.features.base import FEATURE_TYPES, FeatureType

COLUMN = "x"


@dataclass
class Sample:
    """One column's rows in every form a source may hand them over."""

    case: str
    #: the type's settings (the rest are its defaults)
    config: dict
    #: the same rows as DataFrame columns of different dtypes; the first is the reference
    frames: dict[str, pd.Series]
    #: the same rows as a JSON client may send them (None = null)
    json_forms: dict[str, list]
    #: a different training column, for the fit-resets check
    other: pd.Series
    #: values that must read as missing, and values training never saw
    missing: list = field(default_factory=lambda: [None, float("nan"), pd.NA, "", "  "])
    unseen: list = field(default_factory=list)
    #: asserts the tensor of the ``missing`` (resp. ``unseen``) values is the documented one;
    #: None = such a value is an error (LoopmlError), as for a missing media path
    expect_missing: Callable[[FeatureType, torch.Tensor], None] | None = None
    expect_unseen: Callable[[FeatureType, torch.Tensor], None] | None = None
    #: folder media paths are relative to (image, audio)
    media_dir: Path | None = None


SampleGenerator = Callable[[Path], list[Sample]]
SAMPLES: dict[str, SampleGenerator] = {}
#: types that never reach a model (their column is ignored): checked for that, not for tensors
IGNORED_TYPES = {"skip"}


def register_sample(type_name: str) -> Callable[[SampleGenerator], SampleGenerator]:
    def add(generator: SampleGenerator) -> SampleGenerator:
        SAMPLES[type_name] = generator
        return generator

    return add


# -- running ------------------------------------------------------------------------------------
def check_feature_type(type_name: str, folder: Path) -> list[str]:
    """Run every check for one registered type; returns the cases checked. Raises AssertionError."""
    from loopml.features import samples  # noqa: F401  (registers the built-in types' samples)

    FEATURE_TYPES.get(type_name)  # an unknown name is a LoopmlError naming the registered ones
    if type_name not in SAMPLES:
        raise AssertionError(f"feature type '{type_name}' has no sample-data generator: "
                             "add one with loopml.features.checks.register_sample")
    cases = SAMPLES[type_name](folder)
    assert cases, f"the sample generator of '{type_name}' gave no cases"
    for sample in cases:
        where = f"{type_name}/{sample.case}"
        if type_name in IGNORED_TYPES:
            check_ignored(type_name, sample, where)
            continue
        check_sources_agree(type_name, sample, folder, where)
        check_state_round_trip(type_name, sample, where)
        check_row_alone(type_name, sample, where)
        check_missing_and_unseen(type_name, sample, where)
        check_fit_resets(type_name, sample, where)
    return [s.case for s in cases]


def new_feature(type_name: str, sample: Sample, state: dict | None = None) -> FeatureType:
    from loopml.config import feature_config

    return FEATURE_TYPES.get(type_name)(COLUMN, feature_config(type_name, sample.config), state)


def _column(values: pd.Series | list, sample: Sample) -> pd.Series:
    col = values.copy() if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    col = col.reset_index(drop=True).rename(COLUMN)
    if sample.media_dir is not None:
        col.attrs["base_dir"] = str(sample.media_dir)
    return col


def state_json(feature: FeatureType) -> str:
    try:
        return json.dumps(feature.state, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{feature.column}: fitted state is not strict JSON ({e})") from None


def _same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    assert torch.equal(a, b), f"{what}: tensors differ\n{a}\nvs\n{b}"


# -- sources ------------------------------------------------------------------------------------
def source_columns(type_name: str, sample: Sample, folder: Path) -> dict[str, pd.Series]:
    """The sample's rows as each source delivers them to the features."""
    from loopml.data.read import DataConfig, read_table

    out: dict[str, pd.Series] = {}
    media = {"media_root": str(sample.media_dir)} if sample.media_dir else {}
    files = sample.media_dir or folder
    for dtype, series in sample.frames.items():
        frame = pd.DataFrame({COLUMN: series.reset_index(drop=True)})
        out[f"DataFrame[{dtype}]"] = read_table(frame, DataConfig(**media))[COLUMN]
        csv_path, parquet_path = files / f"_check_{dtype}.csv", files / f"_check_{dtype}.parquet"
        frame.to_csv(csv_path, index=False)
        out[f"CSV[{dtype}]"] = read_table(csv_path)[COLUMN]
        frame.to_parquet(parquet_path)
        out[f"Parquet[{dtype}]"] = read_table(parquet_path)[COLUMN]
    for form, values in sample.json_forms.items():
        payload = json.loads(json.dumps([{COLUMN: v} for v in values]))
        out[f"records[{form}]"] = read_table(payload, DataConfig(**media))[COLUMN]
        jsonl_path = files / f"_check_{form.replace(' ', '_')}.jsonl"
        jsonl_path.write_text("".join(json.dumps(row) + "\n" for row in payload))
        out[f"JSONL[{form}]"] = read_table(jsonl_path)[COLUMN]
        out[f"served JSON[{form}]"] = served_frame(type_name, payload, sample.media_dir)[COLUMN]
    return out


def served_frame(type_name: str, payload: list[dict], media_dir: Path | None = None) -> pd.DataFrame:
    """JSON records as the server turns them into a frame: its request model, then its runner's frame."""
    from loopml.features.pipeline import records_frame
    from loopml.serve.schema import input_model, request_records

    request_model = input_model("check", {COLUMN: type_name}, [])
    records = request_records([request_model.model_validate(row) for row in payload])
    frame = records_frame(records, [COLUMN])
    if media_dir is not None:
        frame.attrs["base_dir"] = str(media_dir)
    return frame


def check_sources_agree(type_name: str, sample: Sample, folder: Path, where: str) -> None:
    columns = source_columns(type_name, sample, folder)
    reference_name = next(iter(columns))
    reference = new_feature(type_name, sample)
    reference.fit(_column(columns[reference_name], sample))
    expected_state = state_json(reference)
    expected = reference.transform(_column(columns[reference_name], sample))
    for name, col in columns.items():
        col = _column(col, sample)
        fitted = new_feature(type_name, sample)
        fitted.fit(col)
        assert state_json(fitted) == expected_state, (
            f"{where}: fitting on {name} learns another state than on {reference_name}:\n"
            f"{state_json(fitted)}\nvs\n{expected_state}")
        _same(reference.transform(col), expected, f"{where}: {name} vs {reference_name}")


# -- state, rows, missing, refit ----------------------------------------------------------------
def check_state_round_trip(type_name: str, sample: Sample, where: str) -> None:
    from loopml.features.pipeline import Preprocessor
    from loopml.features.target import Target

    col = _column(next(iter(sample.frames.values())), sample)
    feature = new_feature(type_name, sample)
    feature.fit(col)
    saved = json.dumps(Preprocessor({COLUMN: feature}, Target("y", "number", {"mean": 0.0, "std": 1.0})).to_dict(),
                       allow_nan=False)
    loaded = Preprocessor.from_dict(json.loads(saved)).features[COLUMN]
    assert state_json(loaded) == state_json(feature), f"{where}: the state changed on a JSON round trip"
    _same(loaded.transform(col), feature.transform(col), f"{where}: transform after a JSON round trip")
    assert loaded.encoder_inputs() == feature.encoder_inputs(), f"{where}: encoder inputs changed on a round trip"


def check_row_alone(type_name: str, sample: Sample, where: str) -> None:
    col = _column(next(iter(sample.frames.values())), sample)
    feature = new_feature(type_name, sample)
    feature.fit(col)
    batch = feature.transform(col)
    payload = json.loads(json.dumps([{COLUMN: v} for v in next(iter(sample.json_forms.values()))]))
    served_batch = feature.transform(served_frame(type_name, payload, sample.media_dir)[COLUMN])
    _same(served_batch, batch, f"{where}: a served batch vs the DataFrame")
    for i in range(len(col)):
        _same(feature.transform(col.iloc[[i]]), batch[i : i + 1], f"{where}: row {i} alone vs in the batch")
        alone = served_frame(type_name, payload[i : i + 1], sample.media_dir)[COLUMN]
        _same(feature.transform(alone), batch[i : i + 1], f"{where}: served row {i} alone vs in the batch")


def check_missing_and_unseen(type_name: str, sample: Sample, where: str) -> None:
    col = _column(next(iter(sample.frames.values())), sample)
    feature = new_feature(type_name, sample)
    feature.fit(col)
    for label, values, expect in (("missing", sample.missing, sample.expect_missing),
                                  ("unseen", sample.unseen, sample.expect_unseen)):
        if not values:
            continue
        if expect is None:
            for value in values:
                try:
                    feature.transform(_column([value], sample))
                except LoopmlError:
                    continue
                raise AssertionError(f"{where}: {label} value {value!r} should be an error")
            continue
        tensor = feature.transform(_column(values, sample))
        if label == "missing" and getattr(feature.config, "missing", None) == "drop":
            dropped = feature.missing_rows(_column(values, sample))
            assert dropped.all(), f"{where}: missing: drop keeps {values[int((~dropped).argmax())]!r}"
        for i in range(1, len(values) if label == "missing" else 1):  # every spelling of missing is one value
            _same(tensor[i : i + 1], tensor[:1], f"{where}: {label} {values[i]!r} vs {values[0]!r}")
        expect(feature, tensor)


def check_fit_resets(type_name: str, sample: Sample, where: str) -> None:
    first, second = _column(next(iter(sample.frames.values())), sample), _column(sample.other, sample)
    twice = new_feature(type_name, sample)
    twice.fit(first)
    twice.fit(second)
    once = new_feature(type_name, sample)
    once.fit(second)
    assert state_json(twice) == state_json(once), f"{where}: fit kept state from an earlier fit"
    _same(twice.transform(second), once.transform(second), f"{where}: transform after a second fit")
    _same(twice.transform(first), once.transform(first), f"{where}: earlier data after a second fit")


def check_ignored(type_name: str, sample: Sample, where: str) -> None:
    """A column of an ignored type: not a model input; the server accepts and drops any value."""
    from loopml.config import load_config
    from loopml.schema import build_schema
    from loopml.serve.schema import input_model

    col = next(iter(sample.frames.values())).reset_index(drop=True)
    frame = pd.DataFrame({COLUMN: col, "y": [i % 2 for i in range(len(col))], "z": range(len(col))})
    config = load_config({"target": {"column": "y"}, "features": {COLUMN: {"type": type_name, **sample.config}}})
    schema = build_schema(frame, config)
    assert COLUMN not in [c.name for c in schema.inputs], f"{where}: an ignored column became a model input"
    request_model = input_model("check", {"z": "number"}, [COLUMN])
    for values in sample.json_forms.values():
        for v in values:
            request_model.model_validate({COLUMN: v, "z": 1.0})
