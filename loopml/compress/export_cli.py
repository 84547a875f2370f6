"""``loopml export MODEL --format onnx|torchscript -o DIR``: the network, preprocessing.json and a standalone example."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loopml.registry.cli import StoreOpt


def export_command(
    model: Annotated[str, typer.Argument(help="Model directory, or NAME@alias / NAME:version from the registry.",
                                         metavar="MODEL")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (absent or empty; see --force).")],
    fmt: Annotated[str, typer.Option("--format", help="onnx (model.onnx) or torchscript (model.pt).")] = "onnx",
    force: Annotated[bool, typer.Option("--force", help="Replace the folder of an earlier export.")] = False,
    store: StoreOpt = None,
) -> None:
    """Export a network model: the network (ONNX or TorchScript), its fitted preprocessing as JSON and a
    standalone predict script (numpy + onnxruntime, + tokenizers for text) that reproduces loopml's predictions."""
    import loopml
    from loopml.compress.export import check_exportable, check_format, check_output, export_model

    check_format(fmt)
    check_output(output, force)  # before loading: a refused folder costs nothing
    m = loopml.load(model, store=store)
    check_exportable(m)
    result = export_model(m, output, fmt, force)
    typer.echo(f"exported to {result.folder}: {', '.join(result.files)}")
    verdict = "matches" if result.max_diff <= 1e-4 else "DIFFERS from"
    typer.echo(f"checked: the {fmt} network {verdict} loopml's scores (max |difference| {result.max_diff:.1e})")
    for note in result.notes:
        typer.echo(f"note: the standalone example does not cover {note}; the exported network still does")
