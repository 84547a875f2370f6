"""Why the model predicts what it does.

- Global: permutation importance. Shuffling one input feature's values across rows breaks its link
  with the target while keeping its distribution; the drop in a metric is that feature's value to
  the model. The network shuffles its tensors (``permutation_importance``); any other learner
  shuffles every view column the feature feeds (``learner_importance``: a TableView's ``sources``,
  a SparseView's ``blocks``, each view of an ensemble) -- the same as shuffling the raw column.
- Local: integrated gradients (Captum) from a reference input (zeros: unknown category, padding,
  black image) to the row, attributed at each encoder's attribution layer: one number per
  tabular column, one per token for text, one per pixel for images. Other learners: their own
  ``contributions`` (trees: TreeSHAP ``pred_contrib``), summed per input feature (``explain_any``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

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

    from loopml.train.device import module_device, to_device

    network.eval()
    device = module_device(network)  # explained where the network is; the attributions come back on the CPU
    inputs, target = to_device((inputs, target), device)
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
    return to_device(out, "cpu")


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
               "features": {}, "tokens": {}, "pixels": {}, "method": "integrated_gradients"}
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


# -- any learner -------------------------------------------------------------------------------
def learner_inputs(learner, pre, frame, inputs_fn: Callable | None = None):
    """What ``learner.predict_scores`` reads for the rows of ``frame``: its view, or a dict of views (ensembles)."""
    if inputs_fn is not None:
        return inputs_fn(frame)
    from loopml.features.views import make_view

    if learner.view == "multi":
        from loopml.learners.ensemble import needed_views

        return {kind: make_view(pre, kind, frame) for kind in needed_views(type(learner), learner.params)}
    return make_view(pre, learner.view, frame)


def _feature_slots(inputs) -> dict[str, list[tuple]]:
    """Per input feature, where it lives in ``inputs``: ("tensor", key, column) / ("table", key, idx) /
    ("sparse", key, (start, end)) entries; ``key`` is the view kind in a dict of views, else None."""
    from loopml.features.views import SparseView, TableView, TextView

    slots: dict[str, list[tuple]] = {}

    def add(view, key) -> None:
        if isinstance(view, TableView):
            for i, source in enumerate(view.sources):
                slots.setdefault(source, []).append(("table", key, i))
        elif isinstance(view, SparseView):
            for source, start, end in view.blocks:
                slots.setdefault(source, []).append(("sparse", key, (start, end)))
        elif isinstance(view, TextView):
            for column in view.x:
                slots.setdefault(column, []).append(("text", key, column))
        elif isinstance(view, dict):  # the network's tensors: column -> tensor
            for column in view:
                slots.setdefault(column, []).append(("tensor", key, column))
        else:
            raise TypeError(f"unknown view {type(view).__name__}")

    if _is_multi(inputs):
        for key, view in inputs.items():
            add(view, key)
    else:
        add(inputs, None)
    return slots


def _is_multi(inputs) -> bool:
    # values too: a network's tensors dict keys columns, and a column may be called "text"
    return isinstance(inputs, dict) and bool(inputs) and all(
        k in ("tensors", "table", "sparse", "text") and not isinstance(v, torch.Tensor) for k, v in inputs.items())


def _permuted(inputs, slots: list[tuple], order: np.ndarray):
    """``inputs`` with one feature's values (every slot of it, in every view) moved to the rows ``order``."""
    import scipy.sparse as sp

    from loopml.features.views import SparseView, TableView, TextView

    multi = _is_multi(inputs)
    out = dict(inputs) if multi else {None: inputs}
    copied: set = set()
    for kind, key, where in slots:
        view = out[key]
        if kind == "table":
            x = view.x if key in copied else view.x.copy()
            x[:, where] = x[order, where]
            out[key] = TableView(x, view.columns, view.categorical, view.sources)
        elif kind == "sparse":
            start, end = where
            x = view.x.tocsc()
            middle = x[:, start:end].tocsr()[order]
            out[key] = SparseView(sp.hstack([x[:, :start], middle, x[:, end:]], format="csr"), view.blocks)
        elif kind == "text":
            texts = dict(view.x)
            texts[where] = [texts[where][i] for i in order]
            out[key] = TextView(texts)
        else:
            tensors = view if key in copied else dict(view)
            tensors[where] = tensors[where][torch.from_numpy(order)]
            out[key] = tensors
        copied.add(key)
    return out if multi else out[None]


