"""Model runners: records in, predictions out. PyTorch (inference mode, fixed threads) or ONNX Runtime."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from loopml.data.media import NOT_SERVED, served_path
from loopml.errors import LoopmlError
from loopml.features.pipeline import records_frame  # the one JSON -> frame path


class TorchRunner:
    backend = "torch"

    def __init__(self, model, threads: int | None = None, media_root: str | os.PathLike | None = None) -> None:
        self.model = model
        self.pre = model.preprocessor
        self.columns = list(self.pre.features)
        #: request media paths are relative to this folder and confined to it (default: the working directory)
        self.media_root = Path(media_root or Path.cwd()).expanduser().resolve()
        self.media_columns = [c for c, f in self.pre.features.items() if f.config.type in ("image", "audio")]
        self.binary_columns = [c for c, f in self.pre.features.items() if f.config.type == "binary"]
        if threads:
            torch.set_num_threads(threads)
        model.network.eval()

    def frame(self, records: list[dict]) -> pd.DataFrame:
        return records_frame(records, self.columns)

    def outputs(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            return self.model.network(inputs).numpy()

    def prepare(self, records: list[dict]) -> dict[str, torch.Tensor]:
        """The checks and preprocessing of a prediction, without the network (feedback inputs pass them too)."""
        frame = self.frame(records)
        self._check_media(frame)
        self._check_binary(frame)
        frame.attrs["base_dir"] = str(self.media_root)
        inputs = self.pre.transform(frame)
        _check_finite_inputs(inputs)
        return inputs

    def predict(self, records: list[dict]) -> list[dict]:
        inputs = self.prepare(records)
        labels, proba = self.pre.target.decode(self.outputs(inputs))
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

    def _check_media(self, frame: pd.DataFrame) -> None:
        for column in self.media_columns:
            for i, value in enumerate(frame[column].tolist()):
                if served_path(value, self.media_root) is None:
                    shown = repr(value)[:120]
                    raise LoopmlError(f"record {i}: {column}: {shown}: {NOT_SERVED}")


def _finite(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _check_finite_inputs(inputs: dict[str, torch.Tensor]) -> None:
    """A finite JSON number can still overflow in preprocessing (1e308 scaled, or cast to float32)."""
    for column, tensor in inputs.items():
        if not isinstance(tensor, torch.Tensor) or not torch.is_floating_point(tensor):
            continue
        if bool(tensor.isfinite().all()):
            continue
        row = int((~tensor.isfinite()).reshape(len(tensor), -1).any(dim=1).nonzero()[0, 0])
        raise LoopmlError(f"record {row}: {column}: the value is out of range for this model "
                          "(not a finite number after preprocessing)")


class OnnxRunner(TorchRunner):
    """Preprocessing in Python, the network in ONNX Runtime (exported once, cached next to the model)."""

    backend = "onnx"

    def __init__(self, model, onnx_path, threads: int | None = None, media_root: str | os.PathLike | None = None) -> None:
        super().__init__(model, threads, media_root)
        import onnxruntime as ort

        from loopml.serve.onnx import export_onnx

        export_onnx(model, onnx_path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def outputs(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        feed = {name: inputs[col].numpy() for name, col in zip(self.input_names, self.columns, strict=True)}
        return self.session.run(None, feed)[0]


def make_runner(model, backend: str = "torch", onnx_path=None, threads: int | None = None,
                media_root: str | os.PathLike | None = None):
    if backend == "torch":
        return TorchRunner(model, threads, media_root)
    if backend == "onnx":
        if onnx_path is None:
            raise LoopmlError("the onnx backend needs a path for the exported model")
        return OnnxRunner(model, onnx_path, threads, media_root)
    raise LoopmlError(f"unknown backend {backend!r}: use torch or onnx")
