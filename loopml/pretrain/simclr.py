"""SimCLR (Chen et al., 2020) for image columns: two augmented views of each image, NT-Xent between them.

The views come from the project's own training augmentations (random crop, flip, colour jitter,
rotation, cutout: loopml/models/image_encoders.py), drawn independently for each view; the image
encoder learns views of one image close, of different images apart. Only the encoders are kept
(the representation before the projection head, as in SimCLR); the combiner trains from scratch.
"""

from __future__ import annotations

import torch
from torch import nn

from loopml.errors import LoopmlError
from loopml.features.image import AugmentConfig
from loopml.pretrain.contrastive import (
    Backbone,
    Contrastive,
    column_types,
    fit_contrastive,
    fit_tensors,
    pretrain_config,
    summary_record,
    write_output,
)

DEFAULTS = {"epochs": 30, "batch_size": 256, "lr": 2e-3, "temperature": 0.5}
#: SimCLR's augmentations as far as the project has them (no resized crop or blur: padding crops, strong jitter)
STRONG = AugmentConfig(crop_padding=4, flip=True, color_jitter=0.5, cutout=8)


def view_augment(own: AugmentConfig) -> AugmentConfig:
    """The views' augmentation: SimCLR's strong one, each setting raised to the config's where that is stronger
    (a training config's mild crop + flip alone makes views too alike: SimCLR relies on colour distortion)."""
    return AugmentConfig(crop_padding=max(STRONG.crop_padding, own.crop_padding), flip=STRONG.flip or own.flip,
                         rotation=max(STRONG.rotation, own.rotation),
                         color_jitter=max(STRONG.color_jitter, own.color_jitter), cutout=max(STRONG.cutout, own.cutout))


class Views:
    """The batch twice: the image inputs augment every row independently in each half of the one pass."""

    def __call__(self, inputs: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        return inputs, inputs


class SimCLR(Contrastive):
    """Augmentation stays on in evaluation too, so the validation loss compares two views, not two copies."""

    def train(self, mode: bool = True) -> SimCLR:
        super().train(mode)
        for encoder in self.backbone.encoders:
            image_input = getattr(encoder, "input", None)
            if isinstance(image_input, nn.Module):
                image_input.train(True)
        return self


def run(request) -> dict:
    """``loopml pretrain --method simclr``: see loopml/pretrain/__init__.py for the request."""
    opts = request.options
    if opts.corruption is not None:
        raise LoopmlError("--corruption does not apply to --method simclr")
    config = pretrain_config(opts.config)
    types = column_types(request.frame, request.columns, config)
    images = {c: t for c, t in types.items() if t == "image"}
    if not images:
        raise LoopmlError(f"no image column among {', '.join(request.columns)}: simclr pretrains images "
                          "(use --method scarf for table columns)")
    for column, kind in types.items():
        if kind != "image" and kind != "skip":
            request.echo(f"note: simclr leaves out column '{column}' ({kind}); only image columns are pretrained")
    seed = opts.seed if opts.seed is not None else config.training.seed
    features, train, val = fit_tensors(request.frame, images, config, seed, validation=0.05)
    torch.manual_seed(seed)
    backbone = Backbone(features, config, with_combiner=False)
    augment = {}
    for column, encoder in zip(backbone.columns, backbone.encoders, strict=True):
        encoder.input.augment = view_augment(features[column].config.augment)
        augment[column] = encoder.input.augment.model_dump()
    temperature = opts.temperature or DEFAULTS["temperature"]
    model = SimCLR(backbone, Views(), temperature)
    history, fit = fit_contrastive(model, train, val, config, request, opts.epochs or DEFAULTS["epochs"],
                                   opts.batch_size or DEFAULTS["batch_size"], opts.lr or DEFAULTS["lr"])
    summary = summary_record("simclr", backbone, features, config, history, fit, request,
                             {"augment": augment, "temperature": temperature, "rows_train": len(train),
                              "rows_validation": len(val)})
    write_output(request.output, backbone, features, summary)
    return summary
