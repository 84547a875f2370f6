"""``loopml compress MODEL --quantize dynamic-int8|static-int8|fp16 [-o DIR] [--register NAME]``.

Thin: checks the arguments (before loading anything), opens the model and its store, and calls
``loopml.compress.quantize.compress`` (``--prune``: ``loopml.compress.prune.compress_pruned``, which prunes,
fine-tunes, then quantises when asked), which writes the new bundle atomically and prints the
trade-off table, one line per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.registry.cli import ArtifactsOpt, StoreOpt


def compress_command(
    model: Annotated[str, typer.Argument(help="Model directory, or NAME@alias / NAME:version from the registry.",
                                         metavar="MODEL")],
    quantize: Annotated[str | None, typer.Option(
        "--quantize", help="dynamic-int8 (int8 weights, CPU), static-int8 (int8 weights and activations, calibrated "
                           "on training rows) or fp16 (float16, for GPUs).")] = None,
    prune: Annotated[float | None, typer.Option(
        "--prune", metavar="FRACTION", help="Prune this fraction of the network (0 < FRACTION < 1): the smallest "
                                            "weights (magnitude), or with --structured whole units and channels; then "
                                            "fine-tune; then quantise when --quantize is given too.")] = None,
    structured: Annotated[bool, typer.Option(
        "--structured", help="With --prune: remove hidden units and conv channels (the network shrinks).")] = False,
    fine_tune_epochs: Annotated[int, typer.Option(
        "--fine-tune-epochs", help="With --prune: epochs of fine-tuning on the training split (early stopping on "
                                   "validation; 0: none).")] = 3,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Folder of the new model (default: MODEL-METHOD beside a model folder, or "
                               "./compressed/NAME-vN-METHOD for a registered version).")] = None,
    register: Annotated[str | None, typer.Option(
        help="Register the compressed model as a new version of NAME (its parent: the original's version).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output model folder.")] = False,
    data: Annotated[str | None, typer.Option(
        "--data", "-d", help="The training file, when the one the model recorded moved (or it was trained in memory).")]
    = None,
    distill: Annotated[bool, typer.Option(
        "--distill", help="Train a small student network on this model's soft targets (see --student).")] = False,
    student: Annotated[str | None, typer.Option(
        help="With --distill: bag or bilstm (loopml's text encoders), mlp (the default network), or a YAML "
             "training config whose target is the teacher's.")] = None,
    unlabelled: Annotated[str | None, typer.Option(
        help="With --distill: more rows (the teacher's input columns, no target needed) for the teacher to label.")]
    = None,
    temperature: Annotated[float, typer.Option(help="With --distill: the softmax temperature of the soft targets.")]
    = 2.0,
    alpha: Annotated[float, typer.Option(
        help="With --distill: the weight of the hard labels' loss (1 - alpha: the soft targets').")] = 0.5,
    student_init: Annotated[str, typer.Option(
        help="With --distill: where the student's token embeddings start: random, teacher-tokens (each token of "
             "a pretrained teacher's vocabulary through the teacher) or teacher-input (its input embeddings); "
             "teacher-* also gives the student the teacher's tokenizer.")] = "random",
    store: StoreOpt = None, artifacts: ArtifactsOpt = None,
) -> None:
    """Quantise or prune a network model into a new, smaller model, with its measured trade-off (size, latency, metric)."""
    import loopml
    from loopml.compress.quantize import check_method, check_quantizable, compress
    from loopml.errors import LoopmlError

    _check_combination(distill=distill, quantize=quantize, prune=prune, structured=structured,
                       fine_tune_epochs=fine_tune_epochs, student=student, unlabelled=unlabelled,
                       temperature=temperature, alpha=alpha, student_init=student_init)
    if distill:
        from loopml.compress.distill import distill_command

        return distill_command(model, student, unlabelled=unlabelled, temperature=temperature, alpha=alpha,
                               output=output, register=register, force=force, data=data, store=store,
                               artifacts=artifacts, echo=typer.echo, init=student_init)
    if quantize is None and prune is None:
        raise LoopmlError("nothing to do: pass --quantize dynamic-int8, static-int8 or fp16, --prune FRACTION, "
                          "or --distill")
    method = check_method(quantize) if quantize is not None else None
    label = method
    if prune is not None:  # prune, fine-tune, then quantise when asked (loopml/compress/prune.py)
        from loopml.compress.prune import check_fraction, label_of

        if fine_tune_epochs < 0:
            raise LoopmlError(f"--fine-tune-epochs must be 0 or more; got {fine_tune_epochs}")
        label = label_of(check_fraction(prune), structured, method)
    elif structured:
        raise LoopmlError("--structured goes with --prune FRACTION")
    folder, source, output, opened = open_source(model, label, output, force, register, store, artifacts)
    original = loopml.load(folder)
    if prune is not None:
        from loopml.compress.prune import check_prunable, compress_pruned

        check_prunable(original)
        result = compress_pruned(original, folder, source, prune, output, structured=structured, epochs=fine_tune_epochs,
                                 quantize=method, force=force, data=data, store=opened, register=register,
                                 echo=typer.echo)
    else:
        check_quantizable(original)
        result = compress(original, folder, source, method, output, force=force, data=data, store=opened,
                          register=register, echo=typer.echo)
    echo_result(result, "compressed model", typer.echo)


def open_source(model: str, label: str, output: Path | None, force: bool, register: str | None, store: str | None,
                artifacts: str | None) -> tuple[Path, dict, Path, Any]:
    """(model folder, what it is, output folder, store or None) for MODEL (a folder, or NAME@alias / NAME:version),
    every check done before the model is loaded; the default output is named after the model and ``label``."""
    from loopml.compress.quantize import check_output
    from loopml.errors import LoopmlError
    from loopml.registry import Store
    from loopml.registry.store import REF, check_name

    if register is not None:
        check_name(register)
    registered = not Path(model).exists() and REF.match(model) is not None
    if not registered and not Path(model).is_dir():
        raise LoopmlError(f"model not found: {model} (a model directory, or NAME@alias / NAME:version)")
    if output is None and not registered:
        output = Path(model).resolve().with_name(f"{Path(model).resolve().name}-{label}")
    if output is not None:
        check_output(output, force, None if registered else Path(model))
    opened = Store(store, artifacts) if registered or register is not None else None
    if not registered:
        return Path(model), {"folder": Path(model).resolve().name}, output, opened
    version = opened.resolve(model)
    folder = Path(version["path"])
    output = output or Path("compressed") / f"{version['name']}-v{version['version']}-{label}"
    check_output(output, force, folder)
    return folder, {"name": version["name"], "version": int(version["version"])}, output, opened


def echo_result(result, what: str, echo: Any) -> None:
    echo(f"{what}: {result.path} (trade-off table in compress.json and report.html there)")
    if result.version is not None:
        parent = result.version.get("parent_version")
        echo(f"registered {result.version['name']}:{result.version['version']}"
             + (f" (parent version {parent})" if parent else ""))


def _check_combination(*, distill: bool, quantize: str | None, prune: float | None, structured: bool,
                       fine_tune_epochs: int, student: str | None, unlabelled: str | None, temperature: float,
                       alpha: float, student_init: str = "random") -> None:
    """Options that the chosen method would silently ignore are an error, before anything is loaded."""
    from loopml.compress.prune import DEFAULT_FINE_TUNE_EPOCHS
    from loopml.errors import LoopmlError

    if distill:
        if quantize is not None:
            raise LoopmlError("--distill trains a new network; quantise the student in a second compress run")
        if prune is not None or structured or fine_tune_epochs != DEFAULT_FINE_TUNE_EPOCHS:
            raise LoopmlError("--distill trains a new network; prune the student (--prune, --structured, "
                              "--fine-tune-epochs) in a second compress run")
        return
    given = [flag for flag, used in (("--student", student is not None), ("--unlabelled", unlabelled is not None),
                                     ("--temperature", temperature != 2.0), ("--alpha", alpha != 0.5),
                                     ("--student-init", student_init != "random")) if used]
    if given:
        raise LoopmlError(f"{given[0]} goes with --distill")
    if prune is None and fine_tune_epochs != DEFAULT_FINE_TUNE_EPOCHS:
        raise LoopmlError("--fine-tune-epochs goes with --prune FRACTION")
