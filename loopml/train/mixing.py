"""``training.mixup``: batch-level mixing of image inputs, and the loss mixed to match.

With probability ``prob`` a training batch is mixed with a permutation of itself:

- mixup: every image becomes ``lam * x + (1 - lam) * x[perm]`` (floats in 0..255; the encoder's input
  scaling reads floats as it reads uint8), ``lam ~ Beta(alpha, alpha)``;
- cutmix: a box of relative area ``1 - lam0`` (``lam0 ~ Beta(cutmix_alpha, cutmix_alpha)``) is pasted
  from ``x[perm]``; ``lam`` is the area actually kept once the box is clipped to the image;
- both alphas > 0: each mixed batch is one or the other, 50/50.

The loss is ``lam * loss(outputs, y) + (1 - lam) * loss(outputs, y[perm])`` with the head's own loss,
so class weights and label smoothing apply to both terms. Classification only, and only networks
whose every input is an image: a number or a category cannot be mixed like pixels.

The draws come from a generator seeded by (seed, epoch, step): a resumed run mixes exactly as an
uninterrupted one, and mixing takes nothing from the generator the augmentations use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from loopml.errors import LoopmlError

if TYPE_CHECKING:
    from loopml.config import MixupConfig, TrainingConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check(kinds: dict[str, str], target_kind: str) -> None:
    """A one-line error when ``training.mixup`` cannot apply: ``kinds`` maps input columns to feature types."""
    if target_kind == "number":
        from loopml.config import MIXUP_NUMBER

        raise LoopmlError(MIXUP_NUMBER)
    other = next(((col, kind) for col, kind in kinds.items() if kind != "image"), None)
    if other is not None:
        raise LoopmlError(f"training.mixup mixes image inputs only; column '{other[0]}' is a {other[1]} input "
                          f"it cannot mix: exclude the column (exclude: [{other[0]}]) or remove training.mixup")


@dataclass
class Draw:
    """One batch's mixing: the method, the partner of each row, and mixup's weight or cutmix's Beta draw."""

    method: str  # mixup | cutmix
    perm: torch.Tensor
    lam: float
    #: cutmix: the box's centre, relative (y, x) in [0, 1)
    centre: tuple[float, float] = (0.0, 0.0)


class Mixer:
    """Mixes one training batch (``batch``); built by ``make_mixer`` from the config and the network."""

    def __init__(self, config: MixupConfig, seed: int, columns: list[str]) -> None:
        self.alpha, self.cutmix_alpha, self.prob = float(config.alpha), float(config.cutmix_alpha), float(config.prob)
        self.seed, self.columns = seed, columns

    def draw(self, rows: int, epoch: int, step: int) -> Draw | None:
        """The mixing of batch ``step`` of ``epoch`` (None: this batch is not mixed)."""
        rng = np.random.default_rng([self.seed, epoch, step])
        if rows < 2 or rng.random() >= self.prob:
            return None
        cut = self.cutmix_alpha > 0 and (self.alpha == 0 or rng.random() < 0.5)
        perm = torch.from_numpy(rng.permutation(rows))
        if cut:
            lam0 = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            return Draw("cutmix", perm, lam0, (float(rng.random()), float(rng.random())))
        return Draw("mixup", perm, float(rng.beta(self.alpha, self.alpha)))

    def batch(self, inputs: dict[str, torch.Tensor], target: torch.Tensor, loss_fn: LossFn, epoch: int,
              step: int) -> tuple[dict[str, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
        """(the inputs to train on, the batch's loss as a function of the outputs)."""
        draw = self.draw(len(target), epoch, step)
        if draw is None:
            return inputs, lambda outputs: loss_fn(outputs, target)
        perm = draw.perm.to(target.device)
        if draw.method == "cutmix":
            mixed, lam = cutmix(inputs, self.columns, perm, draw.lam, draw.centre)
        else:
            mixed, lam = mixup(inputs, self.columns, perm, draw.lam), draw.lam
        other = target[perm]
        return mixed, lambda outputs: lam * loss_fn(outputs, target) + (1 - lam) * loss_fn(outputs, other)


def mixup(inputs: dict[str, torch.Tensor], columns: list[str], perm: torch.Tensor, lam: float) -> dict:
    out = dict(inputs)
    for col in columns:
        x = inputs[col].float()
        out[col] = x.mul(lam).add_(x[perm], alpha=1 - lam)
    return out


def cutmix(inputs: dict[str, torch.Tensor], columns: list[str], perm: torch.Tensor, lam0: float,
           centre: tuple[float, float]) -> tuple[dict, float]:
    """Paste the box of relative area ``1 - lam0`` centred at ``centre`` (relative y, x) from ``x[perm]``;
    returns the inputs and the kept area (averaged over the columns, which share the box's relative place)."""
    out, kept = dict(inputs), []
    ratio = float(np.sqrt(1.0 - lam0))
    for col in columns:
        x = inputs[col]
        h, w = x.shape[-2:]
        cy, cx = int(centre[0] * h), int(centre[1] * w)
        half_h, half_w = int(h * ratio) // 2, int(w * ratio) // 2
        y1, y2 = max(cy - half_h, 0), min(cy + half_h, h)
        x1, x2 = max(cx - half_w, 0), min(cx + half_w, w)
        pasted = x.clone()
        pasted[..., y1:y2, x1:x2] = x[perm][..., y1:y2, x1:x2]
        out[col] = pasted
        kept.append(1.0 - (y2 - y1) * (x2 - x1) / (h * w))
    return out, float(np.mean(kept))


def make_mixer(network: nn.Module, config: TrainingConfig) -> Mixer | None:
    """The trainer's mixer for ``config.mixup``, or None; a one-line error where it cannot mix."""
    if config.mixup is None:
        return None
    from loopml.models.image_encoders import ImageEncoder
    from loopml.train.soft_targets import head_kind

    columns = list(getattr(network, "columns", []))
    encoders = list(getattr(network, "encoders", []))
    kinds = {col: "image" if isinstance(enc, ImageEncoder) else "non-image"
             for col, enc in zip(columns, encoders, strict=True)}
    if not kinds:
        raise LoopmlError("training.mixup needs a network with image inputs")
    check(kinds, head_kind(network))
    return Mixer(config.mixup, config.seed, columns)
