"""Quantise a network model: its ONNX graph (serve/onnx.py's export) in int8 or fp16, as a new bundle.

Methods (``--quantize``):

- ``dynamic-int8``: ONNX Runtime ``quantize_dynamic``: int8 weights (per tensor, symmetric) for
  MatMul, Gemm, Attention, LSTM, EmbedLayerNormalization and Gather (embedding tables: most of a text
  model's size); activations are quantised on the fly per batch. Conv stays float (ConvInteger is
  slower than float Conv on CPU). Per-channel weights were no closer to fp32 on the MLP and text
  models measured here (max |logit error| 0.053 vs 0.042, 0.148 vs 0.137), so it is per tensor.
- ``static-int8``: ``quantize_static`` (QDQ, int8 weights and activations) for MatMul, Gemm and
  Conv, with activation ranges calibrated on ~200 rows of the model's own training split,
  preprocessed by its own preprocessor.
- ``fp16``: float16 weights and arithmetic (onnxconverter-common, inputs and outputs kept float32),
  for GPU serving; on a CPU it is usually slower than fp32.

Why ONNX Runtime (the issue's measurements): ORT dynamic int8 was 2.4-4.5x faster than torch fp32
and 3.9x smaller on a 2-layer transformer and a 3x512 MLP (1 thread); torch's own dynamic
quantisation is deprecated and breaks ``nn.TransformerEncoderLayer``; torchao's CPU int8 was slower
than fp32.

A trainable pretrained transformer cuts token padding per batch in torch; its graph input keeps a
dynamic length (``export_onnx(dynamic_length=...)``) and the compressed learner cuts padding the same
way, so short texts stay fast (a traced length would otherwise be a constant: run_transformer skips
the cut while tracing). Every export is checked against the network (single rows and a batch) first.

The new bundle keeps the original's config (``learner: network``), schema, preprocessing and drift
reference; its learner is ``onnx_network`` (model.onnx), its metrics are the compressed graph's own,
re-computed on the original splits, and its evaluation holds the trade-off table (tradeoff.py).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import LoopmlError, did_you_mean

METHODS = ("dynamic-int8", "static-int8", "fp16")
DYNAMIC_OPS = ["MatMul", "Gemm", "Attention", "LSTM", "EmbedLayerNormalization", "Gather"]
STATIC_OPS = ["MatMul", "Gemm", "Conv"]
CALIBRATION_ROWS = 200
#: the fp32 export must reproduce the network before it is quantised (a trace that baked a shape in would not)
EXPORT_TOLERANCE = 1e-3


def check_method(value: str) -> str:
    """``value`` if it is a quantisation method; else a LoopmlError naming the nearest one."""
    if value in METHODS:
        return value
    raise LoopmlError(f"unknown --quantize value '{value}'{did_you_mean(value, METHODS)}; choose one of: "
                      f"{', '.join(METHODS)}")


def check_quantizable(model) -> None:
    """Only a network has a graph to quantise: anything else is a one-line error naming what it is."""
    require_network(model, "quantisation", " (already compressed: compress the original)")


def require_network(model, method: str, already: str) -> None:
    """A one-line error unless ``model`` is a network (``already``: said of an ONNX-compressed one)."""
    if getattr(model, "network", None) is None:
        from loopml.serve.runner import learner_name

        name = learner_name(model)
        raise LoopmlError(f"{method} needs a network; this is a {name} model{already if name == 'onnx_network' else ''}; "
                          "supported: the network learner (learner: network: MLPs and text, image or audio encoders)")


@dataclass
class Quantized:
    onnx_bytes: bytes
    fp32_bytes: bytes
    facts: dict
    trim: dict


def export_fp32(model, folder: Path, check_frame: pd.DataFrame | None = None) -> Path:
    """The network as an fp32 ONNX graph (serve/onnx.py), checked against the network on ``check_frame``."""
    import torch

    from loopml.serve.onnx import export_onnx

    trim = trimmed_columns(model)
    with warnings.catch_warnings(), _eager_attention(model):  # the tracer's shape notes; the check below decides
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        path = export_onnx(model, Path(folder) / "fp32.onnx", dynamic_length=tuple(trim))
    if check_frame is not None and len(check_frame):
        import onnxruntime as ort

        from loopml.learners.onnx_network import trim_padding

        inputs = model.preprocessor.transform(check_frame)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            expected = np.concatenate([model.network({k: v[i : i + 1] for k, v in inputs.items()}).numpy()
                                       for i in range(min(4, len(check_frame)))] + [model.network(inputs).numpy()])
        feeds = [{i.name: inputs[c][r : r + 1].numpy() for i, c in zip(session.get_inputs(), model.preprocessor.features,
                                                                         strict=True)} for r in range(min(4, len(check_frame)))]
        feeds.append({i.name: inputs[c].numpy() for i, c in zip(session.get_inputs(), model.preprocessor.features, strict=True)})
        names = dict(zip(model.preprocessor.features, [i.name for i in session.get_inputs()], strict=True))
        trim_by_name = {names[c]: pad for c, pad in trim.items()}
        got = np.concatenate([session.run(None, trim_padding(f, trim_by_name))[0] for f in feeds])
        error = float(np.abs(got - expected).max()) if expected.size else 0.0
        if not error <= EXPORT_TOLERANCE:
            raise LoopmlError(f"the ONNX export of this network disagrees with it (max |score difference| {error:.3g} "
                              "on training rows): it cannot be quantised safely")
    return path


@contextmanager
def _eager_attention(model) -> Iterator[None]:
    """Trace pretrained transformers with eager attention, then switch back. The SDPA trace adds a NaN guard per
    layer (IsNaN + 2 Where, 153 more nodes on MiniLM-L6); on sms_spam's int8 MiniLM the eager graph ran batch 64
    11% faster (1 thread, thread-CPU p50 248 vs 280 ms), same outputs (the export check below compares with SDPA)."""
    switched = []
    for encoder in getattr(model.network, "encoders", []):
        transformer = getattr(encoder, "transformer", None)
        current = getattr(getattr(transformer, "config", None), "_attn_implementation", None)
        if current not in (None, "eager") and callable(getattr(transformer, "set_attn_implementation", None)):
            transformer.set_attn_implementation("eager")
            switched.append((transformer, current))
    try:
        yield
    finally:
        for transformer, current in switched:
            transformer.set_attn_implementation(current)


def trimmed_columns(model) -> dict[str, int]:
    """{column: pad id} of the token columns whose encoder trims padding itself (a trainable pretrained
    transformer): their graph input keeps a dynamic length, and the compressed model trims them as the
    network does (without it, every row would run at max_length)."""
    network = model.network
    out = {}
    for column, encoder in zip(network.columns, network.encoders, strict=True):
        if getattr(encoder, "transformer", None) is not None and hasattr(encoder, "pad_id"):
            out[column] = int(encoder.pad_id)
    return out


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over preprocessed training rows, one batch of 16 at a time."""

    def __init__(self, model, frame: pd.DataFrame, input_names: list[str], batch: int = 16) -> None:
        inputs = model.preprocessor.transform(frame)
        columns = list(model.preprocessor.features)
        arrays = {name: inputs[c].numpy() for name, c in zip(input_names, columns, strict=True)}
        self.batches = iter([{k: v[i : i + batch] for k, v in arrays.items()} for i in range(0, len(frame), batch)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # onnxruntime calls it between calibration passes on newer versions
        return None


def calibration_rows(train: pd.DataFrame, rows: int = CALIBRATION_ROWS, seed: int = 0) -> pd.DataFrame:
    if len(train) <= rows:
        return train
    keep = np.sort(np.random.default_rng(seed).choice(len(train), rows, replace=False))
    return train.iloc[keep]


def quantize_graph(model, method: str, train: pd.DataFrame, workdir: Path) -> Quantized:
    """The quantised graph of ``model``'s network (``method``), with what was done."""
    import onnx

    check_method(method)
    check_quantizable(model)
    workdir = Path(workdir)
    calib = calibration_rows(train)
    fp32 = export_fp32(model, workdir, calib.head(32))
    out = workdir / f"{method}.onnx"
    ops = sorted({n.op_type for n in onnx.load(str(fp32)).graph.node})
    facts: dict[str, Any] = {"method": method}
    with _no_preprocessing_hint():
        _quantize(method, fp32, out, ops, facts, model, calib)
    return Quantized(out.read_bytes(), fp32.read_bytes(), facts, trimmed_columns(model))


class _PreprocessingHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # onnxruntime's advice to run its shape pre-processing
        return "pre-processing before quantization" not in record.getMessage()


@contextmanager
def _no_preprocessing_hint() -> Iterator[None]:
    hint = _PreprocessingHint()
    logging.getLogger().addFilter(hint)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(hint)


def _quantize(method: str, fp32: Path, out: Path, ops: list[str], facts: dict, model, calib: pd.DataFrame) -> None:
    import onnx

    if method == "dynamic-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        chosen = _present(DYNAMIC_OPS, ops)
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=False,
                         op_types_to_quantize=DYNAMIC_OPS)
        facts.update(weights="int8 (symmetric, per tensor)", activations="int8, quantised per batch at run time",
                     quantized_ops=chosen, float_ops=[op for op in ("Conv",) if op in ops])
    elif method == "static-int8":
        import onnxruntime as ort
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        if not len(calib):
            raise LoopmlError("static-int8 needs training rows to calibrate on; the training split is empty")
        names = [i.name for i in ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()]
        chosen = _present(STATIC_OPS, ops)
        quantize_static(str(fp32), str(out), _Calibration(model, calib, names), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=False,
                        op_types_to_quantize=STATIC_OPS)
        facts.update(weights="int8 (symmetric, per tensor)", activations="int8, ranges calibrated (min/max)",
                     quantized_ops=chosen, calibration_rows=len(calib), calibration_split="train", format="QDQ")
    else:
        try:
            from onnxconverter_common import float16
        except ImportError:
            raise LoopmlError("fp16 needs onnxconverter-common: pip install onnxconverter-common "
                              "(or pip install loopml[compress])") from None
        half = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        onnx.save(half, str(out))
        facts.update(weights="float16", activations="float16 (inputs and outputs float32)", quantized_ops=["all float ops"])


def _present(wanted: list[str], ops: list[str]) -> list[str]:
    """The ops of ``wanted`` in the graph (onnxruntime rewrites Gemm as MatMul + Add before quantising it)."""
    return [op for op in wanted if op in ops or (op == "MatMul" and "Gemm" in ops)]


def temporary_workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="loopml-compress-", dir=os.environ.get("TMPDIR"))


