"""Image encoders: uint8 [B, C, H, W] in, a vector out. Augmentation runs here, in training mode only."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from loopml.models.encoders import ENCODERS, Encoder, EncoderParams


class ImageInput(nn.Module):
    """Scale to [0, 1], augment (training only), normalise per channel."""

    def __init__(self, channels: int, mean: list[float], std: list[float], augment) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, channels, 1, 1))
        self.augment = augment
        #: hand the convolutions channels_last batches (set by ``use_channels_last``; not saved: a loaded model is plain)
        self.channels_last = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        a = self.augment
        if self.training and a is not None:
            if a.crop_padding:
                x = random_crop(x, a.crop_padding)
            if a.flip:
                flip = torch.rand(x.shape[0], device=x.device) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            if a.rotation:
                x = random_rotation(x, a.rotation)
            if a.color_jitter:
                x = color_jitter(x, a.color_jitter)
        x = (x - self.mean) / self.std
        if self.training and a is not None and a.cutout:
            x = cutout(x, a.cutout)
        # here, after the augmentations: their gathers and masks return standard-layout tensors
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def use_channels_last(network: nn.Module, on: bool = True) -> nn.Module:
    """``training.channels_last``: the image encoders' conv weights and their input batches in channels_last
    (other encoders keep their layout: their inputs are not image batches). ``on=False`` after training puts the
    standard layout back: a loaded model is plain, so the trained one then predicts bit-identically to it."""
    layout = torch.channels_last if on else torch.contiguous_format
    for module in network.modules():
        if isinstance(module, ImageEncoder):
            module.to(memory_format=layout)
            module.input.channels_last = on
    return network


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect" if padding < min(h, w) else "constant")
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (dy.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, x.shape[1], h, padded.shape[-1])
    taken = padded.gather(2, rows)
    cols = (dx.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, x.shape[1], h, w)
    return taken.gather(3, cols)


def random_rotation(x: torch.Tensor, degrees: float) -> torch.Tensor:
    angle = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    b = x.shape[0]

    def factor() -> torch.Tensor:
        return (1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * strength).to(x.dtype)

    x = x * factor()  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean  # contrast
    if x.shape[1] == 3:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = grey + (x - grey) * factor()  # saturation
    return x.clamp(0, 1)


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    b, _, h, w = x.shape
    cy, cx = torch.randint(0, h, (b, 1, 1), device=x.device), torch.randint(0, w, (b, 1, 1), device=x.device)
    ys, xs = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
    hole = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
    return x.masked_fill(hole.unsqueeze(1), 0.0)  # 0 = the channel mean after normalisation


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ImageEncoder(Encoder):
    """Image encoders: ``self.input`` scales and augments; explained pixel by pixel at its output."""

    feature_types = ("image",)
    attribution = "pixels"
    #: the image feature's ``tta``: flip = in eval mode, the mean of the features of the image and its mirror
    tta = "none"

    def attribution_layer(self) -> nn.Module:
        return self.input

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.input(images)
        if self.tta == "flip" and not self.training:
            # the mirror after the (eval-mode, per-channel) input scaling: the same as mirroring the raw image,
            # and the input layer (explain's attribution point) still sees one row per image
            both = self.body(torch.cat([x, x.flip(-1)])).mean(dim=(2, 3))
            features = both.reshape(2, -1, both.shape[-1]).mean(dim=0)
        else:
            features = self.body(x).mean(dim=(2, 3))
        return self.dropout(features)


@ENCODERS.register("cnn")
class SmallCNN(ImageEncoder):
    """conv-BN-ReLU blocks, each halving the resolution, then global average pooling."""

    class Params(EncoderParams):
        type: Literal["cnn"] = "cnn"
        channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
        convs_per_block: int = Field(1, ge=1)
        dropout: float = Field(0.1, ge=0, lt=1)


    def __init__(self, params: Params, channels: int, mean, std, augment=None, tta: str = "none", **_: object) -> None:
        super().__init__()
        self.input = ImageInput(channels, mean, std, augment)
        self.tta = tta
        blocks, width = [], channels
        for out in params.channels:
            for i in range(params.convs_per_block):
                blocks.append(conv_bn(width if i == 0 else out, out))
            blocks.append(nn.MaxPool2d(2))
            width = out
        self.body = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(params.dropout)
        self.output_dim = width


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = (
            nn.Identity() if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


@ENCODERS.register("resnet")
class ResNet(ImageEncoder):
    """A ResNet for small images: a 3x3 stem, stages of basic blocks (stride 2 between stages)."""

    class Params(EncoderParams):
        type: Literal["resnet"] = "resnet"
        channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
        blocks_per_stage: int = Field(1, ge=1)
        dropout: float = Field(0.1, ge=0, lt=1)


    def __init__(self, params: Params, channels: int, mean, std, augment=None, tta: str = "none", **_: object) -> None:
        super().__init__()
        self.input = ImageInput(channels, mean, std, augment)
        self.tta = tta
        layers: list[nn.Module] = [conv_bn(channels, params.channels[0])]
        width = params.channels[0]
        for stage, out in enumerate(params.channels):
            for block in range(params.blocks_per_stage):
                layers.append(BasicBlock(width, out, 2 if stage > 0 and block == 0 else 1))
                width = out
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(params.dropout)
        self.output_dim = width
