"""Contrastive self-supervised pretraining of a loopml network's encoders: SCARF for table rows
(loopml/pretrain/scarf.py), SimCLR for images (loopml/pretrain/simclr.py).

Both train the very encoders (and, for SCARF, the combiner) a later ``loopml train`` builds from the
same config, with a projection head and the NT-Xent loss on two views of every row, through the
ordinary Trainer (progress bar, per-epoch checkpoints, ``--resume``). The output folder holds

- ``encoder.safetensors``: the pretrained tensors, named as in the network (``encoders.<i>.*``,
  ``combiner.*``; ``<i>`` is the column's position in ``pretrain.json``'s ``columns``);
- ``preprocessing.json``: each column's fitted feature state (vocabularies, scaling, image size and
  mean/std), which the weights expect;
- ``pretrain.json``: how it was made.

``training.init_from: DIR`` in a training config adopts that preprocessing for the same columns and
starts the network from those tensors (``adopt_pretrained`` + ``initial_weights``); shapes that differ
from the config's network are a one-line error naming the column.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from loopml.errors import LoopmlError

WEIGHTS = "encoder.safetensors"
PREPROCESSING = "preprocessing.json"
SUMMARY = "pretrain.json"
#: the target a pretraining config without one gets (loopml's own prefix: no user column is named so)
NO_TARGET = "__loopml_pretrain_target__"


# -- the config, the columns and their fitted features ------------------------------------------------------
def pretrain_config(path: str | os.PathLike | None) -> Any:
    """The training config whose encoders are pretrained (its target, if any, is left out of the inputs)."""
    from loopml.config import load_config, read_yaml

    raw = read_yaml(path, "config", "target, features, combiner, training, ...") if path else {}
    raw.setdefault("target", NO_TARGET)
    return load_config(raw)


def column_types(frame: pd.DataFrame, columns: list[str], config: Any) -> dict[str, str]:
    """Each column's feature type: the config's, else inferred as training infers it."""
    from loopml.data.infer import infer_feature_type

    target = config.target.column
    types = {}
    for column in columns:
        if column == target or column in config.exclude:
            continue
        section = config.features.get(column)
        types[column] = section.type if section is not None else infer_feature_type(frame[column])
    return types


def fit_tensors(frame: pd.DataFrame, types: dict[str, str], config: Any, seed: int, validation: float):
    """Fit every column's feature on the training rows; (features, train tensors, validation tensors)."""
    from loopml.config import resolve_feature
    from loopml.features.pipeline import Preprocessor
    from loopml.features.target import Target
    from loopml.train.trainer import TensorData

    configs = {c: resolve_feature(config, t, config.features.get(c)) for c, t in types.items()}
    pre = Preprocessor.create(configs, Target(NO_TARGET, "number"))
    frame = frame[~pre.rows_to_drop(frame)]
    if len(frame) < 4:
        raise LoopmlError(f"pretraining needs at least 4 usable rows; the data has {len(frame)}")
    order = torch.randperm(len(frame), generator=torch.Generator().manual_seed(seed)).numpy()
    n_val = max(2, round(len(frame) * validation))
    parts = {"train": frame.iloc[order[n_val:]], "validation": frame.iloc[order[:n_val]]}
    for column, feature in pre.features.items():
        feature.fit(parts["train"][column])

    def tensors(part: pd.DataFrame) -> TensorData:
        return TensorData(pre.transform(part), torch.zeros(len(part)))

    return pre.features, tensors(parts["train"]), tensors(parts["validation"])