# -- the whole command: a compressed bundle (and its trade-off table) from a model --------------------------------
@dataclass
class Compressed:
    path: Path
    table: dict
    version: dict | None


def check_output(output: Path, force: bool, source: Path | None = None) -> None:
    """Refuse an existing output folder before any work (``--force`` replaces a loopml model folder), and one that
    is, holds or sits inside the ``source`` model folder (``--force`` would delete the model being compressed)."""
    if source is not None:
        out, src = Path(output).expanduser().resolve(), Path(source).expanduser().resolve()
        if out == src or out.is_relative_to(src) or src.is_relative_to(out):
            raise LoopmlError(f"output {output} is the model's own folder (or inside it, or holds it); choose another -o")
    if output.exists() and not force:
        raise LoopmlError(f"output {output} already exists; choose another -o or pass --force")
    if output.exists() and not (output / "manifest.json").is_file():
        raise LoopmlError(f"refusing to replace {output}: it is not a loopml model directory")


def original_splits(model, name: str | None, store: Any, data: str | None) -> dict[str, pd.DataFrame]:
    """The original's train/validation/test rows, rebuilt from its split record (loop/training_data.py)."""
    from loopml.loop.training_data import champion_splits

    try:
        frames, _ = champion_splits(store, name or "", model, data)
    except LoopmlError as e:
        raise LoopmlError(f"{str(e).replace('set data.training_data in the policy', 'pass --data FILE')}") from None
    return frames


