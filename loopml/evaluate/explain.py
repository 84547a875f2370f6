"""Why the model predicts what it does.

- Global: permutation importance. Shuffling one input column's tensor across rows breaks its link
  with the target while keeping its distribution; the drop in a metric is that column's value to
  the model. Working on tensors makes it the same for every feature type.
- Local: integrated gradients (Captum) from a reference input (zeros: unknown category, padding,
  black image) to the row, attributed at each encoder's attribution layer: one number per
  tabular column, one per token for text, one per pixel for images.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from loopml.evaluate.metrics import LOWER_IS_BETTER
from loopml.models import LoopModel
from loopml.train.trainer import TensorData, predict_batches

#: rows used for permutation importance (a seeded sample beyond this)
MAX_IMPORTANCE_ROWS = 5_000


def importance_metric(task: str, monitor: str | None = None) -> str:
    if monitor and monitor != "loss":
        return monitor
    return {"binary": "roc_auc", "category": "accuracy", "number": "r2"}[task]


def permutation_importance(
    network: LoopModel, data: TensorData, score: Callable[[torch.Tensor, torch.Tensor], dict], metric: str,
    repeats: int = 5, seed: int = 0, batch_size: int = 2048,
) -> dict:
    """Mean and spread, over ``repeats`` shuffles, of the drop in ``metric`` per input column."""
    generator = torch.Generator().manual_seed(seed)
    if len(data) > MAX_IMPORTANCE_ROWS:
        data = TensorData(*data.rows(torch.randperm(len(data), generator=generator)[:MAX_IMPORTANCE_ROWS]))
    network.eval()
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0

    def metric_of(inputs: dict[str, torch.Tensor]) -> float:
        return float(score(predict_batches(network, inputs, batch_size), data.target)[metric])

    try:
        baseline = metric_of(data.inputs)
    except KeyError:  # the scorer omits a metric the rows cannot define (roc_auc with one class present)
        return {"metric": metric, "baseline": None, "repeats": repeats, "rows": len(data), "features": [],
                "unavailable": f"{metric} cannot be computed on these rows (only one class present?)"}
    features = []
    for column in network.columns:
        drops = []
        for _ in range(repeats):
            shuffled = {**data.inputs, column: data.inputs[column][torch.randperm(len(data), generator=generator)]}
            drops.append(sign * (baseline - metric_of(shuffled)))
        features.append({"feature": column, "mean": float(np.mean(drops)), "std": float(np.std(drops)),
                         "drops": [float(d) for d in drops]})
    features.sort(key=lambda f: -f["mean"])
    return {"metric": metric, "baseline": baseline, "repeats": repeats, "rows": len(data), "features": features}


def integrated_gradients(
    network: LoopModel, inputs: dict[str, torch.Tensor], target: torch.Tensor | None, n_steps: int = 32,
) -> dict[str, torch.Tensor]:
    """Attributions per column: [B] for a feature, [B, L] per token, [B, H, W] per pixel.

    ``target`` is the output index to explain per row (multi-class), or None (one output).
    """
    from captum.attr import LayerIntegratedGradients

    network.eval()
    columns, encoders = network.columns, list(network.encoders)

    def forward(*tensors: torch.Tensor) -> torch.Tensor:
        return network(dict(zip(columns, tensors, strict=True)))

    with warnings.catch_warnings():  # each layer is a different encoder's: independent, as Captum asks
        warnings.filterwarnings("ignore", message="Multiple layers provided")
        explainer = LayerIntegratedGradients(forward, [e.attribution_layer() for e in encoders])
    values = tuple(inputs[c] for c in columns)
    with torch.enable_grad():
        attributions = explainer.attribute(
            values, baselines=tuple(torch.zeros_like(v) for v in values), target=target, n_steps=n_steps,
        )
    out = {}
    for column, encoder, value, attr in zip(columns, encoders, values, attributions, strict=True):
        attr = attr.detach()
        if encoder.attribution == "tokens":
            out[column] = encoder.token_scores(attr, value)
        elif encoder.attribution == "pixels":
            out[column] = attr.sum(1)
        else:
            out[column] = attr.reshape(len(attr), -1).sum(1)
    return out


def explain_rows(network: LoopModel, pre, frame, n_steps: int = 32) -> list[dict]:
    """Predictions for the rows of ``frame`` with their attributions, ready for JSON and the report."""
    from loopml.evaluate.analysis import thumbnail

    inputs = pre.transform(frame)
    outputs = predict_batches(network, inputs, 256)
    labels, proba = pre.target.decode(outputs.numpy())
    target = torch.from_numpy(proba.argmax(1)) if pre.target.kind == "category" else None
    attributions = integrated_gradients(network, inputs, target, n_steps)
    if pre.target.kind == "binary":  # one logit explains "towards the positive class": flip for negatives
        flip = torch.from_numpy(np.where(labels == pre.target.classes[1], 1.0, -1.0)).float()
        attributions = {c: a * flip.view(-1, *([1] * (a.dim() - 1))) for c, a in attributions.items()}
    rows = []
    for i in range(len(frame)):
        row = {"row": int(frame.index[i]), "prediction": labels[i].item() if hasattr(labels[i], "item") else labels[i],
               "probability": float(proba[i].max()) if proba is not None else None,
               "features": {}, "tokens": {}, "pixels": {}}
        for column, feature in pre.features.items():
            attr = attributions[column][i]
            row["features"][column] = float(attr.sum())
            if attr.dim() == 1 and hasattr(feature, "token_strings"):
                tokens = feature.token_strings(inputs[column][i].tolist())
                row["tokens"][column] = [(tok, float(a)) for tok, a in zip(tokens, attr.tolist(), strict=False)
                                         if tok is not None]
            elif attr.dim() == 2 and inputs[column].dtype == torch.uint8:
                row["pixels"][column] = {"image": thumbnail(inputs[column][i], 128),
                                         "saliency": attr.abs().numpy().round(6).tolist()}
        rows.append(row)
    return rows
