from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from loopml.features.base import StrictModel
from loopml.plugins import Registry


class Combiner(nn.Module):
    Params: ClassVar[type[StrictModel]]
    output_dim: int


COMBINERS: Registry[type[Combiner]] = Registry("combiner")


@COMBINERS.register("concat")
class ConcatMLP(Combiner):
    """Concatenate every encoder's output and pass it through an MLP."""

    class Params(StrictModel):
        type: Literal["concat"] = "concat"
        layers: list[int] = [64]
        dropout: float = Field(0.2, ge=0.0, lt=1.0)
        norm: Literal["batch", "layer", "none"] = "none"
        activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"

    def __init__(self, params: Params, input_dim: int) -> None:
        super().__init__()
        activation = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}[params.activation]
        blocks: list[nn.Module] = []
        width = input_dim
        for size in params.layers:
            blocks.append(nn.Linear(width, size))
            if params.norm == "batch":
                blocks.append(nn.BatchNorm1d(size))
            elif params.norm == "layer":
                blocks.append(nn.LayerNorm(size))
            blocks += [activation(), nn.Dropout(params.dropout)]
            width = size
        self.mlp = nn.Sequential(*blocks)
        self.output_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)
