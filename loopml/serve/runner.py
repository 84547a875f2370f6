"""Model runners: records in, predictions out. One registered class per backend (``RUNNERS``):

- ``torch``: the network in PyTorch (inference mode, fixed threads);
- ``onnx``: the network exported once to ONNX Runtime;
- ``native``: any other learner through its library's own predictor (LightGBM, XGBoost, CatBoost,
  linear models, ensembles) on the view(s) it reads.

Every runner makes the same checks before predicting (media paths confined to the media root, a
third value in a binary column, values that overflow in preprocessing) and decodes raw scores the
same way, so a new backend is one class with ``inputs`` (frame -> what it predicts from) and
``outputs`` (that -> raw scores).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from loopml.data.media import NOT_SERVED, served_path
from loopml.data.validate import NUMBER_RANGE
from loopml.errors import LoopmlError
from loopml.features.pipeline import records_frame  # the one JSON -> frame path
from loopml.plugins import Registry
from loopml.train.device import autocast, to_device


def learner_name(model) -> str:
    learner = getattr(model, "learner", None)
    if learner is not None:
        return getattr(learner, "registered_name", type(learner).__name__)
    return "network"


class Runner:
    """The checks, preprocessing and decoding every backend shares."""

    backend: ClassVar[str]
    registered_name: ClassVar[str]

    def __init__(self, model, threads: int | None = None, media_root: str | os.PathLike | None = None,
                 onnx_path: str | os.PathLike | None = None) -> None:
        self.model = model
        self.pre = model.preprocessor
        self.columns = list(self.pre.features)
        #: request media paths are relative to this folder and confined to it (default: the working directory)
        self.media_root = Path(media_root or Path.cwd()).expanduser().resolve()
        self.media_columns = [c for c, f in self.pre.features.items() if f.config.type in ("image", "audio")]
        self.binary_columns = [c for c, f in self.pre.features.items() if f.config.type == "binary"]
        #: a tree's table view keeps raw float64 numbers, so 1e308 would pass the after-preprocessing check:
        #: refuse what ``loopml predict`` refuses (beyond ±float32 max), whatever the learner
        self.number_columns = [c for c, f in self.pre.features.items() if f.config.type == "number"]

    @classmethod
    def refuses(cls, model) -> str | None:
        """Why this backend cannot run ``model`` (one line), or None."""
        return None

    def frame(self, records: list[dict]) -> pd.DataFrame:
        return records_frame(records, self.columns)

    def inputs(self, frame: pd.DataFrame) -> Any:
        raise NotImplementedError

    def outputs(self, inputs: Any) -> np.ndarray:
        raise NotImplementedError

    def prepare(self, records: list[dict]) -> Any:
        """The checks and preprocessing of a prediction, without the model (feedback inputs pass them too)."""
        frame = self.frame(records)
        self._check_media(frame)
        self._check_binary(frame)
        self._check_numbers(frame)
        frame.attrs["base_dir"] = str(self.media_root)
        inputs = self.inputs(frame)
        _check_finite(inputs)
        return inputs

    def predict(self, records: list[dict]) -> list[dict]:
        inputs = self.prepare(records)
        labels, proba = self.pre.target.decode(np.asarray(self.outputs(inputs)))
        classes = [str(c) for c in self.pre.target.classes]
        out = []
        for i, label in enumerate(labels):
            value = label.item() if hasattr(label, "item") else label
            probabilities = dict(zip(classes, map(float, proba[i]), strict=True)) if proba is not None else None
            if not _finite(value) or (probabilities and not all(map(math.isfinite, probabilities.values()))):
                raise LoopmlError(f"record {i}: the model's output is not a finite number (an input far outside "
                                  "the training range?)")
            out.append({"prediction": value, "probabilities": probabilities})
        return out

    def _check_binary(self, frame: pd.DataFrame) -> None:
        """A third value in a binary column is refused, as ``loopml predict`` refuses it (not read as the fill)."""
        for column in self.binary_columns:
            feature = self.pre.features[column]
            bad = np.asarray(feature.unusable(frame[column]), dtype=bool)
            if bad.any():
                i = int(bad.nonzero()[0][0])
                seen = ", ".join(repr(v) for v in feature.state.get("values", []))
                raise LoopmlError(f"record {i}: {column}: {repr(frame[column].iloc[i])[:120]} is not one of the two "
                                  f"values seen in training ({seen})")

    def _check_numbers(self, frame: pd.DataFrame) -> None:
        for column in self.number_columns:
            bad = np.asarray(self.pre.features[column].unusable(frame[column]), dtype=bool)
            if bad.any():
                i = int(bad.nonzero()[0][0])
                raise LoopmlError(f"record {i}: {column}: the value is out of range for this model "
                                  f"({repr(frame[column].iloc[i])[:60]} is not a number {NUMBER_RANGE})")

    def _check_media(self, frame: pd.DataFrame) -> None:
        for column in self.media_columns:
            for i, value in enumerate(frame[column].tolist()):
                if served_path(value, self.media_root) is None:
                    shown = repr(value)[:120]
                    raise LoopmlError(f"record {i}: {column}: {shown}: {NOT_SERVED}")


RUNNERS: Registry[type[Runner]] = Registry("serving backend")


@RUNNERS.register("torch")
class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, model, threads: int | None = None, media_root: str | os.PathLike | None = None,
                 onnx_path: str | os.PathLike | None = None, device: torch.device | None = None) -> None:
        super().__init__(model, threads, media_root, onnx_path)
        if threads:
            torch.set_num_threads(threads)
        #: where the network runs (``serve --device``); the bundle loaded it on the CPU
        self.device = device or torch.device("cpu")
        self.precision = model.config.training.precision
        to_device(model.network, self.device).eval()

    @classmethod
    def refuses(cls, model) -> str | None:
        if getattr(model, "network", None) is None:
            return f"the {learner_name(model)} learner is not a network"
        return None

    def inputs(self, frame: pd.DataFrame) -> dict[str, torch.Tensor]:
        return self.pre.transform(frame)

    def outputs(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.model.network(to_device(inputs, self.device)).float().cpu().numpy()


@RUNNERS.register("onnx")
class OnnxRunner(TorchRunner):
    """Preprocessing in Python, the network in ONNX Runtime (exported once, cached next to the model)."""

    backend = "onnx"

    def __init__(self, model, onnx_path: str | os.PathLike | None = None, threads: int | None = None,
                 media_root: str | os.PathLike | None = None) -> None:
        graph = getattr(getattr(model, "learner", None), "onnx_bytes", None)  # a compressed model holds its graph
        if onnx_path is None and graph is None:
            raise LoopmlError("the onnx backend needs a path for the exported model")
        if graph is None:
            super().__init__(model, threads, media_root, onnx_path)
        else:
            Runner.__init__(self, model, threads, media_root, onnx_path)
        import onnxruntime as ort

        from loopml.serve.onnx import export_onnx

        if graph is None:
            export_onnx(model, onnx_path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(graph or str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        #: a compressed model cuts token padding as its network did (input name -> pad id)
        trim = getattr(getattr(model.learner, "params", None), "trim", None) if graph is not None else None
        self.trim = {n: trim[c] for n, c in zip(self.input_names, self.columns, strict=True) if c in trim} if trim else {}

    @classmethod
    def refuses(cls, model) -> str | None:
        if getattr(model, "network", None) is None and getattr(getattr(model, "learner", None), "onnx_bytes", None) is None:
            return (f"the {learner_name(model)} learner does not convert to ONNX here (only networks do); "
                    "serve it with --backend native")
        return None

    def outputs(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        feed = {name: inputs[col].numpy() for name, col in zip(self.input_names, self.columns, strict=True)}
        if self.trim:
            from loopml.learners.onnx_network import trim_padding

            feed = trim_padding(feed, self.trim)
        return self.session.run(None, feed)[0]


@RUNNERS.register("native")
class NativeRunner(Runner):
    """Any learner through its own ``predict_scores`` on the view(s) it reads (the library's native predictor)."""

    backend = "native"

    def __init__(self, model, threads: int | None = None, media_root: str | os.PathLike | None = None,
                 onnx_path: str | os.PathLike | None = None) -> None:
        super().__init__(model, threads, media_root, onnx_path)
        self.learner = model.learner
        if threads and dataclasses.is_dataclass(getattr(self.learner, "task", None)):
            # learners size their library's predictor threads from Task.threads
            self.learner.task = dataclasses.replace(self.learner.task, threads=threads)
        if threads:
            torch.set_num_threads(threads)  # an ensemble's network member, if any

    @classmethod
    def refuses(cls, model) -> str | None:
        if getattr(model, "learner", None) is None:
            return "the model has no learner (saved by an older loopml?): serve it with --backend torch"
        return None

    def inputs(self, frame: pd.DataFrame) -> Any:
        from loopml.evaluate.explain import learner_inputs

        return learner_inputs(self.learner, self.pre, frame, getattr(self.model, "inputs", None))

    def outputs(self, inputs: Any) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(self.learner.predict_scores(inputs))


def _finite(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _check_finite(inputs: Any, where: str | None = None) -> None:
    """A finite JSON number can still overflow in preprocessing (1e308 scaled, or cast to float32).
    Missing values stay NaN in a table view (trees read NaN as missing): only infinities are refused there."""
    from loopml.features.views import SparseView, TableView

    if isinstance(inputs, TableView):
        bad = np.isinf(inputs.x)
        if bad.any():
            row, column = (int(v[0]) for v in bad.nonzero())
            _out_of_range(row, inputs.sources[column])
    elif isinstance(inputs, SparseView):
        data = np.asarray(inputs.x.data)
        if not np.isfinite(data).all():
            coo = inputs.x.tocoo()
            k = int((~np.isfinite(coo.data)).nonzero()[0][0])
            column = int(coo.col[k])
            source = next((f for f, start, end in inputs.blocks if start <= column < end), "?")
            _out_of_range(int(coo.row[k]), source)
    elif isinstance(inputs, dict):
        for column, value in inputs.items():
            if isinstance(value, (dict, TableView, SparseView)):
                _check_finite(value)
            elif isinstance(value, torch.Tensor) and torch.is_floating_point(value) and not bool(value.isfinite().all()):
                _out_of_range(int((~value.isfinite()).reshape(len(value), -1).any(dim=1).nonzero()[0, 0]), column)


def _out_of_range(row: int, column: str) -> None:
    raise LoopmlError(f"record {row}: {column}: the value is out of range for this model "
                      "(not a finite number after preprocessing)")


def make_runner(model, backend: str = "torch", onnx_path=None, threads: int | None = None,
                media_root: str | os.PathLike | None = None, device: str = "cpu") -> Runner:
    """The runner for ``backend``. ``torch`` is the default: a model that is not a network (trees, linear,
    ensembles) has no PyTorch graph, so it runs on its native predictor instead; ``auto`` does the same.
    ``device`` (cpu, cuda, cuda:N, mps, auto) is where the torch backend runs the network."""
    from loopml.train.device import resolve_device

    target = resolve_device(device)
    if backend in ("auto", "torch") and getattr(model, "network", None) is None and getattr(model, "learner", None) is not None:
        backend = "native"
    elif backend == "auto":
        backend = "torch"
    cls = RUNNERS.get(backend)
    why = cls.refuses(model)
    if why is not None:
        raise LoopmlError(f"cannot serve with the {backend} backend: {why}")
    if cls.backend != "torch":
        if target.type != "cpu":
            raise LoopmlError(f"--device {device} is for networks on the torch backend; the {backend} backend "
                              f"({learner_name(model)}) runs on the CPU")
        return cls(model, threads=threads, media_root=media_root, onnx_path=onnx_path)
    return cls(model, threads=threads, media_root=media_root, onnx_path=onnx_path, device=target)
