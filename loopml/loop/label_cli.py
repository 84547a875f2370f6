"""``loopml label NAME``: the labelling queue in the terminal — show a case, read its true label, store it.

Labels are checked as the server's ``POST /v1/feedback`` checks them (a class of the target, or a
finite number in range) and written with the prediction id and the same snapshot (inputs, outputs,
version). Enter skips a row, ``:q`` quits (so does ``q`` unless it is one of the classes); end of input
(Ctrl-D) and Ctrl-C stop after the last whole write.
"""

from __future__ import annotations

import math
import re
import signal
import sys
import unicodedata
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from loopml.registry.cli import StoreOpt, existing_store

#: always quits: no class is typed with a leading colon
QUIT_KEY = ":q"
#: quit too, unless the target has a class of that name (then they are that label)
QUIT = {"q", "quit", "exit"}
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def label_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    n: Annotated[int, typer.Option("--n", help="How many queued predictions to offer (1..500).")] = 20,
    strategy: Annotated[str, typer.Option(help="uncertainty | drift | diverse | random.")] = "uncertainty",
    alias: Annotated[str, typer.Option(help="The alias whose version ranks the queue.")] = "production",
    store: StoreOpt = None,
) -> None:
    """Label the predictions that matter most: each queued row's inputs, prediction and why it is asked;
    type the true label (Enter skips, :q or Ctrl-D quits). Each label is stored as feedback at once."""
    import loopml
    from loopml.errors import LoopmlError
    from loopml.loop.queue import check_strategy, feedback_queue
    from loopml.registry.records import FeedbackExists

    if not 1 <= n <= 500:
        raise LoopmlError(f"--n must be between 1 and 500 (got {n})")
    check_strategy(strategy)
    s = existing_store(store)
    resolved = s.resolve(f"{name}@{alias}")
    model = loopml.load(resolved["path"])
    target = model.preprocessor.target
    rows = feedback_queue(s, name, n, strategy, alias, model=model, ranked_by=int(resolved["version"]))
    if not rows:
        typer.echo(f"nothing to label: {name} has no logged predictions without feedback")
        return
    what = f"classes: {', '.join(map(str, target.classes))}" if target.kind != "number" else "a number"
    typer.echo(f"{len(rows)} predictions of {name} to label by {strategy} — '{target.column}' ({what}); "
               f"Enter skips, {_quits(target)}")
    written = skipped = 0
    try:
        for i, row in enumerate(rows, 1):
            if s.labelled([row["prediction_id"]]):  # another labeller took it since the queue was read
                skipped += 1
                continue
            typer.echo(f"\n[{i}/{len(rows)}] {compact(row['inputs'])}")
            typer.echo(f"  version {row['model_version']} predicted {_visible(_prediction(row))} — "
                       f"{_visible(row['reason'])}")
            label = _ask(target)
            if label is _QUIT:
                break
            if label is _SKIP:
                skipped += 1
                continue
            if s.labelled([row["prediction_id"]]):
                typer.echo("  labelled meanwhile by someone else: not written twice")
                skipped += 1
                continue
            try:
                with _no_interrupt():  # the one write finishes (or never starts): nothing half-written
                    s.add_feedback(name, label, row["prediction_id"], row["inputs"],
                                   {"prediction": row["prediction"], "probabilities": row["probabilities"]},
                                   row["model_version"])
            except FeedbackExists:  # labelled between our check and our write (the dashboard, another labeller)
                typer.echo("  labelled meanwhile by someone else: not written twice")
                skipped += 1
                continue
            written += 1
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: {_count(written)} written, {skipped} skipped")
        raise typer.Exit(130) from None
    lead = "" if sys.stdin.isatty() else "\n"  # from a pipe nothing echoes the Enter: end the prompt's line
    typer.echo(f"{lead}{_count(written)} written, {skipped} skipped")


class _Marker:
    pass


_QUIT, _SKIP = _Marker(), _Marker()


def _ask(target: Any) -> object:
    """The checked label, ``_SKIP`` (Enter) or ``_QUIT`` (:q, q when no class is named so, end of input); asks
    again after a bad one."""
    while True:
        typer.echo("  label> ", nl=False)
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:  # end of input (Ctrl-D at a terminal: end its line; from a pipe the summary does)
            if sys.stdin.isatty():
                typer.echo("")
            return _QUIT
        text = line.strip()
        if not text:
            return _SKIP
        if text == QUIT_KEY:
            return _QUIT
        label, problem = check_label(target, text)
        if problem is None:  # a class named q is a label, not a way out
            return label
        if text.lower() in QUIT and not _shadowed(target):  # with a class q, 'Q' is a mistyped label, not a way out
            return _QUIT
        typer.echo(f"  {problem}; type it again, Enter skips, {_quits(target)}")


def _shadowed(target: Any) -> bool:
    """Whether a class is named like a quit word (q, quit, exit): then only :q quits, as the prompt says."""
    classes = target.classes if target.kind != "number" else []
    return any(str(c).strip().lower() in QUIT for c in classes)


def _quits(target: Any) -> str:
    """How to quit, as the prompt says it: ``q`` only where it is not a label."""
    return f"{QUIT_KEY} or Ctrl-D quits" if _shadowed(target) else f"{QUIT_KEY} (or q, Ctrl-D) quits"


def check_label(target: Any, text: str) -> tuple[object, str | None]:
    """A typed label as the server's feedback route accepts it: (label, None) or (None, why not)."""
    from loopml.data.validate import FLOAT32_MAX, NUMBER_RANGE

    if target.kind == "number":
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or (_NUMBER.fullmatch(text) is None and math.isfinite(value)):
            # float() also reads 1_000 and non-ASCII digits, which the server's JSON number never is
            return None, f"{text!r} is not a number ('{target.column}' is a number)"
        if not abs(value) <= FLOAT32_MAX:
            return None, f"{text!r} for '{target.column}' is not {NUMBER_RANGE}"
        return (int(value) if value.is_integer() and abs(value) < 2**53 else value), None
    known = target.class_of(text)  # by canonical key: 1, 1.0 and "1" are one class, as in training
    if known is None:
        return None, f"{text!r} is not a class of '{target.column}' ({', '.join(map(str, target.classes))})"
    return known, None


def compact(inputs: dict, width: int = 40) -> str:
    """``col=value`` pairs on one line, numbers in 4 significant digits, long text cut."""
    parts = []
    for col, value in (inputs or {}).items():
        if isinstance(value, float):
            shown = f"{value:.4g}" if math.isfinite(value) else str(value)
        elif value is None:
            shown = "∅"
        else:
            shown = _visible(str(value).replace("\n", " "))
            shown = shown if len(shown) <= width else shown[: width - 1] + "…"
        parts.append(f"{_visible(str(col))}={shown}")
    return "  ".join(parts)


# bidi overrides and isolates: they reorder what the labeller reads on screen
_BIDI = set("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _visible(text: str) -> str:
    """Logged inputs are anyone's text: control characters (escape sequences, CR, backspace, bell) and bidi
    overrides would rewrite the labeller's terminal, so they are shown as escapes."""
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI else ch for ch in text)


def _prediction(row: dict) -> str:
    probabilities = row.get("probabilities")  # {class: p}, as the server logs them
    if isinstance(probabilities, dict) and probabilities:
        return f"{row['prediction']} (p={max(probabilities.values()):.2f})"
    value = row.get("prediction")
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _count(k: int) -> str:
    return f"{k} label{'s' if k != 1 else ''}"


@contextmanager
def _no_interrupt():
    """Ctrl-C during the block is held until it ends (main thread only; elsewhere nothing to hold)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt
