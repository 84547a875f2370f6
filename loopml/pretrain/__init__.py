"""Self-supervised pretraining on unlabelled data: one ``loopml pretrain`` command, one method per data kind.

A method is a function ``run(request: PretrainRequest) -> dict`` (the summary written to
``pretrain.json`` in the output), registered in ``METHODS`` as ``"module:function"`` so the CLI
imports only the chosen one:

- ``mlm`` (loopml/pretrain/mlm.py): text columns, masked-language-model pretraining of a small BERT
  encoder with a WordPiece tokenizer trained on the same text; the output is a Hugging Face model
  directory that ``encoder: {type: pretrained, model: DIR}`` loads offline.
- ``scarf`` / ``simclr`` (loopml/pretrain/contrastive.py): tables and images.

The shared pieces live here: the request, the output folder's claim (locked, resumable, written
atomically at the end) and the choice of a default method from the columns.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml.errors import LoopmlError, did_you_mean

if TYPE_CHECKING:  # pandas only when a command runs: `loopml --help` must not import it
    import pandas as pd

#: method -> "module:function" taking a PretrainRequest and returning its summary dict
METHODS: dict[str, str] = {
    "mlm": "loopml.pretrain.mlm:run",
    "scarf": "loopml.pretrain.scarf:run",
    "simclr": "loopml.pretrain.simclr:run",
}
#: options (PretrainOptions fields) each method reads; any other given option is an error, not ignored
METHOD_OPTIONS: dict[str, set[str]] = {
    "mlm": {"epochs", "max_time", "seed", "batch_size", "lr", "layers", "hidden", "max_length", "vocab_size",
            "mask_prob"},
    "scarf": {"epochs", "max_time", "seed", "batch_size", "lr", "config", "temperature", "corruption"},
    "simclr": {"epochs", "max_time", "seed", "batch_size", "lr", "config", "temperature"},
}
#: the file in every pretrained output naming how it was made (and marking a folder --overwrite may replace)
SUMMARY = "pretrain.json"


@dataclass
class PretrainOptions:
    """Everything a method may read; None = the method's default."""

    epochs: int | None = None
    max_time: float | None = None
    seed: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    layers: int | None = None
    hidden: int | None = None
    max_length: int | None = None
    vocab_size: int | None = None
    mask_prob: float | None = None
    #: scarf/simclr: the training config whose encoders (and combiner) are pretrained, so `train` can load them
    config: Path | None = None
    #: scarf/simclr: NT-Xent temperature
    temperature: float | None = None
    #: scarf: fraction of each row's columns replaced by draws from their marginals
    corruption: float | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class PretrainRequest:
    frame: pd.DataFrame
    columns: list[str]
    output: Path
    options: PretrainOptions
    #: the folder checkpoints go to (``<output>.partial``), held by this process
    checkpoints: Path
    resume: bool = False
    progress: bool = True
    echo: Callable[[str], None] = print
    #: where the data came from, for pretrain.json
    source: dict = field(default_factory=dict)


def method_function(method: str) -> Callable[[PretrainRequest], dict]:
    if method not in METHODS:
        raise LoopmlError(f"unknown --method '{method}'{did_you_mean(method, METHODS)}: use {' | '.join(METHODS)}")
    module, _, name = METHODS[method].partition(":")
    return getattr(importlib.import_module(module), name)


def check_options(method: str, options: PretrainOptions) -> None:
    """Options the method would silently ignore are an error, before anything is read."""
    unused = sorted(set(options.given()) - METHOD_OPTIONS.get(method, set()))
    if unused:
        flag = "--" + unused[0].replace("_", "-")
        raise LoopmlError(f"{flag} does not apply to --method {method}")


def check_columns(frame: pd.DataFrame, columns: list[str]) -> None:
    for column in columns:
        if column not in frame.columns:
            raise LoopmlError(f"column '{column}' not found{did_you_mean(column, frame.columns)}; "
                              f"the columns are: {', '.join(map(str, frame.columns[:20]))}")


def check_not_empty(frame: pd.DataFrame, columns: list[str]) -> None:
    """A named column with no values at all is refused (else it reads as an empty table column: scarf)."""
    for column in columns:
        if frame[column].dropna().astype(str).str.strip().eq("").all():
            raise LoopmlError(f"column '{column}' is empty (no row has a value): nothing to pretrain on")


def default_method(frame: pd.DataFrame, columns: list[str]) -> str:
    """mlm for text columns, simclr for images, scarf for a table's other columns."""
    from loopml.data.infer import infer_feature_type

    kinds = {infer_feature_type(frame[c]) for c in columns}
    if kinds == {"text"}:
        return "mlm"
    if kinds == {"image"}:
        return "simclr"
    if "text" in kinds or "image" in kinds:
        raise LoopmlError(f"columns {', '.join(columns)} mix kinds ({', '.join(sorted(kinds))}): "
                          "pretrain text, images or a table's other columns separately, or pass --method")
    return "scarf"


def check_output(output: Path, overwrite: bool, resume: bool, inputs: tuple[Path, ...] = ()) -> None:
    """An output that cannot become the pretrained folder is refused before any work."""
    for parent in [output, *output.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == output else f"is inside the file {parent}"
            raise LoopmlError(f"output {output} {where}: give a folder path for -o")
    if any(output.resolve() == i.resolve() for i in inputs):
        raise LoopmlError(f"output {output} is the input file: choose another folder")
    if output.exists():
        if not overwrite:
            raise LoopmlError(f"output {output} already exists; choose another -o or pass --overwrite")
        if not (output / SUMMARY).is_file():
            raise LoopmlError(f"refusing to overwrite {output}: it is not a folder `loopml pretrain` wrote "
                              f"(no {SUMMARY})")


def claim(output: Path, overwrite: bool, resume: bool):
    """Lock ``<output>.partial`` for this process (see train/workdir.py); with ``resume`` it must hold a checkpoint."""
    from loopml.train.workdir import CHECKPOINT, LOCK, OutputClaim, _lock, _make_parents, checkpoint_dir

    partial = checkpoint_dir(output)
    made = _make_parents(output.parent)
    created = not partial.exists()
    partial.mkdir(parents=True, exist_ok=True)
    handle = _lock(partial, output)
    if handle is None:
        raise LoopmlError(f"output {output} is being written by another pretraining; choose another -o or wait")
    held = OutputClaim(output, partial, _lock=handle, _made=made)
    has_checkpoint = (partial / CHECKPOINT).exists()
    if resume and not has_checkpoint:
        held.release(keep_checkpoints=not created)
        raise LoopmlError(f"nothing to resume: no checkpoint in {partial}")
    if not resume:
        if has_checkpoint:
            held.notes.append(f"note: {partial} holds an interrupted run; starting over (pass --resume to continue it)")
        for item in partial.iterdir():
            if item.name != LOCK:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    return held
