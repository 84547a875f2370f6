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


# -- a network whose layers were resized (structured pruning), rebuilt from its config ------------------------
def tensor_shapes(state: dict[str, torch.Tensor]) -> dict[str, dict[str, list[int]]]:
    """``state`` (a state dict) as {module path: {parameter or buffer name: shape}}."""
    out: dict[str, dict[str, list[int]]] = {}
    for key, tensor in state.items():
        path, _, name = key.rpartition(".")
        out.setdefault(path, {})[name] = list(tensor.shape)
    return out


def changed_shapes(network: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, dict[str, list[int]]]:
    """The modules whose tensors in ``state`` differ in shape from ``network``'s (the record of a pruned network)."""
    built, given = tensor_shapes(network.state_dict()), tensor_shapes(state)
    return {path: tensors for path, tensors in given.items() if path in built and built[path] != tensors}


def resize_modules(network: nn.Module, shapes: dict[str, dict[str, list[int]]]) -> None:
    """Give each module named in ``shapes`` empty tensors of the recorded shapes (``load_state_dict`` fills them),
    and the size attributes its forward reads; the module objects stay those the config built."""
    from loopml.errors import LoopmlError

    for path, tensors in shapes.items():
        try:
            module = network.get_submodule(path)
        except AttributeError:
            raise LoopmlError(f"the recorded layer shapes name '{path}', a module this network does not have") from None
        for name, shape in tensors.items():
            old = getattr(module, name, None)
            if not isinstance(old, torch.Tensor):
                raise LoopmlError(f"the recorded layer shapes name '{path}.{name}', which is not a tensor of the network")
            fresh = old.new_empty([int(s) for s in shape])
            setattr(module, name, nn.Parameter(fresh, requires_grad=old.requires_grad)
                    if isinstance(old, nn.Parameter) else fresh)
        _match_size_attributes(module)


def _match_size_attributes(module: nn.Module) -> None:
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        module.out_channels, module.in_channels = weight.shape[0], weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = len(module.running_mean if module.running_mean is not None else weight)
    elif isinstance(module, nn.LayerNorm) and weight is not None:
        module.normalized_shape = tuple(weight.shape)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = weight.shape
