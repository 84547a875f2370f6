"""``loopml pretrain --data unlabelled.csv --column text -o enc/ [--method mlm|scarf|simclr]``.

Thin: checks the arguments and the output folder (before reading anything large), reads the table,
picks the method (``--method``, or from the columns: text -> mlm, images -> simclr, else scarf),
claims ``<output>.partial`` for the checkpoints and calls the method (see loopml/pretrain/__init__.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def pretrain_command(
    data: Annotated[Path, typer.Option("--data", "-d", help="Unlabelled CSV/TSV/Parquet/JSONL file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the pretrained encoder to.")],
    column: Annotated[list[str] | None, typer.Option(
        "--column", help="Column to pretrain on (repeat for several; default: every column).")] = None,
    method: Annotated[str | None, typer.Option(
        help="mlm (text), scarf (table rows) or simclr (images); default: from the columns' type.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the data.")] = None,
    max_time: Annotated[float | None, typer.Option(
        "--max-time", help="Stop after this many seconds of training (checked every step).")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="mlm: tokens per text.")] = None,
    vocab_size: Annotated[int | None, typer.Option("--vocab-size", help="mlm: WordPiece vocabulary size.")] = None,
    layers: Annotated[int | None, typer.Option(help="Transformer (or encoder) layers.")] = None,
    hidden: Annotated[int | None, typer.Option(help="Hidden size.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Rows per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    mask_prob: Annotated[float | None, typer.Option(
        "--mask-prob", help="mlm: fraction of tokens masked for prediction.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="scarf/simclr: the training config whose encoders are pretrained (its target is "
        "left out).")] = None,
    temperature: Annotated[float | None, typer.Option(help="scarf/simclr: NT-Xent temperature.")] = None,
    corruption: Annotated[float | None, typer.Option(
        help="scarf: fraction of each row's columns replaced by draws from their marginals (0.6).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing pretrained folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    delimiter: Annotated[str | None, typer.Option(help="Field delimiter (default: by extension).")] = None,
    header: Annotated[bool | None, typer.Option("--header/--no-header", help="Whether the first row names the columns.")]
    = None,
    names: Annotated[str | None, typer.Option(help="Comma-separated column names (files without a header).")] = None,
    encoding: Annotated[str | None, typer.Option(help="Text encoding, e.g. utf-8, cp1252.")] = None,
) -> None:
    """Self-supervised pretraining on unlabelled data: an encoder for `encoder: {type: pretrained, model: DIR}`."""
    from loopml.data.read import DataConfig, check_file, read_table
    from loopml.pretrain import (
        PretrainOptions,
        PretrainRequest,
        check_columns,
        check_not_empty,
        check_options,
        check_output,
        claim,
        default_method,
        method_function,
    )

    options = PretrainOptions(epochs=epochs, max_time=max_time, seed=seed, batch_size=batch_size, lr=lr,
                              layers=layers, hidden=hidden, max_length=max_length, vocab_size=vocab_size,
                              mask_prob=mask_prob, config=config, temperature=temperature, corruption=corruption)
    if method is not None:
        method_function(method)  # an unknown method is refused before the data is read
        check_options(method, options)
    source = check_file(data, allow_dir=True)  # a folder: root/<class>/<file> images (simclr), labels left out
    check_output(output, overwrite, resume, inputs=(source,))
    cfg = {"delimiter": delimiter, "header": header, "encoding": encoding,
           "names": [n.strip() for n in names.split(",")] if names else None}
    frame = read_table(source, DataConfig(**{k: v for k, v in cfg.items() if v is not None}))
    columns = list(dict.fromkeys(column or [c for c in frame.columns if not (source.is_dir() and c == "label")]))
    check_columns(frame, columns)
    if column:
        check_not_empty(frame, columns)
    if method is None:
        method = default_method(frame, columns)
        method_function(method)
        check_options(method, options)
        typer.echo(f"method: {method} (from the columns; --method to choose)", err=True)
    run = method_function(method)
    held = claim(output, overwrite, resume)
    for note in held.notes:
        typer.echo(note, err=True)
    request = PretrainRequest(frame=frame, columns=columns, output=output, options=options,
                              checkpoints=held.checkpoints, resume=resume, progress=not quiet,
                              echo=lambda line: typer.echo(line, err=True),
                              source={"data": str(source), "rows": len(frame)})
    keep = lambda: (held.checkpoints / "last.safetensors").exists()  # noqa: E731
    try:
        summary = run(request)
    except KeyboardInterrupt:
        held.release(keep_checkpoints=keep())
        typer.echo(f"interrupted; continue with the same command plus --resume (checkpoint in {held.checkpoints})",
                   err=True)
        raise typer.Exit(130) from None
    except BaseException:
        held.release(keep_checkpoints=keep())
        raise
    held.release(keep_checkpoints=False)
    typer.echo(f"pretrained encoder saved to {output} ({summary.get('description', method)})")
    if summary.get("usage"):
        typer.echo(f"use it with: {summary['usage']}")