def take_inputs(inputs, index: np.ndarray):
    """The rows ``index`` of a view, a tensors dict or a dict of views."""
    from loopml.features.views import SparseView, TableView, TextView

    if isinstance(inputs, (TableView, SparseView, TextView)):
        return inputs.rows(index)
    if _is_multi(inputs):
        return {k: take_inputs(v, index) for k, v in inputs.items()}
    picked = torch.from_numpy(np.asarray(index))
    return {c: t[picked] for c, t in inputs.items()}


def inputs_importance(
    predict: Callable[[Any], np.ndarray], pre, inputs, target: np.ndarray, metric: str, repeats: int = 5,
    seed: int = 0, score: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> dict:
    """Permutation importance for any learner on its computed input (a view, the tensors, or an ensemble's
    dict of views): each input feature's values are shuffled across rows in every view column it feeds --
    the same as shuffling the raw column, without recomputing the views. ``score(scores, target)``
    defaults to ``metric`` alone. Same result shape as ``permutation_importance``."""
    from loopml.evaluate.analysis import score_one

    score = score or (lambda s, t: score_one(pre, s, t, metric))
    target = np.asarray(target)
    rng = np.random.default_rng(seed)
    if len(target) > MAX_IMPORTANCE_ROWS:
        keep = np.sort(rng.choice(len(target), MAX_IMPORTANCE_ROWS, replace=False))
        inputs, target = take_inputs(inputs, keep), target[keep]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0

    def metric_of(x) -> float:
        return float(score(np.asarray(predict(x)), target))

    try:
        baseline = metric_of(inputs)
    except (KeyError, ValueError):  # a metric the rows cannot define (roc_auc with one class present)
        return {"metric": metric, "baseline": None, "repeats": repeats, "rows": len(target), "features": [],
                "unavailable": f"{metric} cannot be computed on these rows (only one class present?)"}
    slots = _feature_slots(inputs)
    features = []
    for column in [c for c in pre.features if c in slots]:
        drops = [sign * (baseline - metric_of(_permuted(inputs, slots[column], rng.permutation(len(target)))))
                 for _ in range(repeats)]
        features.append({"feature": column, "mean": float(np.mean(drops)), "std": float(np.std(drops)),
                         "drops": [float(d) for d in drops]})
    features.sort(key=lambda f: -f["mean"])
    return {"metric": metric, "baseline": baseline, "repeats": repeats, "rows": len(target), "features": features}


def learner_importance(
    learner, pre, frame, target: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float] | None, metric: str,
    repeats: int = 5, seed: int = 0, inputs_fn: Callable | None = None,
) -> dict:
    """``inputs_importance`` for the rows of a raw frame (at most MAX_IMPORTANCE_ROWS of them, seeded)."""
    target = np.asarray(target)
    if len(frame) > MAX_IMPORTANCE_ROWS:  # sample before computing the views
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), MAX_IMPORTANCE_ROWS, replace=False))
        frame, target = frame.iloc[keep], target[keep]
    inputs = learner_inputs(learner, pre, frame, inputs_fn)
    return inputs_importance(learner.predict_scores, pre, inputs, target, metric, repeats, seed, score)


