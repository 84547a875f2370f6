"""``training.ema``: an exponential moving average of the network's weights, as a callback.

After every optimizer step, ``average <- d * average + (1 - d) * weights`` for the parameters, with
``d = min(decay, (1 + n) / (10 + n))`` after n updates (a warm-up: the average of the first epochs would
otherwise stay near the random starting weights and validate at chance), and the buffers (batch-norm
statistics) are copied. The average starts from the weights training
starts from. Before each validation the average is swapped into the network, so validation, the
best-epoch choice (BestModel reads the network at epoch end), checkpoints' ``model`` and the saved
weights are all the averaged ones; the training weights are swapped back at the next epoch's start.
Its state (the average and the training weights it holds) is in the checkpoint: resume is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from loopml.train.callbacks import Callback
from loopml.train.device import to_device

if TYPE_CHECKING:
    from loopml.train.trainer import Trainer


def effective_decay(decay: float, updates: int) -> float:
    """The decay after ``updates`` updates: ramped up from 0.1, so early averages follow the training weights."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage(Callback):
    def __init__(self, decay: float) -> None:
        self.decay = float(decay)
        self.average: dict[str, torch.Tensor] | None = None
        #: the training weights while the average is in the network (between validation and the next epoch)
        self.held: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self._parameters: set[str] = set()

    def on_train_begin(self, trainer: Trainer) -> None:
        model = trainer.model
        self._parameters = {name for name, p in model.named_parameters() if p.is_floating_point()}
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:  # resumed: the checkpoint's CPU tensors, next to the network again
            self.average = to_device(self.average, trainer.device)
            self.held = to_device(self.held, trainer.device)

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        if self.held is not None:
            trainer.model.load_state_dict(self.held)
            self.held = None

    @torch.no_grad()
    def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None:
        live = trainer.model.state_dict()
        weight = 1.0 - effective_decay(self.decay, self.updates)
        for name, value in live.items():
            if name in self._parameters:
                self.average[name].lerp_(value, weight)
            else:
                self.average[name].copy_(value)
        self.updates += 1

    def on_validation_begin(self, trainer: Trainer) -> None:
        model = trainer.model
        self.held = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average)

    def state_dict(self) -> dict:
        return {"average": self.average, "held": self.held, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.average, self.held, self.updates = state["average"], state["held"], state["updates"]
