"""Prune a network model, fine-tune it briefly, and write it as a new bundle with its measured trade-off.

Two kinds (``loopml compress MODEL --prune FRACTION [--structured]``):

- magnitude (the default): the FRACTION of Linear, Conv and Embedding weights with the smallest
  |value|, over the whole network at once (``torch.nn.utils.prune.global_unstructured``, L1), are
  set to zero. The masks stay on during the fine-tune (pruned weights stay zero) and are then folded
  in (``prune.remove``): the bundle holds an ordinary network whose weights are mostly zero. It is
  stored dense, so it is no smaller and no faster (the trade-off table shows it): it is a step
  towards a sparse format or int8 (``--quantize``), not a gain in itself.
- structured (``--structured``): hidden units of the combiner MLP and the channels of image encoders
  (cnn, resnet) are physically removed, FRACTION of each layer (``torch-pruning``: the same units go
  from a layer's outputs, its batch/layer norm and the next layer's inputs). The network really
  shrinks. Text, audio and pretrained encoders are kept whole (torch-pruning cannot trace the masked
  poolings and packed LSTMs of the text encoders, and attention-head pruning is not done here); the
  MLP above them is still pruned. The input columns and the head's outputs never change.
  The bundle records the resized layers ({module path: {tensor: shape}},
  ``network_shapes.json``); the network learner rebuilds the config's network, resizes those layers
  and then loads the safetensors weights (loopml/models/model.py: ``resize_modules``).

Both then fine-tune for a few epochs on the original training split with the model's own Trainer and
training config, early stopping on its validation split (its monitored metric, the best epoch kept).
``--quantize`` after it quantises the pruned, fine-tuned network (quantize.py).
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Any

from loopml.errors import LoopmlError

DEFAULT_FINE_TUNE_EPOCHS = 3
#: encoders whose layers structured pruning may resize (torch-pruning traces them reliably)
STRUCTURED_ENCODERS = ("passthrough", "dense", "embedding", "cnn", "resnet", "airnet")
#: rows the dependency graph of torch-pruning is traced on
TRACE_ROWS = 8


def check_fraction(value: float) -> float:
    """``value`` if it is a fraction strictly between 0 and 1; else a LoopmlError."""
    if not 0.0 < value < 1.0:
        raise LoopmlError(f"--prune must be a fraction between 0 and 1 (exclusive), e.g. 0.5; got {value:g}")
    return float(value)


def check_prunable(model) -> None:
    """Only a network has weights to prune: anything else is a one-line error saying what is supported."""
    from loopml.compress.quantize import require_network

    require_network(model, "pruning", " (already compressed to an ONNX graph: prune the original)")


def label_of(fraction: float, structured: bool, method: str | None = None) -> str:
    """The compression's name in tables and folder names: prune-structured-0.5, prune-magnitude-0.5+dynamic-int8."""
    return f"prune-{'structured' if structured else 'magnitude'}-{fraction:g}" + (f"+{method}" if method else "")


# -- counting ----------------------------------------------------------------------------------------------------
def _prunable_modules(network) -> list:
    from torch import nn

    return [m for m in network.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding))]


def weight_counts(network) -> dict:
    """Parameters and zeros: of the whole network, and of its Linear/Conv/Embedding weights (what magnitude prunes)."""
    import torch

    with torch.no_grad():
        weights = [m.weight for m in _prunable_modules(network)]
        params = list(network.parameters())
        prunable, zeros = sum(w.numel() for w in weights), sum(int((w == 0).sum()) for w in weights)
        total, zero_total = sum(p.numel() for p in params), sum(int((p == 0).sum()) for p in params)
    return {"parameters": total, "zero_parameters": zero_total, "prunable_weights": prunable, "zero_weights": zeros,
            "sparsity": zeros / max(prunable, 1)}


