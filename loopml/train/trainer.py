"""The training loop. Everything optional is a callback; history is plain data."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loopml.config import TrainingConfig
from loopml.errors import LoopmlError
from loopml.train.callbacks import BestModel, Callback, Checkpoint, History
from loopml.train.device import (
    autocast,
    check_precision,
    compile_network,
    grad_scaler,
    module_device,
    resolve_device,
    rng_state,
    set_rng_state,
    to_device,
)
from loopml.train.mixing import make_mixer
from loopml.train.optim import make_optimizer, make_schedule
from loopml.train.plan import make_plan
from loopml.train.privacy import private_training
from loopml.train.soft_targets import head_kind, labelled_part, training_loss
from loopml.train.state import load_state


@dataclass
class TensorData:
    """A split as tensors: one per input column, plus the target."""

    inputs: dict[str, torch.Tensor]
    target: torch.Tensor

    def __len__(self) -> int:
        return len(self.target)

    def rows(self, index: torch.Tensor | slice) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {name: t[index] for name, t in self.inputs.items()}, self.target[index]


MetricFn = Callable[[torch.Tensor, torch.Tensor], dict]

#: set around a command to run every Trainer's ``fit`` elsewhere (``launcher.fit(trainer, train, val)``):
#: Ray Train runs this same loop data-parallel (train/ray_train.py); None, the default: here
LAUNCHER: ContextVar = ContextVar("loopml_trainer_launcher", default=None)


class Trainer:
    def __init__(
        self, model: nn.Module, config: TrainingConfig, callbacks: Sequence[Callback] = (),
        metric_fn: MetricFn | None = None,
    ) -> None:
        self.model, self.config = model, config
        self.device = resolve_device(config.device)
        check_precision(config.precision, self.device)
        model.to(self.device)  # before the optimizer: its state is created next to the parameters
        if config.channels_last:
            from loopml.models.image_encoders import use_channels_last

            use_channels_last(model)
        #: the forward pass: the network itself, or its torch.compile'd form (same weights)
        self.forward = compile_network(model) if config.compile else model
        self.scaler = grad_scaler(self.device, config.precision)
        # checkpoints run last so they capture every other callback's updated state
        self.callbacks = sorted(callbacks, key=lambda cb: isinstance(cb, Checkpoint))
        self.metric_fn = metric_fn or (lambda outputs, target: {})
        # a 2-D target carries a teacher's soft targets (train/soft_targets.py); config.distill mixes them in
        self.loss_fn = training_loss(model, config.distill, config.label_smoothing)
        self.optimizer = make_optimizer(param_groups(model, config.optimizer.lr), config.optimizer)
        self.schedule = make_schedule(self.optimizer, config.scheduler, config.epochs, config.plan_to_max_time)
        #: training.plan_to_max_time: the epochs that fit max_time, re-planned after each epoch (train/plan.py)
        self.plan = make_plan(config, LAUNCHER.get())
        self.planned_epochs = config.epochs
        self.epoch = 0
        self.elapsed = 0.0
        self.stop_reason: str | None = None
        self.steps_per_epoch = 0
        self.launcher = LAUNCHER.get()
        #: (rank, world size) in data-parallel training: this process trains on its part of each epoch's rows
        self.shard: tuple[int, int] | None = None
        self._drop_single = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        #: DP-SGD (training.privacy): wraps forward/optimizer/loss, samples the batches (train/privacy.py)
        self.privacy = private_training(self, config)
        if self.privacy is not None:
            self.callbacks.insert(0, self.privacy)  # first: the epsilon it logs reaches every other callback
        #: training.mixup: mixes each training batch's images and its loss (train/mixing.py); None: off
        self.mixer = make_mixer(model, config)
        if config.ema is not None:  # the averaged weights are swapped in for validation (train/ema.py)
            from loopml.train.ema import WeightAverage

            self.callbacks.insert(0, WeightAverage(config.ema.decay))

    @property
    def history(self) -> list[dict]:
        return next((cb.epochs for cb in self.callbacks if isinstance(cb, History)), [])

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, train: TensorData, val: TensorData, resume_from: Path | None = None) -> list[dict]:
        if resume_from is not None:
            self.resume(resume_from)
        if self.launcher is not None:
            return self.launcher.fit(self, train, val)
        cfg = self.config
        rows = len(train) if self.shard is None else -(-len(train) // self.shard[1])
        self.steps_per_epoch = -(-rows // cfg.batch_size)
        self.schedule.steps_per_epoch = self.steps_per_epoch
        if self.plan is None:  # the config's epochs: a caller may swap the config after building (federate/clients)
            self.planned_epochs = cfg.epochs
        if self.privacy is not None:
            self.privacy.begin(len(train))
        for cb in self.callbacks:
            cb.on_train_begin(self)
        try:
            while self.epoch < self.planned_epochs and self.stop_reason is None:
                start = time.perf_counter()
                for cb in self.callbacks:
                    cb.on_epoch_begin(self, self.epoch)
                train_loss, train_metrics = self._train_epoch(train)
                for cb in self.callbacks:  # e.g. the weight average swaps itself in
                    cb.on_validation_begin(self)
                val_outputs = self.predict(val.inputs)
                with torch.inference_mode():  # on the device: the loss's class weights live there
                    val_loss = float(self.model.loss(*to_device((val_outputs, val.target), self.device)))
                self.schedule.step(val_loss)
                self.elapsed += time.perf_counter() - start
                if self.plan is not None:  # before the logs, so their lr is the re-planned curve's
                    self.planned_epochs = self.plan.update(self.epoch + 1, self.elapsed)
                    self.schedule.replan(self.planned_epochs)
                logs = {
                    "epoch": self.epoch, "train_loss": train_loss, "val_loss": val_loss,
                    **{f"train_{k}": v for k, v in train_metrics.items()},
                    **{f"val_{k}": v for k, v in self.metric_fn(val_outputs, val.target).items()},
                    "lr": self.optimizer.param_groups[0]["lr"], "time": time.perf_counter() - start,
                }
                if self.plan is not None:
                    logs["planned_epochs"] = self.planned_epochs
                self.epoch += 1
                if cfg.max_time and self.elapsed >= cfg.max_time:
                    self.stop_reason = f"time limit of {cfg.max_time:g}s reached"
                elif self.planned_epochs < cfg.epochs and self.epoch >= self.planned_epochs:
                    self.stop_reason = (f"planned {self.planned_epochs} of {cfg.epochs} epochs to fit the time limit "
                                        f"of {cfg.max_time:g}s")
                for cb in self.callbacks:
                    cb.on_epoch_end(self, logs)
        except BaseException:  # an error or Ctrl-C: callbacks let go of what they hold (the terminal)
            for cb in self.callbacks:
                abort = getattr(cb, "on_train_abort", None)  # callbacks written before the hook have none
                if abort is not None:
                    abort(self)
            raise
        for cb in self.callbacks:
            cb.on_train_end(self)
        if cfg.channels_last:  # a loaded model is plain: predict from the same layout it will have after save
            from loopml.models.image_encoders import use_channels_last

            use_channels_last(self.model, on=False)
        return self.history

    def _train_epoch(self, train: TensorData) -> tuple[float, dict]:
        """One pass over ``train``: the mean loss, and metrics on the outputs seen while training."""
        cfg = self.config
        self.model.train()
        # a per-epoch generator makes the order depend only on (seed, epoch): resumable
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + self.epoch))
        if self.shard is not None:
            order = shard_rows(order, *self.shard)
        total, seen = 0.0, 0
        outputs_seen, targets_seen = [], []
        batches = (order[begin : begin + cfg.batch_size] for begin in range(0, len(order), cfg.batch_size)) \
            if self.privacy is None else self.privacy.batches(len(train), cfg.seed, self.epoch)
        for step, index in enumerate(batches):
            if not len(index):  # Poisson sampling drew no row: DP-SGD's step is then its noise alone
                self.privacy.empty_step()
                continue
            if len(index) == 1 and self._drop_single:
                continue  # batch norm cannot train on a single row
            inputs, target = train.rows(index)
            on_device, device_target = to_device((inputs, target), self.device)
            mixed_loss = None
            if self.mixer is not None:  # the metrics below still compare with the un-mixed labels
                on_device, mixed_loss = self.mixer.batch(on_device, device_target, self.loss_fn, self.epoch, step)
            with autocast(self.device, cfg.precision):
                outputs = self.forward(on_device)
                loss = self.loss_fn(outputs, device_target) if mixed_loss is None else mixed_loss(outputs)
            outputs_seen.append(outputs.detach().float())
            targets_seen.append(target)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip and self.privacy is None:  # DP-SGD clips each row's gradient instead
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.schedule.at_step(step)  # scheduler.interval: step sets this step's lr; epoch schedules do nothing
            self.scaler.step(self.optimizer)
            self.scaler.update()
            value = loss.item()
            total, seen = total + value * len(index), seen + len(index)
            for cb in self.callbacks:
                cb.on_batch_end(self, step, value)
        labelled = labelled_part(torch.cat(outputs_seen).cpu(), torch.cat(targets_seen), head_kind(self.model)) \
            if outputs_seen else None
        metrics = self.metric_fn(*labelled) if labelled is not None and len(labelled[1]) else {}
        return total / max(seen, 1), metrics

    def predict(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        self.model.eval()
        return predict_batches(self.forward, inputs, self.config.eval_batch_size, self.device, self.config.precision)

    # -- resuming --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "elapsed": self.elapsed,
            "stop_reason": self.stop_reason,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "planned_epochs": self.planned_epochs,
            "plan": self.plan.state_dict() if self.plan is not None else None,
            **rng_state(self.device),
            "scaler": self.scaler.state_dict(),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "callback_types": [type(cb).__name__ for cb in self.callbacks],
        }

    def resume(self, directory: Path) -> bool:
        """Load the last checkpoint in ``directory``; False when there is none."""
        state = load_state(Path(directory) / "last.safetensors")
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.plan is not None and state.get("plan") is not None:  # the plan goes on where it was
            self.plan.load_state_dict(state["plan"])
            self.planned_epochs = self.plan.planned
        set_rng_state(state, self.device)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._load_callback_states(state["callbacks"], state.get("callback_types"))
        self.epoch, self.elapsed, self.stop_reason = state["epoch"], state["elapsed"], state["stop_reason"]
        return True


    def _load_callback_states(self, states: list[dict], types: list[str] | None) -> None:
        """Give each callback the state saved by the callback of its type (in order), so a run resumed
        with other callbacks (say untracked, no progress bar) still gets history and best weights back."""
        if types is None:  # a checkpoint of an older loopml: states by position
            for cb, cb_state in zip(self.callbacks, states, strict=True):
                cb.load_state_dict(cb_state)
            return
        saved = list(zip(types, states, strict=True))
        for cb in self.callbacks:
            match = next((i for i, (name, _) in enumerate(saved) if name == type(cb).__name__), None)
            if match is not None:
                cb.load_state_dict(saved.pop(match)[1])
            elif cb.state_dict():
                raise LoopmlError(f"the checkpoint has no state for the {type(cb).__name__} callback: cannot resume")


def shard_rows(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s rows of an epoch's ``order``, as DistributedSampler splits them: padded by wrapping
    around so every rank gets as many rows (and batches: each gradient all-reduce needs every rank)."""
    pad = (-len(order)) % world
    if pad:
        order = torch.cat([order, order[:pad]])
    return order[rank::world]