# -- the network parts being pretrained ------------------------------------------------------------------------
class Backbone(nn.Module):
    """A loopml network without its head: the encoders (named as there) and optionally the combiner."""

    def __init__(self, features: dict, config: Any, with_combiner: bool) -> None:
        super().__init__()
        from loopml.models import FeatureSlot, LoopModel

        slots = [FeatureSlot(col, f.config.encoder, f.encoder_inputs()) for col, f in features.items()]
        network = LoopModel(slots, config.combiner, "number", 1)
        self.columns, self.encoders = network.columns, network.encoders
        self.combiner = network.combiner if with_combiner else None
        self.output_dim = network.combiner.output_dim if with_combiner else \
            sum(e.output_dim for e in self.encoders)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([enc(inputs[col]) for col, enc in zip(self.columns, self.encoders, strict=True)], dim=1)
        return self.combiner(x) if self.combiner is not None else x


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent (InfoNCE over 2N views): row i of ``a`` and of ``b`` are positives, all else negatives."""
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    n = len(a)
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


class Contrastive(nn.Module):
    """Two views of each row -> backbone -> projection; outputs [rows, 2, dim] (the trainer's batches concatenate
    along rows, so the validation pass keeps each row's two views together); ``loss`` is NT-Xent."""

    def __init__(self, backbone: Backbone, views: Callable, temperature: float, projection: int = 128) -> None:
        super().__init__()
        self.backbone, self.views, self.temperature = backbone, views, temperature
        width = backbone.output_dim
        self.projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, projection))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        first, second = self.views(inputs)
        both = {col: torch.cat([first[col], second[col]]) for col in first}  # one pass: batch norm sees both views
        z = self.projection(self.backbone(both))
        n = len(z) // 2
        return torch.stack([z[:n], z[n:]], dim=1)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nt_xent(outputs[:, 0], outputs[:, 1], self.temperature)


# -- the run: trainer, checkpoints, output ---------------------------------------------------------------------
def fit_contrastive(model: Contrastive, train, val, config: Any, request: Any, epochs: int, batch_size: int,
                    lr: float) -> tuple[list[dict], dict]:
    """Train with the ordinary Trainer (progress, checkpoint each epoch, resume); the history and a fit record."""
    from loopml.config import SchedulerConfig
    from loopml.train.threads import ThreadShare
    from loopml.train.trainer import Trainer, default_callbacks

    if len(train) < 2:
        raise LoopmlError("pretraining needs at least 2 training rows")
    options = request.options
    cfg = config.training.model_copy(update={
        "epochs": epochs, "batch_size": min(batch_size, len(train)), "seed": options.seed or config.training.seed,
        "max_time": options.max_time, "distill": None,
        # the config's plan is for its own max_time; pretraining plans only into its own --max-time
        "plan_to_max_time": config.training.plan_to_max_time and options.max_time is not None,
        "optimizer": config.training.optimizer.model_copy(update={"lr": lr}),
        "scheduler": SchedulerConfig(type="cosine", warmup_epochs=min(2, epochs - 1)),
    })
    callbacks = default_callbacks("loss", 0, 0.0, Path(request.checkpoints), request.progress)
    # torch's default of a thread per core busy-waits when other trainings share the CPUs (20x slower steps)
    with ThreadShare(cfg.threads) as share:
        trainer = Trainer(model, cfg, [*callbacks, share])
        resumed = trainer.resume(Path(request.checkpoints)) if request.resume else False
        start = time.perf_counter()
        history = trainer.fit(train, val)
    best = next(cb for cb in callbacks if hasattr(cb, "best_epoch"))
    model.eval()
    return history, {"epochs_run": trainer.epoch, "best_epoch": best.best_epoch, "resumed": resumed,
                     "stop_reason": trainer.stop_reason or "epochs done", "seconds": trainer.elapsed,
                     "wall_seconds": time.perf_counter() - start, "device": str(trainer.device)}


def write_output(output: Path, backbone: Backbone, features: dict, summary: dict) -> None:
    """The three files, in a temporary folder renamed into place (never half written)."""
    from safetensors.torch import save_file

    from loopml.files import replace_folder

    output = Path(output)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS))
    pre = {"features": {c: {"config": f.config.model_dump(mode="json"), "state": f.state} for c, f in features.items()}}
    (tmp / PREPROCESSING).write_text(json.dumps(pre), encoding="utf-8")
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    replace_folder(tmp, output)


def summary_record(method: str, backbone: Backbone, features: dict, config: Any, history: list[dict], fit: dict,
                   request: Any, extra: dict) -> dict:
    return {
        "method": method, "columns": backbone.columns, "combiner": backbone.combiner is not None,
        "types": {c: f.config.type for c, f in features.items()},
        "encoders": {c: f.config.encoder.model_dump(mode="json") for c, f in features.items()
                     if getattr(f.config, "encoder", None) is not None},
        "combiner_config": config.combiner.model_dump(mode="json") if backbone.combiner is not None else None,
        "history": [{k: v for k, v in h.items() if k in ("epoch", "train_loss", "val_loss", "lr", "time")}
                    for h in history],
        **fit, **extra, "source": request.source,
        "description": f"{method}: {len(backbone.columns)} column(s), {fit['epochs_run']} epochs, "
                       f"final val NT-Xent {history[-1]['val_loss']:.4f}" if history else method,
        "usage": f"training: {{init_from: {request.output}}} in the training config (same columns and encoders)",
    }


