"""``loopml gate CANDIDATE --against NAME@production --data test.csv``: the CI gate.

Both models are scored on the same labelled file; the candidate passes when its metric beats the champion's by at
least the margin (or when there is no champion yet). Exit 0 pass, 1 fail, 2 bad input, as one line each."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated

import typer

from loopml.errors import LoopmlError

#: the metrics the loop's own gate knows (loopml.loop.policy.Gate)
METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "f1", "roc_auc", "r2")


def gate(candidate: str, against: str, data: Path, metric: str = "accuracy", margin: float = 0.0,
         store: str | None = None) -> dict:
    """{passed, reason, candidate, champion} with both models' metric on ``data``."""
    import loopml
    from loopml.errors import did_you_mean

    if metric not in METRICS:
        raise LoopmlError(f"--metric {metric!r} is not one of {', '.join(METRICS)}{did_you_mean(metric, METRICS)}")
    if not data.is_file():
        raise LoopmlError(f"--data file not found: {data}")
    if not math.isfinite(margin):
        raise LoopmlError(f"--margin must be a finite number (got {margin})")
    challenger = loopml.load(candidate, store=store)
    score = _metric(challenger.evaluate(data), metric, candidate)
    try:
        champion = loopml.load(against, store=store)
    except LoopmlError as e:
        # a near miss ("did you mean") is a typo in --against, not a first version: passing it would promote anything
        if "alias" not in str(e) and "no model" not in str(e) or "(did you mean" in str(e):
            raise
        return {"passed": True, "reason": f"no champion ({e}): the first version passes", "metric": metric,
                "candidate": score, "champion": None}
    best = _metric(champion.evaluate(data), metric, against)
    passed = score >= best + margin
    verdict = "passes" if passed else "fails"
    return {"passed": passed, "metric": metric, "candidate": score, "champion": best, "margin": margin,
            "reason": f"{candidate} {verdict}: {metric} {score:.4f} vs {against} {best:.4f} (margin {margin:g})"}


def _metric(metrics: dict, metric: str, ref: str) -> float:
    if metric not in metrics or metrics[metric] is None:
        raise LoopmlError(f"{ref} has no {metric} on this data (it has {', '.join(sorted(metrics))})")
    return float(metrics[metric])


def gate_command(
    candidate: Annotated[str, typer.Argument(help="The candidate: a model directory or NAME:version.")],
    against: Annotated[str, typer.Option(help="The champion, e.g. NAME@production.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled file both models are scored on.")],
    metric: Annotated[str, typer.Option(help=f"One of {', '.join(METRICS)}.")] = "accuracy",
    margin: Annotated[float, typer.Option(help="How much the candidate must beat the champion by.")] = 0.0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the decision as JSON here.")] = None,
    store: Annotated[str | None, typer.Option(help="Store URL (default: $LOOPML_STORE).")] = None,
) -> None:
    """Gate a candidate against the current production version; exit 1 when it does not pass."""
    if output is not None and (output.is_dir() or not output.parent.is_dir()):
        raise LoopmlError(f"--output {output} must be a file in an existing folder")
    decision = gate(candidate, against, data, metric, margin, store)
    if output is not None:
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(json.dumps(decision, indent=2), encoding="utf-8")
        os.replace(tmp, output)
    typer.echo(decision["reason"])
    if not decision["passed"]:
        raise typer.Exit(1)
