"""Data in, tensors out: read -> schema -> split -> fit preprocessing -> transform, cached on disk.

The cache key is (content fingerprints of the inputs, every config setting that shapes the
tensors); encoders and training settings are not part of it, so changing them reuses the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loopml.config import Config, resolve_feature
from loopml.data.read import Source, fingerprint, read_table
from loopml.data.split import SPLITS, split_frame
from loopml.data.validate import check_enough_rows, check_training_values
from loopml.errors import LoopmlError
from loopml.features.base import FEATURE_TYPES
from loopml.features.pipeline import Preprocessor
from loopml.features.target import Target
from loopml.schema import Schema, build_schema
from loopml.train.trainer import TensorData

CACHE_FORMAT = 2
#: target settings that act on training, not on the tensors
TRAINING_ONLY_TARGET_KEYS = {"class_weights", "sampling", "sampling_ratio", "synthesize", "threshold",
                             "threshold_metric"}


#: columns loopml adds itself (e.g. the split column of a retraining's data) start with this
RESERVED_PREFIX = "__loopml_"


def default_cache_dir() -> Path:
    return Path(os.environ.get("LOOPML_CACHE_DIR", ".loopml/cache"))


@dataclass
class Prepared:
    schema: Schema
    preprocessor: Preprocessor
    splits: dict[str, TensorData | None]
    report: dict
    fingerprint: str
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)  # raw rows per split (empty on a cache hit)
    rows: dict[str, list] = field(default_factory=dict)  # each split's row labels in the file it came from
    sources: dict[str, Source] = field(default_factory=dict)

    def raw(self, name: str, config: Config) -> pd.DataFrame | None:
        """The raw rows of a split, read again from its file after a cache hit."""
        if name in self.frames:
            return self.frames[name]
        if name not in self.rows or not self.sources:
            return None
        source = self.sources.get(name) if self.sources.get(name) is not None else self.sources["data"]
        self.frames[name] = _positional(read_table(source, config.data)).iloc[self.rows[name]]
        return self.frames[name]


def prepare(
    config: Config, data: Source, validation: Source | None = None, test: Source | None = None,
    cache_dir: Path | None = None,
) -> Prepared:
    start = time.perf_counter()
    sources = {"data": data, "validation": validation, "test": test}
    fingerprints = {k: fingerprint(v) if v is not None else None for k, v in sources.items() if v is not None}
    key = _cache_key(config, fingerprints)
    data_fingerprint = hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()[:16]
    path = (cache_dir or default_cache_dir()) / f"{key}.safetensors" if cache_dir is not False else None
    if path is not None and path.exists():
        cached = _load(path, data_fingerprint)
        # the key ignores encoder settings, so take those from this config, not the cached one
        for col, feature in cached.preprocessor.features.items():
            feature.config = resolve_feature(config, feature.config.type, config.features.get(col))
        cached.report["prepare_seconds"] = time.perf_counter() - start
        cached.sources = sources
        return cached
    prepared = _prepare(config, sources, data_fingerprint)
    prepared.report["cache"] = "miss"
    prepared.report["prepare_seconds"] = time.perf_counter() - start
    prepared.sources = sources
    if path is not None:
        _store(path, prepared)
    return prepared


def _prepare(config: Config, sources: dict[str, Source | None], data_fingerprint: str) -> Prepared:
    frames = {name: _positional(read_table(src, config.data)) for name, src in sources.items() if src is not None}
    main = frames["data"]
    ignore = (config.split.column,) if config.split.column else ()
    reserved = [c for c in main.columns if str(c).startswith(RESERVED_PREFIX) and c not in ignore]
    if reserved:  # loopml's own columns (retraining's split column): a user's column of that name would be overwritten
        raise LoopmlError(f"column '{reserved[0]}': names starting with '{RESERVED_PREFIX}' are reserved for loopml; "
                          "rename the column")
    schema = build_schema(main, config, ignore=ignore)
    report: dict = {"skipped_lines": main.attrs.get("skipped_lines", [])}
    target_col = schema.target
    names = {name: _display_name(src) or (None if name == "data" else f"the {name} data")
             for name, src in sources.items() if src is not None}
    report.update(check_training_values(frames, schema, config.data.non_finite, names))
    dropped = {}
    for name in list(frames):
        missing = frames[name][target_col].isna() if target_col in frames[name] else None
        if missing is not None and missing.any():
            dropped[name] = int(missing.sum())
            frames[name] = frames[name][~missing]
    report["missing_target_rows_dropped"] = dropped
    main = frames["data"]  # every split comes from the labelled rows only
    check_enough_rows(main, config.split, names["data"] or "the data", dropped.get("data", 0),
                      carve={"validation": "validation" not in frames, "test": "test" not in frames})
    schema.check_trainable()
    # the main file supplies whichever of validation/test was not given as its own data
    split_cfg = config.split.model_copy(update={
        "validation": 0.0 if "validation" in frames else config.split.validation,
        "test": 0.0 if "test" in frames else config.split.test,
    })
    parts, split_report = split_frame(main, target_col, split_cfg, schema.target_kind != "number")
    parts.update({k: frames[k] for k in ("validation", "test") if k in frames})
    if not len(parts["validation"]):
        raise LoopmlError("the validation split is empty; use more data or a larger split.validation")
    report["split"] = split_report
    report["sizes"] = {name: len(parts.get(name, ())) for name in SPLITS}

    configs = {c.name: resolve_feature(config, c.type, config.features.get(c.name)) for c in schema.inputs}
    pre = Preprocessor.create(configs, Target(target_col, schema.target_kind))
    dropped_rows = 0  # `missing: drop` and `on_error: skip` apply to every split of the training data
    for name in SPLITS:
        if name in parts and len(parts[name]):
            drop = pre.rows_to_drop(parts[name])
            dropped_rows += int(drop.sum())
            parts[name] = parts[name][~drop]
    if dropped_rows:
        report["missing_feature_rows_dropped"] = dropped_rows
    t0 = time.perf_counter()
    pre.fit(parts["train"], config.target.positive_class, config.target.normalize)
    report["fit_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    splits = {name: _tensors(pre, parts.get(name)) for name in SPLITS}
    report["transform_seconds"] = time.perf_counter() - t0
    rows = {name: parts[name].index.tolist() for name in SPLITS if name in parts and len(parts[name])}
    return Prepared(schema, pre, splits, report, data_fingerprint, frames=parts, rows=rows)


def _display_name(source: Source) -> str | None:
    """How messages name a source: the file's name (None for in-memory tables)."""
    return Path(source).name if isinstance(source, (str, os.PathLike)) else None


