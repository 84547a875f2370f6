"""Export the numeric part of a network model (every encoder, the combiner and the head) to ONNX.
Other learners (trees, linear, ensembles) are served by their native predictor (serve/runner.py).

Preprocessing (tokenisers, vocabularies, scalers) stays in Python; the exported graph takes the
same tensors the PyTorch network takes, one input per column, with a dynamic batch axis.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from loopml.errors import LoopmlError


class _Positional(nn.Module):
    def __init__(self, network: nn.Module, columns: list[str]) -> None:
        super().__init__()
        self.network, self.columns = network, columns

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.network(dict(zip(self.columns, tensors, strict=True)))


def export_onnx(model, path: str | os.PathLike, example_rows: int = 2, dynamic_length: tuple[str, ...] = ()) -> Path:
    """``dynamic_length``: columns whose second axis (token positions) is dynamic too (compress trims padding)."""
    if getattr(model, "network", None) is None:
        from loopml.serve.runner import learner_name

        raise LoopmlError(f"the {learner_name(model)} learner does not convert to ONNX here (only networks do); "
                          "serve it with --backend native")
    path = Path(path)
    if path.is_file():
        return path
    columns = list(model.preprocessor.features)
    example = model.preprocessor.transform(model_example(model, example_rows))
    args = tuple(example[c] for c in columns)
    names = [f"input_{i}" for i in range(len(columns))]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated but handles dynamic batches here
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                _Positional(model.network, columns).eval(), args, str(tmp), input_names=names, output_names=["scores"],
                dynamic_axes={**{n: {0: "batch", **({1: f"length_{i}"} if c in dynamic_length else {})}
                                 for i, (n, c) in enumerate(zip(names, columns, strict=True))}, "scores": {0: "batch"}},
                dynamo=False,
            )
    except Exception as e:  # noqa: BLE001  exporter failures come in many types; report, do not crash the server
        tmp.unlink(missing_ok=True)
        raise LoopmlError(f"this model cannot be exported to ONNX ({type(e).__name__}: {str(e)[:200]}); "
                          "use the torch backend") from None
    os.replace(tmp, path)
    return path


def model_example(model, rows: int = 1, pixels: bool = True):
    """Input rows that preprocessing accepts: the stored worst-error inputs, else all-missing values;
    ``pixels``: image columns as seeded uint8 arrays of the fitted size (requests take paths only)."""
    import pandas as pd

    stored = [r["inputs"] for ev in model.evaluation.get("evaluations", {}).values() for r in ev.get("worst_errors", [])]
    columns = list(model.preprocessor.features)
    records = [{c: row.get(c) for c in columns} for row in stored if all(c in row for c in columns)][:rows]
    if not records:
        records = [dict.fromkeys(columns) for _ in range(rows)]
    while len(records) < rows:
        records.append(records[-1])
    frame = pd.DataFrame.from_records(records, columns=columns)
    rng = np.random.default_rng(0)
    for c, feature in model.preprocessor.features.items():
        if pixels and feature.config.type == "image":  # stored paths are relative to the training data, gone or elsewhere now
            shape = (*feature.state["size"], feature.state["channels"])
            frame[c] = pd.Series([rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(len(frame))],
                                 index=frame.index, dtype=object)
    return frame
