"""Model runners: records in, predictions out. PyTorch (inference mode, fixed threads) or ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from loopml.errors import LoopmlError


class TorchRunner:
    backend = "torch"

    def __init__(self, model, threads: int | None = None) -> None:
        self.model = model
        self.pre = model.preprocessor
        self.columns = list(self.pre.features)
        if threads:
            torch.set_num_threads(threads)
        model.network.eval()

    def frame(self, records: list[dict]) -> pd.DataFrame:
        return pd.DataFrame.from_records(records, columns=self.columns)

    def outputs(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            return self.model.network(inputs).numpy()

    def predict(self, records: list[dict]) -> list[dict]:
        inputs = self.pre.transform(self.frame(records))
        labels, proba = self.pre.target.decode(self.outputs(inputs))
        classes = [str(c) for c in self.pre.target.classes]
        out = []
        for i, label in enumerate(labels):
            value = label.item() if hasattr(label, "item") else label
            out.append({"prediction": value,
                        "probabilities": dict(zip(classes, map(float, proba[i]), strict=True)) if proba is not None else None})
        return out


class OnnxRunner(TorchRunner):
    """Preprocessing in Python, the network in ONNX Runtime (exported once, cached next to the model)."""

    backend = "onnx"

    def __init__(self, model, onnx_path, threads: int | None = None) -> None:
        super().__init__(model, threads)
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


def make_runner(model, backend: str = "torch", onnx_path=None, threads: int | None = None):
    if backend == "torch":
        return TorchRunner(model, threads)
    if backend == "onnx":
        if onnx_path is None:
            raise LoopmlError("the onnx backend needs a path for the exported model")
        return OnnxRunner(model, onnx_path, threads)
    raise LoopmlError(f"unknown backend {backend!r}: use torch or onnx")