# -- fine-tuning from a pretrained folder (training.init_from) ------------------------------------------------
def _read_json(folder: Path, name: str) -> dict:
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoopmlError(f"training.init_from {folder}: not a folder `loopml pretrain --method scarf|simclr` "
                          f"wrote (no {name})") from None
    except (OSError, ValueError) as e:
        raise LoopmlError(f"training.init_from {folder}: cannot read {name}: {e}") from None


def adopt_pretrained(config: Any, prepared: Any) -> Any:
    """Re-encode every split of ``prepared`` with the pretraining's fitted features (same columns, same types);
    returns the new preprocessor (also set on ``prepared``)."""
    from loopml.data.split import SPLITS
    from loopml.features.base import FEATURE_TYPES
    from loopml.features.pipeline import Preprocessor
    from loopml.train.trainer import TensorData

    folder = Path(config.training.init_from)
    if not (folder / WEIGHTS).is_file():
        raise LoopmlError(f"training.init_from {folder}: not a folder `loopml pretrain --method scarf|simclr` "
                          f"wrote (no {WEIGHTS})")
    if config.learner.type != "network":
        raise LoopmlError(f"training.init_from starts a network from pretrained encoders; learner "
                          f"{config.learner.type} has none (use learner: network)")
    theirs = _read_json(folder, PREPROCESSING)["features"]
    pre = prepared.preprocessor
    for column in pre.features:
        if column not in theirs:
            raise LoopmlError(f"training.init_from {folder}: input column '{column}' was not in the pretraining "
                              f"(it saw {', '.join(theirs)}); exclude it or pretrain with it")
    for column, item in theirs.items():
        if column not in pre.features:
            raise LoopmlError(f"training.init_from {folder}: column '{column}' of the pretraining is not an input "
                              "here; train on the same columns")
        mine = pre.features[column].config.type
        if item["config"]["type"] != mine:
            raise LoopmlError(f"training.init_from {folder}: column '{column}' is {item['config']['type']} there, "
                              f"{mine} here; set features.{column}.type to match")
    features = {c: FEATURE_TYPES.get(f.config.type)(c, f.config, theirs[c]["state"]) for c, f in pre.features.items()}
    adopted = Preprocessor(features, pre.target, pre.views)
    for name in SPLITS:
        frame = prepared.raw(name, config)
        prepared.splits[name] = TensorData(adopted.transform(frame), adopted.transform_target(frame)) \
            if frame is not None and len(frame) else None
    prepared.preprocessor = adopted
    return adopted


def pretrained_weights(config: Any, pre: Any, class_weights: list[float] | None) -> dict[str, torch.Tensor]:
    """The network's initial state: built as the fit builds it (same seed), with the pretrained tensors put in."""
    from safetensors.torch import load_file

    from loopml.learners.network import build_network

    folder = Path(config.training.init_from)
    summary = _read_json(folder, SUMMARY)
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError, RuntimeError) as e:
        raise LoopmlError(f"training.init_from {folder}: cannot read {WEIGHTS}: {e}") from None
    torch.manual_seed(config.training.seed)
    network = build_network(pre, config, class_weights)
    state = network.state_dict()
    columns = summary["columns"]
    for key, tensor in tensors.items():
        ours, where = _our_key(key, columns, network.columns)
        if ours not in state:
            raise LoopmlError(f"training.init_from {folder}: {where} has tensor '{key.split('.', 2)[-1]}' that this "
                              "config's network lacks; use the encoder settings of the pretraining")
        if tuple(state[ours].shape) != tuple(tensor.shape):
            raise LoopmlError(f"training.init_from {folder}: {where} tensor '{ours}' is {list(tensor.shape)} there, "
                              f"{list(state[ours].shape)} in this config; use the encoder settings of the pretraining")
        state[ours] = tensor.to(state[ours].dtype)
    return state


def _our_key(key: str, columns: list[str], ours: list[str]) -> tuple[str, str]:
    if key.startswith("encoders."):
        _, index, rest = key.split(".", 2)
        column = columns[int(index)]
        return f"encoders.{ours.index(column)}.{rest}", f"the encoder of column '{column}'"
    return key, "the combiner"
