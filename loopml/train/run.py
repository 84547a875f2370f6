"""One training run: prepared data in, a fitted learner with its evaluation out (``TrainResult``).

The steps, whichever learner the config names: check the learner can take every input column,
fit its view on the training rows and compute it for every split, rebalance the training rows
if asked, fit the learner within the budget, then assemble the evaluation (evaluate/assemble.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loopml.config import Config
from loopml.errors import LoopmlError, did_you_mean
from loopml.features.pipeline import Preprocessor
from loopml.features.views import fit_view, make_view
from loopml.learners import LEARNERS, Budget, Context, FitData, Learner, Split, Task
from loopml.learners.network import NetworkLearner, NetworkRun
from loopml.train.synthesize import augment

CLASSIFICATION_MONITORS = ("loss", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc", "log_loss")
REGRESSION_MONITORS = ("loss", "mae", "rmse", "mse", "r2")


@dataclass
class TrainResult:
    """What a training run leaves: the fitted learner and everything the model keeps about the fit."""

    learner: Learner
    metrics: dict
    evaluation: dict
    reference: dict
    history: list[dict]
    info: dict
    #: the preprocessing the learner was fitted with (training.init_from swaps in the pretraining's)
    preprocessor: Preprocessor | None = None


@dataclass
class RunOptions:
    """How the run goes (nothing here is learned): checkpoints, progress, callbacks, a warm start."""

    checkpoint_dir: str | os.PathLike | None = None
    resume: bool = False
    progress: bool = True
    #: more network callbacks (the registry's run logger)
    callbacks: list = field(default_factory=list)
    #: a warm start's network weights
    initial_weights: dict | None = None
    #: the network's callback factory (``default_callbacks`` when None)
    make_callbacks: Callable | None = None
    #: the wall-clock allowance, started before preparation; None: ``automl.time_budget`` from now
    budget: Budget | None = None
    #: the network's training target with a teacher's scores (distillation: train/soft_targets.py)
    soft_targets: Any = None


# -- checks that come before anything is recorded -------------------------------------------------
def check_monitor(config: Config, target_kind: str) -> str:
    metric = config.training.early_stopping.metric
    valid = REGRESSION_MONITORS if target_kind == "number" else CLASSIFICATION_MONITORS
    if metric not in valid:
        raise LoopmlError(
            f"training.early_stopping.metric '{metric}' is not available for a {target_kind} "
            f"target{did_you_mean(metric, valid)}; choose one of: {', '.join(valid)}"
        )
    return metric


def check_learner(config: Config, pre: Preprocessor) -> tuple[type[Learner], Any]:
    """The config's learner class and its params, if it can take every input column's type; else a
    LoopmlError naming the column. A learner with a ``plan(params, pre)`` classmethod (automl)
    settles its params from the columns first. An ensemble is checked through every learner
    inside it, so the message names the one that cannot.
    """
    from loopml.learners.multiview import leaf_learners

    cls = LEARNERS.get(config.learner.type)
    plan = getattr(cls, "plan", None)
    params = plan(config.learner, pre) if plan is not None else config.learner
    for leaf, _ in leaf_learners(cls, params):
        for column, feature in pre.features.items():
            kind = feature.config.type
            if kind not in leaf.accepts:
                able = sorted(n for n, other in LEARNERS if kind in other.accepts and other.view != "multi")
                instead = f"use learner: {' or '.join(able)}, or exclude it" if able else "exclude it"
                raise LoopmlError(f"column '{column}' is {kind}; learner {leaf.registered_name} cannot take {kind} "
                                  f"columns; {instead}")
    return cls, params


def class_weights(config: Config, pre: Preprocessor, train_target: np.ndarray) -> list[float] | None:
    setting = config.target.class_weights
    target = pre.target
    if setting is None or target.kind == "number":
        return None
    classes = [str(c) for c in target.classes]
    if setting == "auto":
        counts = np.bincount(train_target.astype(np.int64), minlength=len(classes))
        return (len(train_target) / (len(classes) * np.maximum(counts, 1))).tolist()
    unknown = [k for k in setting if k not in classes]
    if unknown:
        raise LoopmlError(f"target.class_weights names unknown class '{unknown[0]}'{did_you_mean(unknown[0], classes)}")
    return [float(setting.get(c, 1.0)) for c in classes]


def learner_task(config: Config, pre: Preprocessor, weights: list[float] | None = None, threads: int = 1) -> Task:
    t = pre.target
    return Task(t.kind, len(t.classes) if t.kind != "number" else 0, tuple(weights) if weights else None,
                seed=config.training.seed, threads=max(1, threads))


def adopt_warm_start(config: Config, prepared: Any, start: Any) -> dict:
    """Re-encode every split of ``prepared`` with ``start``'s fitted preprocessing (a copy); its network weights."""
    from loopml.data.split import SPLITS
    from loopml.train.trainer import TensorData

    if start.network is None or config.learner.type != "network":
        raise LoopmlError("warm start is for network models: both this config's learner and the model it starts "
                          f"from must be network (they are {config.learner.type} and {start.learner.registered_name})")
    pre = start.preprocessor.copy()
    if list(pre.features) != list(prepared.preprocessor.features) or pre.target.column != prepared.preprocessor.target.column:
        raise LoopmlError("warm start needs the same input columns and target as the model it starts from")
    for name in SPLITS:
        frame = prepared.raw(name, config)
        prepared.splits[name] = TensorData(pre.transform(frame), pre.transform_target(frame)) \
            if frame is not None and len(frame) else None
    prepared.preprocessor = pre
    return start.network.state_dict()