def param_groups(model: nn.Module, base_lr: float) -> list[dict]:
    """One group per encoder with its own ``lr``, the rest at the base rate."""
    special: dict[float, list] = {}
    claimed: set[int] = set()
    for encoder in getattr(model, "encoders", []):
        lr = getattr(getattr(encoder, "params", None), "lr", None)
        if lr is not None:
            special.setdefault(lr, []).extend(encoder.parameters())
            claimed.update(id(p) for p in encoder.parameters())
    groups = [{"params": [p for p in model.parameters() if id(p) not in claimed], "lr": base_lr}]
    groups += [{"params": params, "lr": lr} for lr, params in special.items()]
    return [g for g in groups if g["params"]]


def predict_batches(model: Callable, inputs: dict[str, torch.Tensor], batch_size: int,
                    device: torch.device | None = None, precision: str = "fp32") -> torch.Tensor:
    """The model's outputs for CPU ``inputs``, batch by batch on ``device`` (default: where the model's
    weights are), under ``precision``'s autocast; always float32 on the CPU."""
    if device is None:
        device = module_device(model) if isinstance(model, nn.Module) else torch.device("cpu")
    n = len(next(iter(inputs.values())))
    with torch.inference_mode(), autocast(device, precision):
        parts = [
            model(to_device({name: t[i : i + batch_size] for name, t in inputs.items()}, device)).float().cpu()
            for i in range(0, n, batch_size)
        ]
    return torch.cat(parts) if parts else torch.empty(0)


def default_callbacks(monitor: str, patience: int, min_delta: float, checkpoint_dir: Path | None,
                      progress: bool) -> list[Callback]:
    from loopml.train.callbacks import ProgressBar

    callbacks: list[Callback] = [History(), BestModel(monitor, patience, min_delta)]
    if progress:
        callbacks.append(ProgressBar(monitor))
    if checkpoint_dir is not None:
        callbacks.append(Checkpoint(checkpoint_dir))
    return callbacks