def compress(model, folder: Path, source: dict, method: str, output: Path, *, force: bool = False, data: str | None = None,
             store: Any = None, register: str | None = None, rounds: dict[int, int] | None = None,
             echo: Any = None, threads: int = 1) -> Compressed:
    """Quantise ``model`` (read from ``folder``; ``source`` says what it is: name and version, or the folder's
    name) into the new bundle ``output``; prints the trade-off table, one line per row."""
    from loopml.compress.output import register_model, remeasure, sizes, write_model
    from loopml.compress.tradeoff import tradeoff
    from loopml.learners.base import Context
    from loopml.learners.onnx_network import OnnxNetworkLearner

    check_method(method)
    check_quantizable(model)
    output = Path(output).expanduser()
    check_output(output, force, folder)
    frames = original_splits(model, source.get("name"), store, data)
    test_split = "test" if len(frames.get("test", [])) else "validation"
    test = frames[test_split]
    if not len(test):
        raise LoopmlError("the original model has no test or validation rows to measure the trade-off on")
    with temporary_workdir() as work:
        quantized = quantize_graph(model, method, frames["train"], Path(work))
    facts = {**quantized.facts, "from": source}
    compressed = _copy_with_graph(model, quantized, method, facts, OnnxNetworkLearner, Context)
    remeasure(compressed, model, frames)
    new_sizes = sizes(method, folder, model.info["manifest"], compressed, len(quantized.onnx_bytes))
    table = {**tradeoff(model, compressed, test, test_split, new_sizes, rounds=rounds, threads=threads), "facts": facts}
    written = write_model(compressed, table, "compression", facts, output, force=force, echo=echo)
    version = None
    if register is not None:
        version = register_model(store, register, written, source, method=method, kind="compressed",
                                 learner="onnx_network")
    return Compressed(written, table, version)


def _copy_with_graph(model, quantized: Quantized, method: str, facts: dict, learner_cls: type, context_cls: type):
    """A new Model with ``model``'s config, schema, preprocessing and reference, its learner the ONNX graph."""
    import copy

    out = type(model)(model.config)
    out.schema, out.preprocessor, out.reference = model.schema, model.preprocessor, model.reference
    out.metrics = copy.deepcopy(model.metrics)
    out.evaluation = copy.deepcopy(model.evaluation)
    out.history = list(model.history)
    out.info = {k: copy.deepcopy(v) for k, v in model.info.items() if k not in ("registry", "manifest")}
    out.learner = learner_cls.from_graph(quantized.onnx_bytes, method, model.learner.task,
                                         context_cls(model.config, model.preprocessor), facts, quantized.trim)
    return out
