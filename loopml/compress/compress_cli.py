"""``loopml compress MODEL --quantize dynamic-int8|static-int8|fp16 [-o DIR] [--register NAME]``.

Thin: checks the arguments (before loading anything), opens the model and its store, and calls
``loopml.compress.quantize.compress``, which writes the new bundle atomically and prints the
trade-off table, one line per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loopml.registry.cli import ArtifactsOpt, StoreOpt


def compress_command(
    model: Annotated[str, typer.Argument(help="Model directory, or NAME@alias / NAME:version from the registry.",
                                         metavar="MODEL")],
    quantize: Annotated[str | None, typer.Option(
        "--quantize", help="dynamic-int8 (int8 weights, CPU), static-int8 (int8 weights and activations, calibrated "
                           "on training rows) or fp16 (float16, for GPUs).")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Folder of the new model (default: MODEL-METHOD beside a model folder, or "
                               "./compressed/NAME-vN-METHOD for a registered version).")] = None,
    register: Annotated[str | None, typer.Option(
        help="Register the compressed model as a new version of NAME (its parent: the original's version).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output model folder.")] = False,
    data: Annotated[str | None, typer.Option(
        "--data", "-d", help="The training file, when the one the model recorded moved (or it was trained in memory).")]
    = None,
    store: StoreOpt = None, artifacts: ArtifactsOpt = None,
) -> None:
    """Quantise a network model into a new, smaller model, with its measured trade-off (size, latency, metric)."""
    import loopml
    from loopml.compress.quantize import check_method, check_output, check_quantizable, compress
    from loopml.errors import LoopmlError
    from loopml.registry import Store
    from loopml.registry.store import REF, check_name

    if quantize is None:
        raise LoopmlError("nothing to do: pass --quantize dynamic-int8, static-int8 or fp16")
    method = check_method(quantize)
    if register is not None:
        check_name(register)
    registered = not Path(model).exists() and REF.match(model) is not None
    if not registered and not Path(model).is_dir():
        raise LoopmlError(f"model not found: {model} (a model directory, or NAME@alias / NAME:version)")
    if output is None and not registered:
        output = Path(model).resolve().with_name(f"{Path(model).resolve().name}-{method}")
    if output is not None:
        check_output(output, force)
    opened = Store(store, artifacts) if registered or register is not None else None
    if registered:
        version = opened.resolve(model)
        folder, source = Path(version["path"]), {"name": version["name"], "version": int(version["version"])}
        output = output or Path("compressed") / f"{version['name']}-v{version['version']}-{method}"
        check_output(output, force)
    else:
        folder, source = Path(model), {"folder": Path(model).resolve().name}
    original = loopml.load(folder)
    check_quantizable(original)
    result = compress(original, folder, source, method, output, force=force, data=data, store=opened,
                      register=register, echo=typer.echo)
    typer.echo(f"compressed model: {result.path} (trade-off table in compress.json and report.html there)")
    if result.version is not None:
        parent = result.version.get("parent_version")
        typer.echo(f"registered {result.version['name']}:{result.version['version']}"
                   + (f" (parent version {parent})" if parent else ""))
