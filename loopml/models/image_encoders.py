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


class PatchWhitening(nn.Module):
    """A frozen 2x2 convolution that whitens image patches (then GELU), after Keller Jordan's airbench: its
    filters are the eigenvectors of the training patches' covariance, each scaled by 1/sqrt(eigenvalue), and
    their negatives. They are set from the first training batch (as Glow's ActNorm sets its scale) and saved
    with the weights; only the bias trains."""

    EPS = 5e-4  # airbench's: keeps the filters of the near-empty directions from blowing up

    def __init__(self, channels: int) -> None:
        super().__init__()
        dims = channels * 4
        self.register_buffer("weight", torch.zeros(2 * dims, channels, 2, 2))
        self.register_buffer("fitted", torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(2 * dims))
        self.output_dim = 2 * dims

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        c = x.shape[1]
        patches = x.float().unfold(2, 2, 1).unfold(3, 2, 1)  # [B, C, H-1, W-1, 2, 2]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * 4).double()
        patches = patches - patches.mean(dim=0)
        values, vectors = torch.linalg.eigh(patches.T @ patches / max(1, len(patches) - 1))
        filters = (vectors.T / (values.clamp_min(0) + self.EPS).sqrt().view(-1, 1)).view(c * 4, c, 2, 2)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))
        self.fitted.fill_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 2:  # a 1-pixel-wide image: the 2x2 patches need a second row or column
            x = F.pad(x, (0, int(x.shape[-1] < 2), 0, int(x.shape[-2] < 2)), mode="replicate")
        if self.training and not self.fitted:
            with torch.autocast(x.device.type, enabled=False):
                self.fit(x)
        return F.gelu(F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype)))


class PoolBlock(nn.Module):
    """conv, 2x max-pool, BN, GELU, conv, BN, GELU: the pooling before the second conv halves its cost."""

    def __init__(self, c_in: int, c_out: int, ceil_mode: bool = False) -> None:
        super().__init__()
        #: a 1-pixel-wide input keeps its pixel (floor would leave none); fixed here, not read off the batch's shape,
        #: so that an exported (traced) graph sees a constant
        self.ceil_mode = ceil_mode
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2, ceil_mode=self.ceil_mode)))
        return F.gelu(self.norm2(self.conv2(x)))


@ENCODERS.register("airnet")
class AirNet(ImageEncoder):
    """After airbench94's network (Keller Jordan, 2024): patch whitening, then blocks that each pool by 2.
    On the CIFAR subset in 150 s of fp32 training it reached 0.771 test accuracy where the ResNet reached
    0.647 (bench/results/vision_defaults.md): fewer multiply-adds per image, and whitened inputs learn fast."""

    class Params(EncoderParams):
        type: Literal["airnet"] = "airnet"
        channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
        dropout: float = Field(0.1, ge=0, lt=1)

    def __init__(self, params: Params, channels: int, mean, std, augment=None, tta: str = "none",
                 size: tuple[int, int] = (32, 32), **_: object) -> None:
        super().__init__()
        self.input = ImageInput(channels, mean, std, augment)
        self.tta = tta
        stem = PatchWhitening(channels)
        layers: list[nn.Module] = [stem]
        width = stem.output_dim
        h, w = (max(2, int(side)) - 1 for side in size)  # what the 2x2 stem leaves
        for out in params.channels:
            ceil = min(h, w) == 1
            layers.append(PoolBlock(width, out, ceil))
            h, w = ((side + 1) // 2 if ceil else side // 2 for side in (h, w))
            width = out
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(params.dropout)
        self.output_dim = width