# -- views ----------------------------------------------------------------------------------------
def view_kinds(cls: type[Learner], params: Any) -> tuple[str, ...]:
    """The view kinds a learner reads: its own, or every one its members read (``view = "multi"``)."""
    from loopml.learners.multiview import needed_views

    return needed_views(cls, params)


def learner_input(pre: Preprocessor, cls: type[Learner], params: Any, frame: Any, tensors: dict | None = None) -> Any:
    """What the learner's ``fit``/``predict_scores`` read for the rows of ``frame``: its view, or for a
    multi-view learner a dict {view kind: view}. ``tensors``: the tensors view if already computed."""
    views = {kind: (tensors if kind == "tensors" and tensors is not None else make_view(pre, kind, frame))
             for kind in view_kinds(cls, params)}
    return views if cls.view == "multi" else views[cls.view]


def view_splits(config: Config, prepared: Any, pre: Preprocessor, cls: type[Learner]) -> dict[str, Split | None]:
    """Every split in the learner's view(s), fitted on the training rows first; the tensors come from ``prepared``."""
    kinds = view_kinds(cls, config.learner)
    for kind in kinds:
        if kind != "tensors":
            fit_view(pre, kind, prepared.raw("train", config))
    out: dict[str, Split | None] = {}
    for name, tensors in prepared.splits.items():
        if tensors is None:
            out[name] = None
            continue
        frame = prepared.raw(name, config) if kinds != ("tensors",) else None
        out[name] = Split(learner_input(pre, cls, config.learner, frame, tensors.inputs), tensors.target.numpy())
    return out


def rebalance(config: Config, pre: Preprocessor, train: Split, view: str) -> Split:
    """``target.sampling`` on the training split: on the tensors as before, by row index for the other views."""
    import torch

    from loopml.learners.multiview import take_rows
    from loopml.train.sampling import resample
    from loopml.train.trainer import TensorData

    method = config.target.sampling
    if method == "none":
        return train
    seed, ratio = config.training.seed, config.target.sampling_ratio
    kinds = {col: f.config.type for col, f in pre.features.items()}
    target = torch.as_tensor(train.y)
    if view == "tensors":
        sampled = resample(TensorData(train.x, target), method, ratio, seed, kinds)
        return Split(sampled.inputs, sampled.target.numpy())
    if method == "smote":
        raise LoopmlError(f"target.sampling smote works on the network's tensors; learner {config.learner.type} "
                          "reads another view (use sampling: oversample)")
    rows = resample(TensorData({"row": torch.arange(len(train))}, target), method, ratio, seed, {"row": "number"})
    index = rows.inputs["row"].numpy()
    return Split(take_rows(train.x, index), train.y[index])