# -- pruning -----------------------------------------------------------------------------------------------------
def magnitude_prune(network, fraction: float) -> list:
    """Masks zeroing the ``fraction`` smallest |weights| over every Linear/Conv/Embedding weight; the masked pairs."""
    from torch.nn.utils import prune

    pairs = [(m, "weight") for m in _prunable_modules(network)]
    total = sum(m.weight.numel() for m, _ in pairs)
    # a count rounded up, so the sparsity reached is never under the one asked for (a fraction rounds to nearest)
    prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=math.ceil(fraction * total))
    return pairs


def fold_masks(pairs: list) -> None:
    """The masks multiplied into the weights and taken off: an ordinary network, no hooks, no extra tensors."""
    from torch.nn.utils import prune

    for module, name in pairs:
        prune.remove(module, name)


def structured_prune(network, encoder_types: list[str], example: dict, fraction: float) -> dict:
    """Remove ``fraction`` of the units/channels of every prunable layer (torch-pruning); what was kept whole."""
    from loopml.models.image_encoders import PatchWhitening

    try:
        import torch_pruning as tp
    except ImportError:
        raise LoopmlError("structured pruning needs torch-pruning: pip install torch-pruning "
                          "(or pip install loopml[compress])") from None
    kept = [t for t in encoder_types if t not in STRUCTURED_ENCODERS]
    ignored = [network.head.linear]  # its outputs are the task's scores
    for encoder, kind in zip(network.encoders, encoder_types, strict=True):
        if kind not in STRUCTURED_ENCODERS:
            ignored += list(encoder.modules())
        # the airnet's whitening filters are fitted, not trained: its 2x2 conv keeps every channel
        ignored += [m for m in encoder.modules() if isinstance(m, PatchWhitening)]
    network.eval()  # tracing runs a forward pass: no batch-norm statistics may move
    try:
        # no torch.no_grad here: torch-pruning traces the graph through autograd
        with warnings.catch_warnings():  # its tracing notes ("Maximum recursive depth reached!") say nothing to a user
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(network, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                          pruning_ratio=fraction, ignored_layers=ignored,
                                          forward_fn=lambda module, inputs: module(inputs))
            pruner.step()
    # torch-pruning fails in its own ways (index errors while mapping concatenations, shape errors) on graphs it
    # cannot trace: one line naming it, not its traceback
    except (RuntimeError, IndexError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise LoopmlError(f"torch-pruning cannot prune this network ({type(e).__name__}: {str(e)[:160]}); "
                          "try magnitude pruning (without --structured)") from None
    return {"kept_whole_encoders": sorted(set(kept)), "per_layer_fraction": fraction,
            "importance": "L1 norm of each unit's weights, grouped over the layers it couples"}


def fine_tune(model, network, frames: dict, epochs: int) -> dict:
    """A few epochs of the model's own Trainer and training config on the original training split, early stopping
    on its validation split (the best epoch's weights kept)."""
    import torch

    from loopml.evaluate.assemble import epoch_metric_fn
    from loopml.train.run import check_monitor
    from loopml.train.trainer import TensorData, Trainer, default_callbacks

    if epochs <= 0:
        return {"epochs": 0}
    pre, config = model.preprocessor, model.config
    train, validation = (_labelled_rows(pre, frames.get(split)) for split in ("train", "validation"))
    if not len(train) or not len(validation):
        raise LoopmlError("fine-tuning needs the original training and validation rows; pass --fine-tune-epochs 0 "
                          "to prune without it")
    cfg = config.training.model_copy(update={"epochs": int(epochs)})
    monitor = check_monitor(config, pre.target.kind)
    stopping = cfg.early_stopping
    callbacks = default_callbacks(monitor, stopping.patience, stopping.min_delta, None, False)
    torch.manual_seed(cfg.seed)
    trainer = Trainer(network, cfg, callbacks, metric_fn=epoch_metric_fn(pre, monitor))
    history = trainer.fit(*(TensorData(pre.transform(f), pre.transform_target(f)) for f in (train, validation)))
    network.to("cpu").eval()
    best = next((cb for cb in callbacks if hasattr(cb, "best_epoch")), None)
    return {"epochs": int(epochs), "epochs_run": trainer.epoch, "best_epoch": getattr(best, "best_epoch", None),
            "monitor": monitor, "stop_reason": trainer.stop_reason or "epochs done", "train_rows": len(train),
            "validation_rows": len(validation), "seconds": round(trainer.elapsed, 3),
            "history": [{k: v for k, v in e.items() if isinstance(v, (int, float))} for e in history]}


def _labelled_rows(pre, frame):
    if frame is None or not len(frame):
        return frame if frame is not None else []
    frame = frame[frame[pre.target.column].notna()]
    return frame[~pre.rows_to_drop(frame)]


def prune_model(model, frames: dict, fraction: float, structured: bool, epochs: int):
    """(a new Model: ``model``'s config, preprocessing and reference with a pruned, fine-tuned copy of its network;
    what was done). ``model`` itself is left as it was."""
    from loopml.learners import Context
    from loopml.learners.network import NetworkLearner, build_network
    from loopml.models.model import changed_shapes

    check_fraction(fraction)
    check_prunable(model)
    network = copy.deepcopy(model.network).cpu().eval()
    before = weight_counts(network)
    facts: dict[str, Any] = {"method": label_of(fraction, structured), "kind": "structured" if structured else "magnitude",
                             "fraction": fraction}
    if structured:
        train = frames.get("train")
        rows = train if train is not None and len(train) else frames["validation"]
        example = model.preprocessor.transform(rows.head(TRACE_ROWS))
        encoder_types = [f.config.encoder.type for f in model.preprocessor.features.values()]
        facts.update(structured_prune(network, encoder_types, example, fraction))
        facts["fine_tune"] = fine_tune(model, network, frames, epochs)
    else:
        pairs = magnitude_prune(network, fraction)
        facts["fine_tune"] = fine_tune(model, network, frames, epochs)  # the masks keep pruned weights at zero
        fold_masks(pairs)
        facts["storage"] = "dense float32: a zero takes as much room and time as any weight (no size or speed gain)"
    after = weight_counts(network)
    facts.update(original=before, pruned=after, parameter_ratio=after["parameters"] / max(before["parameters"], 1))
    weights = model.network.state_dict().get("head.class_weights")
    class_weights = weights.tolist() if weights is not None and weights.numel() else None
    shapes = changed_shapes(build_network(model.preprocessor, model.config, class_weights), network.state_dict())
    facts["resized_layers"] = len(shapes)
    learner = NetworkLearner(model.learner.params, model.learner.task, Context(model.config, model.preprocessor))
    learner.network, learner.shapes = network, shapes
    learner.info = {**model.learner.info, "pruning": {k: v for k, v in facts.items() if k != "fine_tune"}}
    return _copy_with_learner(model, learner), facts


def _copy_with_learner(model, learner):
    out = type(model)(model.config)
    out.schema, out.preprocessor, out.reference = model.schema, model.preprocessor, model.reference
    out.metrics = copy.deepcopy(model.metrics)
    out.evaluation = copy.deepcopy(model.evaluation)
    out.history = list(model.history)
    out.info = {k: copy.deepcopy(v) for k, v in model.info.items() if k not in ("registry", "manifest")}
    out.learner = learner
    return out


def fact_lines(facts: dict) -> list[str]:
    """What pruning did, in printed lines (the sparsity and the parameter counts)."""
    a, b = facts["original"], facts["pruned"]
    out = [f"parameters: {a['parameters']:,} -> {b['parameters']:,} ({facts['parameter_ratio']:.2f}x); zero "
           f"Linear/Conv/Embedding weights: {b['zero_weights']:,} of {b['prunable_weights']:,} (sparsity "
           f"{b['sparsity']:.3f}, requested {facts['fraction']:g} {facts['kind']})"]
    if facts["kind"] == "magnitude":
        out.append(f"stored {facts['storage']}")
    else:
        kept = facts.get("kept_whole_encoders") or []
        out.append(f"{facts['resized_layers']} layer(s) resized" + (f"; kept whole: {', '.join(kept)} encoder(s)"
                                                                    if kept else ""))
    tune = facts.get("fine_tune", {})
    if tune.get("epochs"):
        out.append(f"fine-tuned {tune['epochs_run']} epoch(s) on {tune['train_rows']} training rows (best epoch "
                   f"{tune['best_epoch']} on validation {tune['monitor']}; {tune['stop_reason']})")
    return out


# -- the whole command ----------------------------------------------------------------------------------------
def compress_pruned(model, folder: Path, source: dict, fraction: float, output: Path, *, structured: bool = False,
                    epochs: int = DEFAULT_FINE_TUNE_EPOCHS, quantize: str | None = None, force: bool = False,
                    data: str | None = None, store: Any = None, register: str | None = None,
                    rounds: dict[int, int] | None = None, echo: Any = None, threads: int = 1):
    """Prune ``model`` (read from ``folder``), fine-tune it, optionally quantise it, and write the bundle ``output``
    with its trade-off table against ``model`` (compress.json, the report); prints the table, one line per row."""
    from loopml.compress.output import register_model, remeasure, sizes, write_model
    from loopml.compress.quantize import (
        Compressed,
        _copy_with_graph,
        check_method,
        check_output,
        original_splits,
        quantize_graph,
        temporary_workdir,
    )
    from loopml.compress.tradeoff import tradeoff
    from loopml.learners.base import Context
    from loopml.learners.onnx_network import OnnxNetworkLearner

    check_fraction(fraction)
    if quantize is not None:
        check_method(quantize)
    check_prunable(model)
    output = Path(output).expanduser()
    check_output(output, force, folder)
    frames = original_splits(model, source.get("name"), store, data)
    test_split = "test" if len(frames.get("test", [])) else "validation"
    test = frames[test_split]
    if not len(test):
        raise LoopmlError("the original model has no test or validation rows to measure the trade-off on")
    label = label_of(fraction, structured, quantize)
    pruned, facts = prune_model(model, frames, fraction, structured, epochs)
    facts = {**facts, "method": label, "from": source}
    with temporary_workdir() as work:
        if quantize is not None:
            quantized = quantize_graph(pruned, quantize, frames["train"], Path(work))
            facts["quantization"] = quantized.facts
            if "storage" in facts:
                facts["storage"] = f"dense {quantize} ONNX graph: zeros are still stored (any size gain is the quantisation's)"
            compressed = _copy_with_graph(pruned, quantized, quantize, facts, OnnxNetworkLearner, Context)
        else:
            compressed = pruned
        files = Path(work) / "learner"
        files.mkdir()
        compressed.learner.save(files)  # its own files (the original's network bytes are its learner files too)
        learner_bytes = sum(p.stat().st_size for p in files.rglob("*") if p.is_file())
    remeasure(compressed, model, frames)
    new_sizes = sizes(label, folder, model.info["manifest"], compressed, learner_bytes)
    engine = "onnxruntime" if quantize is not None else "torch fp32"
    table = {**tradeoff(model, compressed, test, test_split, new_sizes, rounds=rounds, threads=threads,
                        labels=("original (torch fp32)", f"compressed ({label}, {engine})")),
             "facts": facts, "pruning": {**{k: facts[k] for k in ("kind", "fraction", "original", "pruned", "parameter_ratio")},
                                         "summary": fact_lines(facts)[0]}}
    written = write_model(compressed, table, "compression", facts, output, force=force, echo=echo,
                          more_lines=fact_lines(facts))
    version = None
    if register is not None:
        version = register_model(store, register, written, source, method=label, kind="compressed",
                                 learner=compressed.learner.registered_name)
    return Compressed(written, table, version)
