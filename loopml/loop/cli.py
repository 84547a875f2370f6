"""``loopml monitor`` and ``loopml retrain``: the same functions the server's background task calls."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from loopml.registry.cli import StoreOpt, _table, existing_store

#: the server's --media-root: feedback image/audio paths are relative to it
MediaRootOpt = Annotated[str | None, typer.Option(help="Folder the feedback's image/audio paths are relative to (the "
                                                       "server's --media-root; default: the policy's data.media_root).")]


def monitor_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias: Annotated[str, typer.Option(help="The alias whose version's reference is compared.")] = "production",
    window: Annotated[float | None, typer.Option(help="Only predictions of the last this many seconds.")] = None,
    last: Annotated[int | None, typer.Option(help="Only the last N predictions.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write an HTML drift report here.")] = None,
    store: StoreOpt = None,
) -> None:
    """Input and prediction drift of the logged traffic, and live metrics from feedback (stored per window)."""
    from loopml.errors import LoopmlError
    from loopml.loop.monitor import monitor

    # 0 would silently mean "the whole log" (and a negative --window an empty future one): refuse both
    if last is not None and last < 1:
        raise LoopmlError(f"--last must be at least 1 (got {last})")
    if window is not None and not window > 0:
        raise LoopmlError(f"--window must be a positive number of seconds (got {window})")
    if report is not None and report.is_dir():
        raise LoopmlError(f"--report {report} is a folder; give the HTML file to write, e.g. {report / 'drift.html'}")
    s = existing_store(store)
    since = time.time() - window if window else None
    result = monitor(s, name, alias, since=since, last=last)
    rows = [[col, d["kind"], d["psi"], d["noise"], d.get("ks"), d.get("wasserstein"), d.get("chi2_p"), d["level"]]
            for col, d in result["columns"].items()]
    if "predictions" in result:
        p = result["predictions"]
        rows.append(["(predictions)", p["kind"], p["psi"], p["noise"], p.get("ks"), p.get("wasserstein"), p.get("chi2_p"),
                     p["level"]])
    if result.get("status", "ok") != "ok":  # no table of empty rows: say why there is none
        typer.echo(f"{name}:{result['version']} — {result['rows']} predictions; no drift computed: "
                   f"{result['status']} in this window")
    else:
        _table(f"{name}:{result['version']} — {result['rows']} predictions, drift: {'YES' if result['drift'] else 'no'}",
               ["column", "kind", "PSI", "noise", "KS", "Wasserstein/σ", "χ² p", "level"], rows)
    typer.echo(f"live (feedback in this window): {describe_live(result['live'])}")
    if report:
        from loopml.loop.report import drift_report

        try:
            path = drift_report(s, name, result).write(report)
        except OSError as e:  # an unwritable place: one line, not a traceback (the window is recorded)
            raise LoopmlError(f"cannot write the drift report to {report}: {e.strerror or e}") from None
        typer.echo(f"drift report: {path}")
    from loopml.loop.worker_cli import loop_lines

    for line in loop_lines(s, name):  # the unattended loop: worker alive?, cycles, schedule, last decisions
        typer.echo(line)


def retrain_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    policy: Annotated[Path | None, typer.Option(help="Policy YAML (trigger, data, gate, train overrides).")] = None,
    if_triggered: Annotated[bool, typer.Option("--if-triggered", help="Only when the policy's trigger fires.")] = False,
    watch: Annotated[float | None, typer.Option(help="Keep checking the trigger every this many seconds.")] = None,
    media_root: MediaRootOpt = None,
    store: StoreOpt = None,
) -> None:
    """Train a candidate on the champion's data + feedback, gate it against the champion, promote if it wins.

    One retrain per model at a time (a second one says so and exits 0); unusable feedback rows are
    skipped and counted."""
    from loopml.errors import LoopmlError
    from loopml.loop.feedback_rows import describe_skipped
    from loopml.loop.policy import load_policy
    from loopml.loop.retrain import describe_outcome, retrain, should_retrain
    from loopml.loop.rollout import advance_rollouts
    from loopml.loop.worker import describe_rollout
    from loopml.registry import Store

    s, p = Store(store), with_media_root(load_policy(policy), media_root)
    while True:
        fire, why = should_retrain(s, name, p) if (if_triggered or watch) else (True, "manual")
        if fire:
            typer.echo(f"retraining {name}: {why}")
            try:
                decision = retrain(s, name, p, reason=why)
            except Exception as e:  # noqa: BLE001  an unattended watcher outlives one failed turn (retrain recorded it)
                if not watch:
                    raise
                what = str(e) if isinstance(e, LoopmlError) else f"{type(e).__name__}: {e}"
                typer.echo(f"error: {what} (recorded; watching on)", err=True)  # the next trigger needs new feedback
                time.sleep(watch)
                continue
            skipped = (decision.get("numbers") or {}).get("feedback_skipped") or {}
            if skipped:
                typer.echo(describe_skipped(skipped))
            typer.echo(describe_outcome(name, decision))
        else:
            typer.echo(f"no retrain: {why}")
        if not watch:
            return
        for change in advance_rollouts(s, name, p):  # a trial or a watch is judged each time round, as the worker does
            typer.echo(describe_rollout(change))
        time.sleep(watch)


def with_media_root(policy, media_root: str | None):
    """``policy`` with ``--media-root`` as its data.media_root (it must be a folder)."""
    from loopml.errors import LoopmlError

    if media_root is None:
        return policy
    root = Path(media_root).expanduser()
    if not root.is_dir():
        raise LoopmlError(f"--media-root is not a folder: {media_root}")
    return policy.model_copy(update={"data": policy.data.model_copy(update={"media_root": str(root.resolve())})})


def describe_live(live: dict) -> str:
    """``{"labelled": 600, "accuracy": 0.455, "test_accuracy": 0.9006…}`` → "600 labelled, accuracy 0.455, …"."""
    if not live:
        return "no labels"
    parts = []
    for key, value in live.items():
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (dict, list)) else value
        parts.append(f"{value} labelled" if key == "labelled" else f"{key.replace('_', ' ')} {shown}")
    return ", ".join(parts)