def explain_any(model, frame, n_steps: int = 32) -> list[dict]:
    """Per-row attributions for any model: integrated gradients for a network, the learner's own
    ``contributions`` (TreeSHAP for trees, coefficient x value for linear models) summed per input
    feature otherwise; a learner with neither is a LoopmlError naming it."""
    from loopml.errors import LoopmlError

    network = getattr(model, "network", None)
    pre = model.preprocessor
    if network is not None:
        return explain_rows(network, pre, frame, n_steps)
    learner = model.learner
    rows = contribution_rows(learner, pre, learner_inputs(learner, pre, frame, getattr(model, "inputs", None)), frame)
    if rows is None:
        name = getattr(learner, "registered_name", type(learner).__name__)
        raise LoopmlError(f"the {name} learner gives no per-row attributions (no contributions, no gradients); "
                          "its permutation importance (in the model's report) shows what it relies on")
    return rows


def contribution_rows(learner, pre, inputs, frame) -> list[dict] | None:
    """Rows like ``explain_rows`` gives, from ``learner.contributions(inputs)`` summed per input feature
    (a TableView's ``sources``, a SparseView's ``blocks``); None when the learner has none."""
    contributions = learner.contributions(inputs)
    if contributions is None:
        return None
    labels, proba = pre.target.decode(np.asarray(learner.predict_scores(inputs)))
    view = next(iter(inputs.values())) if _is_multi(inputs) and len(inputs) == 1 else inputs  # a bagged member's
    slots = _feature_slots(view)
    width = _view_width(view)
    per_row = _per_class_contributions(np.asarray(contributions, dtype=np.float64), pre, proba, len(frame), width)
    sources = _column_sources(slots, width)
    rows = []
    for i in range(len(frame)):
        values = per_row[i]
        sign = 1.0
        if pre.target.kind == "binary" and labels[i] != pre.target.classes[1]:
            sign = -1.0  # one score explains "towards the positive class": flip for a negative prediction
        features = dict.fromkeys([c for c in pre.features if c in slots], 0.0)
        for column, source in enumerate(sources):
            if source is not None:
                features[source] += sign * float(values[column])
        rows.append({"row": int(frame.index[i]), "prediction": labels[i].item() if hasattr(labels[i], "item") else labels[i],
                     "probability": float(proba[i].max()) if proba is not None else None,
                     "features": features, "bias": sign * float(values[-1]), "method": "contributions",
                     "tokens": {}, "pixels": {}})
    return rows


def _per_class_contributions(values: np.ndarray, pre, proba, n: int, width: int) -> np.ndarray:
    """(n, columns + 1) for the predicted class. Multi-class contributions come as (n, columns + 1, K)
    (the trees' convention), flat class-major (n, K * (columns + 1)) as LightGBM gives them, or already
    for the predicted class (n, columns + 1) (linear models)."""
    if pre.target.kind != "category":
        return values.reshape(n, -1)
    k = len(pre.target.classes)
    if values.ndim == 2 and values.shape[1] == width + 1:  # already the predicted class's (linear models)
        return values
    if values.ndim == 2 and values.shape[1] == k * (width + 1):
        values = values.reshape(n, k, width + 1).transpose(0, 2, 1)
    if values.ndim != 3 or values.shape[2] != k:
        raise ValueError(f"contributions of shape {values.shape} for {k} classes and {width} view columns")
    return values[np.arange(n), :, proba.argmax(1)]


def _column_sources(slots: dict[str, list[tuple]], width: int) -> list[str | None]:
    """The input feature behind each of the ``width`` columns of a (single) view, in column order."""
    sources: list[str | None] = [None] * width
    for feature, where in slots.items():
        for kind, _key, place in where:
            if kind == "table":
                sources[place] = feature
            elif kind == "sparse":
                for c in range(place[0], min(place[1], width)):
                    sources[c] = feature
    return sources


def _view_width(inputs) -> int:
    from loopml.features.views import SparseView, TableView

    if isinstance(inputs, TableView):
        return len(inputs.columns)
    if isinstance(inputs, SparseView):
        return int(inputs.x.shape[1])
    raise TypeError(f"per-row contributions need one table or sparse view, got {type(inputs).__name__}")
