"""The PyTorch network (encoders per feature, a combiner, a head) as a learner.

Torch and the training loop are imported inside the methods: the config module imports this
module to build its schema, and ``loopml.train`` imports the config (no cycles, no import cost).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from loopml.errors import LoopmlError
from loopml.learners.base import ANY_FEATURE_TYPE, LEARNERS, Budget, Context, FitData, Learner, Task

#: the network's weights in the bundle (the file name every loopml bundle had before learners)
WEIGHTS = "model.safetensors"
#: {module path: {tensor: shape}} of the layers structured pruning resized (loopml/compress/prune.py); absent when none
SHAPES = "network_shapes.json"


@dataclass
class NetworkRun:
    """How one fit runs (not learned state): set by the training run before ``fit``.

    Without one, ``fit`` monitors the config's early-stopping metric with the default callbacks
    and no progress bar, so the learner also trains on its own (the contract tests do that).
    """

    monitor: str | None = None
    checkpoint_dir: Path | None = None
    resume: bool = False
    progress: bool = False
    #: more callbacks (the run logger, the thread share)
    callbacks: list = field(default_factory=list)
    #: a warm start's weights (its class-weight buffer is dropped: this run's config decides it)
    initial_weights: dict | None = None
    #: ``default_callbacks``-shaped factory (the API passes its own, so tests can patch it there)
    make_callbacks: Callable | None = None
    #: outputs, target tensors -> per-epoch metrics
    metric_fn: Callable | None = None
    #: the training rows' target with a teacher's scores (train/soft_targets.py), replacing the plain one
    soft_targets: Any = None


def build_network(pre, config, class_weights: list[float] | None = None):
    """The untrained network for a fitted preprocessor and a config."""
    from loopml.models import FeatureSlot, LoopModel

    slots = [FeatureSlot(col, f.config.encoder, f.encoder_inputs()) for col, f in pre.features.items()]
    n_outputs = len(pre.target.classes) if pre.target.kind == "category" else 1
    network = LoopModel(slots, config.combiner, pre.target.kind, n_outputs, class_weights)
    if config.training.privacy is not None:  # BatchNorm & co. replaced, at training and at loading alike
        from loopml.train.privacy import dp_safe_network

        network = dp_safe_network(network)
    return network


@LEARNERS.register("network")
class NetworkLearner(Learner):
    """Built from the config's features/combiner/training sections; reads the ``tensors`` view."""

    view = "tensors"
    accepts = ANY_FEATURE_TYPE

    class Params(Learner.Params):
        type: Literal["network"] = "network"

    def __init__(self, params: Learner.Params, task: Task, context: Context | None = None) -> None:
        if context is None:
            raise ValueError("the network learner is built from a Context (config and preprocessor)")
        super().__init__(params, task, context)
        self.run: NetworkRun | None = None

    def _reset(self) -> None:
        super()._reset()
        self.network = None
        #: the layers resized away from the config's architecture (structured pruning): saved beside the weights
        self.shapes: dict[str, dict[str, list[int]]] = {}

    # -- fitting -----------------------------------------------------------------------------------
    def fit(self, data: FitData, budget: Budget) -> NetworkLearner:
        import torch

        from loopml.evaluate.assemble import epoch_metric_fn
        from loopml.train.determinism import deterministic_algorithms
        from loopml.train.trainer import TensorData, Trainer, default_callbacks

        self._reset()
        config, run = self.context.config, self.run or NetworkRun()
        cfg = config.training
        left = budget.remaining()
        if left is not None:  # the budget caps training time; a tighter max_time stays
            cfg = cfg.model_copy(update={"max_time": max(1e-3, min(cfg.max_time or left, left))})
        monitor = run.monitor or cfg.early_stopping.metric
        deterministic_algorithms()
        torch.manual_seed(cfg.seed)
        weights = list(self.task.class_weights) if self.task.class_weights else None
        self.network = build_network(self.context.preprocessor, config, weights)
        if run.initial_weights is not None:
            self._load_initial(run.initial_weights)
        factory = run.make_callbacks or default_callbacks
        callbacks = factory(monitor, cfg.early_stopping.patience, cfg.early_stopping.min_delta,
                            Path(run.checkpoint_dir) if run.checkpoint_dir else None, run.progress) + list(run.callbacks)
        metric_fn = run.metric_fn or epoch_metric_fn(self.context.preprocessor, monitor)
        trainer = Trainer(self.network, cfg, callbacks, metric_fn=metric_fn)
        resumed = False
        if run.resume:
            if not run.checkpoint_dir:
                raise LoopmlError("resume needs a checkpoint directory")
            resumed = trainer.resume(Path(run.checkpoint_dir))
        train = _tensors(data.train, TensorData)
        if run.soft_targets is not None:
            if len(run.soft_targets) != len(train):
                raise LoopmlError(f"{len(run.soft_targets)} soft targets for {len(train)} training rows")
            train = TensorData(train.inputs, torch.as_tensor(run.soft_targets))
        self.history = trainer.fit(train, _tensors(data.validation, TensorData))
        self.network.eval()
        best = next((cb for cb in callbacks if hasattr(cb, "best_epoch")), None)
        self.info = {"epochs_run": trainer.epoch, "best_epoch": best.best_epoch if best is not None else trainer.epoch - 1,
                     "monitor": monitor, "stop_reason": trainer.stop_reason or "epochs done",
                     "seconds": trainer.elapsed, "resumed": resumed}
        if trainer.plan is not None:  # training.plan_to_max_time: the epochs planned into max_time (capped by a budget)
            self.info["plan"] = trainer.plan.record()
        if trainer.privacy is not None:
            self.info["privacy"] = trainer.privacy.record()
        return self

    def _load_initial(self, initial: dict) -> None:
        weights = {k: v for k, v in initial.items() if k != "head.class_weights"}
        try:
            missing = self.network.load_state_dict(weights, strict=False).missing_keys
        except RuntimeError:
            missing = ["(shapes differ)"]
        if [k for k in missing if k != "head.class_weights"]:
            raise LoopmlError("warm start needs the same model architecture as the model it starts from")

    # -- using it ----------------------------------------------------------------------------------
    def predict_scores(self, x: dict) -> np.ndarray:
        from loopml.train.trainer import predict_batches

        self._require_fitted()
        self.network.eval()
        training = self.context.config.training  # on the network's device, in the precision it trained in
        return predict_batches(self.network, x, training.eval_batch_size, precision=training.precision).numpy()

    def _require_fitted(self) -> None:
        if self.network is None:
            raise LoopmlError("the network learner is not fitted yet")

    # -- persistence -------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        from loopml.bundle import save_tensors

        self._require_fitted()
        from loopml.train.device import to_device

        save_tensors(to_device(self.network.state_dict(), "cpu"), Path(folder) / WEIGHTS)  # CPU tensors whatever trained
        if self.shapes:
            import json

            (Path(folder) / SHAPES).write_text(json.dumps(self.shapes, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, params: Learner.Params, task: Task, context: Context | None = None) -> NetworkLearner:
        from safetensors.torch import load_file

        learner = cls(params, task, context)
        try:
            weights = load_file(str(Path(folder) / WEIGHTS))
        except (OSError, ValueError, RuntimeError) as e:  # safetensors raises its own errors on a bad header
            raise LoopmlError(f"cannot read the network weights in {folder}: {e}") from None
        buffer = weights.get("head.class_weights")
        class_weights = buffer.tolist() if buffer is not None and buffer.numel() else None
        learner.network = build_network(context.preprocessor, context.config, class_weights)
        learner.shapes = _read_shapes(Path(folder) / SHAPES)
        if learner.shapes:  # a pruned network: its smaller layers, before the weights go in
            from loopml.models.model import resize_modules

            resize_modules(learner.network, learner.shapes)
        try:
            learner.network.load_state_dict(weights)
        except RuntimeError:
            raise LoopmlError(f"the weights in {folder} do not fit its config") from None
        learner.network.eval()
        return learner


def _read_shapes(path: Path) -> dict:
    if not path.is_file():
        return {}
    import json

    try:
        shapes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LoopmlError(f"cannot read the pruned layer shapes {path.name}: {e}") from None
    if not isinstance(shapes, dict) or not all(isinstance(v, dict) for v in shapes.values()):
        raise LoopmlError(f"{path.name} is not a {{module: {{tensor: shape}}}} record")
    return shapes


def _tensors(split: Any, tensor_data: type) -> Any:
    """A Split of the tensors view as the trainer's TensorData (the target back as a tensor)."""
    import torch

    return tensor_data(split.x, torch.as_tensor(split.y))
