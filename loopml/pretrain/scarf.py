"""SCARF (Bahri et al., 2022): contrastive pretraining for table rows by random feature corruption.

The positive view of a row replaces a random ``corruption`` fraction of its columns with values drawn
from each column's empirical marginal (the same column of a random training row); the encoders and
combiner of the loopml network learn to map a row and its corrupted copy close together (NT-Xent).
"""

from __future__ import annotations

import torch

from loopml.errors import LoopmlError
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

DEFAULTS = {"epochs": 20, "batch_size": 256, "lr": 1e-3, "temperature": 1.0, "corruption": 0.6}


class Corrupt:
    """The two views: the rows as they are, and with each value replaced by a marginal draw at ``rate``."""

    def __init__(self, pool: dict[str, torch.Tensor], rate: float) -> None:
        self.pool, self.rate = pool, rate  # the training rows' tensors (CPU), the marginals drawn from
        self.size = len(next(iter(pool.values())))

    def __call__(self, inputs: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        rows = len(next(iter(inputs.values())))
        draw = torch.randint(0, self.size, (rows, len(inputs)))  # each column's value from its own random row
        mask = torch.rand(rows, len(inputs)) < self.rate
        corrupted = {}
        for i, (column, tensor) in enumerate(inputs.items()):
            other = self.pool[column][draw[:, i]].to(tensor.device)
            where = mask[:, i].to(tensor.device).view(-1, *([1] * (tensor.dim() - 1)))
            corrupted[column] = torch.where(where, other, tensor)
        return inputs, corrupted


def run(request) -> dict:
    """``loopml pretrain --method scarf``: see loopml/pretrain/__init__.py for the request."""
    opts = request.options
    corruption = opts.corruption if opts.corruption is not None else DEFAULTS["corruption"]
    if not 0.0 < corruption < 1.0:
        raise LoopmlError(f"--corruption must be between 0 and 1 (exclusive), got {corruption:g}")
    config = pretrain_config(opts.config)
    types = column_types(request.frame, request.columns, config)
    media = [c for c, t in types.items() if t in ("image", "audio")]
    if media:
        raise LoopmlError(f"column '{media[0]}' is {types[media[0]]}: scarf pretrains table columns "
                          "(use --method simclr for images, or leave it out with --column)")
    if not [t for t in types.values() if t != "skip"]:
        raise LoopmlError("no input columns to pretrain on (every column is the target, excluded or skipped)")
    seed = opts.seed if opts.seed is not None else config.training.seed
    features, train, val = fit_tensors(request.frame, types, config, seed, validation=0.1)
    torch.manual_seed(seed)
    backbone = Backbone(features, config, with_combiner=True)
    temperature = opts.temperature or DEFAULTS["temperature"]
    model = Contrastive(backbone, Corrupt(train.inputs, corruption), temperature)
    history, fit = fit_contrastive(model, train, val, config, request, opts.epochs or DEFAULTS["epochs"],
                                   opts.batch_size or DEFAULTS["batch_size"], opts.lr or DEFAULTS["lr"])
    summary = summary_record("scarf", backbone, features, config, history, fit, request,
                             {"corruption": corruption, "temperature": temperature, "rows_train": len(train),
                              "rows_validation": len(val)})
    write_output(request.output, backbone, features, summary)
    return summary
