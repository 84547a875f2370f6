"""A network compressed by ``loopml compress``: the same graph as the network learner, run by ONNX Runtime.

It reads the same ``tensors`` view as the network (one graph input per column, in the
preprocessor's column order) and gives the same raw scores, so predict, evaluate, report, serve
(``--backend onnx`` or native), monitor and retrain treat it as any learner. It is never trained
from a config: its bundle keeps the original's config (``learner: network``), so retraining a
compressed champion retrains the original architecture. Files: ``model.onnx`` (the quantised or
fp16 graph, an ONNX protobuf: no pickle) and ``onnx_network.json`` (what was done, from what).

onnxruntime is imported inside the methods (the config module imports every learner).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from loopml.errors import LoopmlError
from loopml.learners.base import LEARNERS, Budget, Context, FitData, Learner, Task

ONNX_FILE = "model.onnx"
INFO_FILE = "onnx_network.json"
#: the rows one ONNX Runtime call takes when predicting many rows
BATCH = 256


@LEARNERS.register("onnx_network")
class OnnxNetworkLearner(Learner):
    """The network's ONNX graph (quantised int8 or fp16) in ONNX Runtime, on the CPU."""

    view = "tensors"
    #: made by ``loopml compress`` from a fitted network, never from a config: no column makes it a choice
    accepts = frozenset()
    derived = True

    class Params(Learner.Params):
        type: Literal["onnx_network"] = "onnx_network"
        #: how the graph was made: dynamic-int8, static-int8 or fp16
        method: str = "dynamic-int8"
        #: the learner it was made from (what retraining trains again: the bundle's config says so too)
        source_learner: str = "network"
        #: token columns -> pad id: trailing padding is cut per batch, as the network's pretrained encoder does
        trim: dict[str, int] = {}

    def __init__(self, params: Learner.Params, task: Task, context: Context | None = None) -> None:
        super().__init__(params, task, context)
        self.onnx_bytes: bytes | None = None
        self.columns: list[str] = list(context.preprocessor.features) if context is not None else []

    def _reset(self) -> None:
        super()._reset()
        self.onnx_bytes = None
        self._session: Any = None
        self._threads: int | None = None

    @classmethod
    def from_graph(cls, onnx_bytes: bytes, method: str, task: Task, context: Context, info: dict,
                   trim: dict[str, int] | None = None) -> OnnxNetworkLearner:
        learner = cls(cls.Params(method=method, trim=trim or {}), task, context)
        learner.onnx_bytes, learner.info = onnx_bytes, dict(info)
        return learner

    def fit(self, data: FitData, budget: Budget) -> OnnxNetworkLearner:
        raise LoopmlError("the onnx_network learner is made by `loopml compress` from a trained network, not trained; "
                          "use learner: network")

    # -- using it ----------------------------------------------------------------------------------
    def session(self) -> Any:
        """The ONNX Runtime session, on ``task.threads`` intra-op threads (made again when that changes)."""
        import onnxruntime as ort

        if self.onnx_bytes is None:
            raise LoopmlError("the onnx_network learner holds no graph yet")
        threads = max(1, int(self.task.threads))
        if self._session is None or self._threads != threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            try:
                self._session = ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001  onnxruntime raises its own (unexported) error types on a bad graph
                raise LoopmlError(f"ONNX Runtime cannot load this model's graph ({type(e).__name__}: "
                                  f"{str(e)[:160]})") from None
            self._threads = threads
        return self._session

    def feed(self, x: dict) -> dict[str, np.ndarray]:
        """The graph's inputs for the tensors view ``x`` (input_i is column i)."""
        names = [i.name for i in self.session().get_inputs()]
        if len(names) != len(self.columns):
            raise LoopmlError(f"the ONNX graph takes {len(names)} inputs; this model has {len(self.columns)} columns")
        feed = {name: _numpy(x[column]) for name, column in zip(names, self.columns, strict=True)}
        trim = {name: self.params.trim[c] for name, c in zip(names, self.columns, strict=True) if c in self.params.trim}
        return trim_padding(feed, trim)

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session().run(None, feed)[0], dtype=np.float32)

    def predict_scores(self, x: dict) -> np.ndarray:
        n = len(next(iter(x.values()))) if x else 0
        if n <= BATCH:
            return self.run(self.feed(x))
        return np.concatenate([self.run(self.feed({k: v[i : i + BATCH] for k, v in x.items()})) for i in range(0, n, BATCH)])

    # -- persistence -------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        if self.onnx_bytes is None:
            raise LoopmlError("the onnx_network learner holds no graph yet")
        (Path(folder) / ONNX_FILE).write_bytes(self.onnx_bytes)
        (Path(folder) / INFO_FILE).write_text(json.dumps(self.info, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, params: Learner.Params, task: Task, context: Context | None = None) -> OnnxNetworkLearner:
        learner = cls(params, task, context)
        try:
            learner.onnx_bytes = (Path(folder) / ONNX_FILE).read_bytes()
            info_file = Path(folder) / INFO_FILE
            learner.info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
        except (OSError, ValueError) as e:
            raise LoopmlError(f"cannot read the compressed network in {folder}: {e}") from None
        return learner


def trim_padding(feed: dict[str, np.ndarray], trim: dict[str, int]) -> dict[str, np.ndarray]:
    """``feed`` with the token inputs in ``trim`` (name -> pad id) cut after the batch's longest row."""
    out = dict(feed)
    for name, pad in trim.items():
        ids = feed[name]
        if ids.ndim == 2 and ids.shape[1] > 1:
            length = max(1, int((ids != pad).sum(1).max())) if len(ids) else 1
            out[name] = np.ascontiguousarray(ids[:, :length])
    return out


def _numpy(value: Any) -> np.ndarray:
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    return np.ascontiguousarray(array)
