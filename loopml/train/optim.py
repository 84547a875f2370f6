"""Optimisers and learning-rate schedules from the training config."""

from __future__ import annotations

import math

import torch

from loopml.config import OptimizerConfig, SchedulerConfig


def make_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.type == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    optimizer = torch.optim.AdamW if cfg.type == "adamw" else torch.optim.Adam
    return optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Schedule:
    """Linear warm-up for ``warmup_epochs``, then step / cosine / plateau, stepped once per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int) -> None:
        self.optimizer, self.cfg = optimizer, cfg
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        main_epochs = max(1, epochs - cfg.warmup_epochs)
        if cfg.type == "step":
            self.scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma)
        elif cfg.type == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, main_epochs, cfg.min_lr)
        elif cfg.type == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr
            )
        else:
            self.scheduler = None
        self.epoch = 0
        self._set_warmup()

    def _set_warmup(self) -> None:
        if self.epoch < self.cfg.warmup_epochs:
            scale = 0.1 + 0.9 * self.epoch / self.cfg.warmup_epochs
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base * scale

    def step(self, val_loss: float) -> None:
        """Call at the end of each epoch, with the validation loss (used by plateau)."""
        self.epoch += 1
        if self.epoch <= self.cfg.warmup_epochs:
            if self.epoch == self.cfg.warmup_epochs:
                for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                    group["lr"] = base
            else:
                self._set_warmup()
        elif isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        elif self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "scheduler": self.scheduler.state_dict() if self.scheduler else None}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def at_step(self, step: int) -> None:
        """Before optimizer step ``step`` of the epoch: these schedules change the lr only at the epoch's end."""

    def replan(self, epochs: int) -> None:
        """Planning hands only plateau (which never looks at the epoch count) to this class: nothing to re-plan."""


def make_schedule(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int,
                  planned: bool = False) -> Schedule | CurveSchedule:
    """The epoch schedulers above for the settings they always handled (their results stay bit for bit);
    the computed curve for stepping per optimizer step, onecycle, fractional warm-up or a planned epoch count."""
    classic = cfg.interval == "epoch" and cfg.type != "onecycle" and not planned \
        and cfg.warmup_epochs == int(cfg.warmup_epochs)
    return Schedule(optimizer, cfg, epochs) if classic or cfg.type == "plateau" else CurveSchedule(optimizer, cfg, epochs)


class CurveSchedule:
    """The lr as a function of the progress through the (planned) epochs, fractional per optimizer step with
    ``interval: step``. Computed, not accumulated: re-planning, resuming and stepping per batch follow one curve.

    Linear warm-up from lr/10 over ``warmup_epochs``, then cosine down to ``min_lr`` (reached at the last planned
    epoch's end), step decay or constant; onecycle instead rises from lr/25 to lr along a half cosine over
    ``warmup_epochs`` (30% of the epochs when 0), then falls the same way to ``min_lr``. A warm-up takes at most
    half the epochs, so a plan much shorter than ``epochs`` still anneals.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int) -> None:
        self.optimizer, self.cfg, self.epochs = optimizer, cfg, epochs
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        #: set by the trainer once it knows the rows; a step's progress is step / steps_per_epoch
        self.steps_per_epoch = 1
        self.epoch = 0
        self._apply(0.0)

    def lr(self, base: float, progress: float) -> float:
        """The lr of a group whose configured rate is ``base``, ``progress`` epochs into training."""
        cfg, end = self.cfg, float(self.epochs)
        tick = 1 / max(self.steps_per_epoch, 1) if cfg.interval == "step" else 1.0
        if cfg.type == "onecycle":
            rise = min(cfg.warmup_epochs or 0.3 * end, end / 2)
            if progress < rise:
                start = base / 25
                return start + (base - start) * (1 - math.cos(math.pi * progress / rise)) / 2
            return _cosine(base, cfg.min_lr, progress - rise, max(end - rise, tick))
        warmup = min(cfg.warmup_epochs, end / 2)
        if progress < warmup:
            return base * (0.1 + 0.9 * progress / warmup)
        after = progress - warmup
        if cfg.type == "cosine":
            return _cosine(base, cfg.min_lr, after, max(end - warmup, tick))
        if cfg.type == "step":
            return base * cfg.gamma ** math.floor(after / cfg.step_size + 1e-9)  # 1e-9: k/spe sums land on k exactly
        return base

    def _apply(self, progress: float) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = self.lr(base, progress)

    def at_step(self, step: int) -> None:
        """Before optimizer step ``step`` (counted from 0) of the current epoch."""
        if self.cfg.interval == "step":
            spe = max(self.steps_per_epoch, 1)
            self._apply(self.epoch + min(step, spe) / spe)  # DP-SGD's Poisson batches can run past spe

    def step(self, val_loss: float) -> None:
        """Call at the end of each epoch: the lr the next epoch starts with."""
        self.epoch += 1
        self._apply(self.epoch)

    def replan(self, epochs: int) -> None:
        """End the curve at ``epochs`` instead (training.plan_to_max_time)."""
        self.epochs = epochs
        self._apply(self.epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.epochs = state["epoch"], state.get("epochs", self.epochs)
        self._apply(self.epoch)


def _cosine(base: float, floor: float, done: float, length: float) -> float:
    return floor + (base - floor) * (1 + math.cos(math.pi * min(done, length) / length)) / 2