# -- the run --------------------------------------------------------------------------------------
def train(config: Config, prepared: Any, options: RunOptions | None = None) -> TrainResult:
    """Fit the config's learner on ``prepared`` and evaluate it."""
    from loopml.evaluate.assemble import assemble, epoch_metric_fn
    from loopml.train.threads import ThreadShare

    options = options or RunOptions()
    # a warm start's weights take precedence over a pretraining's
    from_pretraining = config.training.init_from is not None and options.initial_weights is None
    if from_pretraining:
        from loopml.pretrain.contrastive import adopt_pretrained  # re-encodes the splits, before any view is fitted

        adopt_pretrained(config, prepared)
    pre = prepared.preprocessor
    monitor = check_monitor(config, pre.target.kind)
    cls, params = check_learner(config, pre)
    config = config.model_copy(update={"learner": params})
    budget = options.budget or Budget(config.automl.time_budget)
    # threads: this process's fair share of its CPUs, unless set explicitly (train/threads.py)
    with ThreadShare(config.training.threads) as share:
        splits = view_splits(config, prepared, pre, cls)
        train_split = rebalance(config, pre, splits["train"], cls.view)
        train_split, synthesized = augment(config, prepared, pre, train_split,
                                           lambda frame: learner_input(pre, cls, config.learner, frame))
        # with synthesis, weights balance what the learner sees (the real rows plus the synthetic ones)
        weights = class_weights(config, pre, (train_split if synthesized else splits["train"]).y)
        if from_pretraining:
            from loopml.pretrain.contrastive import pretrained_weights

            options.initial_weights = pretrained_weights(config, pre, weights)
        learner = cls(config.learner, learner_task(config, pre, weights, share.threads or 1), Context(config, pre))
        if isinstance(learner, NetworkLearner):
            learner.run = NetworkRun(
                monitor, Path(options.checkpoint_dir) if options.checkpoint_dir else None, options.resume,
                options.progress, [*options.callbacks, share], options.initial_weights, options.make_callbacks,
                epoch_metric_fn(pre, monitor), soft_targets=options.soft_targets)
        elif options.resume or options.initial_weights is not None or options.soft_targets is not None:
            raise LoopmlError(f"resume, warm start and soft targets are for the network learner, not {config.learner.type}")
        start = time.perf_counter()
        learner.fit(FitData(train_split, splits["validation"]), budget)
        seconds = time.perf_counter() - start
        sizes = {name: len(split) for name, split in prepared.splits.items() if split is not None}
        assembled = assemble(config, prepared, pre, learner, splits, monitor, sizes, len(train_split),
                             lambda frame: learner_input(pre, cls, config.learner, frame), budget)
    training = {"monitor": monitor, "seconds": seconds, "stop_reason": "done", "resumed": False, **learner.info,
                "learner": cls.registered_name}
    if synthesized is not None:
        training["synthesized"] = synthesized
    info = {
        "data_source": source_path(prepared.sources.get("data")),
        "data_fingerprint": prepared.fingerprint,
        "data_report": prepared.report,
        "splits": split_record(prepared, config, pre),
        "training": training,
    }
    from loopml.train.privacy import privacy_metrics

    metrics = {**assembled.metrics, **privacy_metrics(learner.info)}  # DP: the spent ε and δ beside the splits
    return TrainResult(learner, metrics, assembled.evaluation, assembled.reference, list(learner.history), info, pre)


def split_record(prepared: Any, config: Config, pre: Preprocessor) -> dict:
    from loopml.data.split import SPLITS
    from loopml.data.split import split_record as record

    frames = {name: prepared.raw(name, config) for name in SPLITS}
    out = record(prepared.sources, prepared.rows, frames, [*pre.features, pre.target.column])
    if config.data.media_root:  # relative to this process's cwd: a retrain elsewhere must read the same folder
        root = str(Path(config.data.media_root).expanduser().resolve())
        for parts in out.values():
            for part in parts:
                if part.get("source") is not None:
                    part["media_root"] = root
    return out


def source_path(source: object) -> str | None:
    """The training file's absolute path (retraining reads it again); None for in-memory data."""
    return str(Path(source).resolve()) if isinstance(source, (str, os.PathLike)) else None
