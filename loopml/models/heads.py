"""Output heads, one per target kind: the final layer plus its loss."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from loopml.plugins import Registry


class Head(nn.Module):
    def __init__(self, input_dim: int, n_outputs: int, class_weights: list[float] | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim, n_outputs)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else torch.empty(0)
        self.register_buffer("class_weights", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


HEADS: Registry[type[Head]] = Registry("head")


def smooth_binary_target(target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """The 0/1 target moved ``label_smoothing / 2`` towards 0.5 (two-class cross-entropy's smoothing rule)."""
    return target * (1 - label_smoothing) + 0.5 * label_smoothing if label_smoothing else target


@HEADS.register("binary")
class BinaryHead(Head):
    def __init__(self, input_dim: int, n_outputs: int, class_weights: list[float] | None = None) -> None:
        super().__init__(input_dim, 1, class_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        soft = smooth_binary_target(target, label_smoothing)  # the weights still follow the true class
        if self.class_weights.numel():
            weights = self.class_weights[target.long()]
            return F.binary_cross_entropy_with_logits(outputs, soft, weight=weights) / weights.mean()
        return F.binary_cross_entropy_with_logits(outputs, soft)


@HEADS.register("category")
class CategoryHead(Head):
    def loss(self, outputs: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(outputs, target, weight=self.class_weights if self.class_weights.numel() else None,
                               label_smoothing=label_smoothing)


@HEADS.register("number")
class RegressionHead(Head):
    def __init__(self, input_dim: int, n_outputs: int, class_weights: list[float] | None = None) -> None:
        super().__init__(input_dim, 1, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, target)
