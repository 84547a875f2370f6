"""Optimisers and learning-rate schedules from the training config."""

from __future__ import annotations

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
