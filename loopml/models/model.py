"""The assembled model: per-feature encoders -> combiner -> head. Plain PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loopml.models.combiners import COMBINERS
from loopml.models.encoders import ENCODERS
from loopml.models.heads import HEADS


@dataclass
class FeatureSlot:
    """What the model needs to know about one input column."""

    column: str
    encoder: object  # the encoder's Params
    inputs: dict  # sizes from the fitted feature (vocab_size, width, ...)


class LoopModel(nn.Module):
    def __init__(
        self, slots: list[FeatureSlot], combiner: object, head: str, n_outputs: int,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.columns = [slot.column for slot in slots]
        # ModuleDict keys cannot hold every column name ('.' is refused), so use positions
        self.encoders = nn.ModuleList(ENCODERS.get(s.encoder.type)(s.encoder, **s.inputs) for s in slots)
        for encoder, slot in zip(self.encoders, slots, strict=True):
            encoder.params = slot.encoder  # read by the optimizer for per-encoder learning rates
        width = sum(encoder.output_dim for encoder in self.encoders)
        self.combiner = COMBINERS.get(combiner.type)(combiner, width)
        self.head = HEADS.get(head)(self.combiner.output_dim, n_outputs, class_weights)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [encoder(inputs[column]) for column, encoder in zip(self.columns, self.encoders, strict=True)]
        return self.head(self.combiner(torch.cat(parts, dim=1)))

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.head.loss(outputs, target)