def _positional(df: pd.DataFrame) -> pd.DataFrame:
    """Row labels 0..n-1, so a split's labels are positions in its file (stored with the cache)."""
    out = df.reset_index(drop=True)
    out.attrs.update(df.attrs)
    return out


def _tensors(pre: Preprocessor, df: pd.DataFrame | None) -> TensorData | None:
    if df is None or not len(df):
        return None
    inputs, target = pre.transform(df), pre.transform_target(df)
    # a backstop behind the value checks: training on a NaN or inf ends in an obscure failure later
    for col, tensor in {**inputs, pre.target.column: target}.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise LoopmlError(f"column '{col}' gives non-finite values after preprocessing; check its values "
                              "and its settings (e.g. normalize: none with very large numbers)")
    return TensorData(inputs, target)


def _cache_key(config: Config, fingerprints: dict) -> str:
    shaping = {
        "format": CACHE_FORMAT,
        "inputs": fingerprints,
        "data": config.data.model_dump(mode="json"),
        "split": config.split.model_dump(mode="json"),
        "target": config.target.model_dump(mode="json", exclude=TRAINING_ONLY_TARGET_KEYS),
        "features": {k: v.model_dump(mode="json", exclude={"encoder"}) for k, v in config.features.items()},
        "defaults": config.defaults.model_dump(mode="json", exclude_unset=True),
        "exclude": config.exclude,
    }
    shaping["defaults"] = {k: v for k, v in shaping["defaults"].items() if v is not None}
    for name, section in shaping["defaults"].items():
        if section.pop("encoder", None) is not None:
            _add_encoder_key(section, getattr(config.defaults, name))
    shaping["defaults"] = {k: v for k, v in shaping["defaults"].items() if v}
    for col, section in shaping["features"].items():
        _add_encoder_key(section, config.features[col])
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:24]


def _add_encoder_key(section: dict, feature_config: object) -> None:
    """Most encoder settings do not shape tensors; a feature type names those that do (pretrained text)."""
    tensor_key = getattr(FEATURE_TYPES.get(feature_config.type), "tensor_key", None)
    extra = tensor_key(feature_config) if tensor_key is not None else None
    if extra is not None:
        section["encoder"] = extra


def _store(path: Path, prepared: Prepared) -> None:
    tensors = {}
    for name, split in prepared.splits.items():
        if split is not None:
            tensors.update({f"{name}/{col}": t.contiguous() for col, t in split.inputs.items()})
            tensors[f"{name}/__target__"] = split.target.contiguous()
            tensors[f"{name}/__rows__"] = torch.tensor(prepared.rows[name], dtype=torch.int64)
    meta = {
        "schema": prepared.schema.to_dict(),
        "preprocessor": prepared.preprocessor.to_dict(),
        "report": prepared.report,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"prepared": json.dumps(meta)})
    os.replace(tmp, path)


def _load(path: Path, data_fingerprint: str) -> Prepared:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["prepared"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open is not a dict)
    splits: dict[str, TensorData | None] = {}
    for name in SPLITS:
        if f"{name}/__target__" not in tensors:
            splits[name] = None
            continue
        inputs = {k.split("/", 1)[1]: t for k, t in tensors.items() if k.startswith(f"{name}/") and not k.endswith("__")}
        splits[name] = TensorData(inputs, tensors[f"{name}/__target__"])
    report = {**meta["report"], "cache": "hit"}
    schema, pre = Schema.from_dict(meta["schema"]), Preprocessor.from_dict(meta["preprocessor"])
    rows = {name: tensors[f"{name}/__rows__"].tolist() for name in SPLITS if f"{name}/__rows__" in tensors}
    return Prepared(schema, pre, splits, report, data_fingerprint, rows=rows)
