"""``loopml loop NAME --policy policy.yaml``, the loop's lines in ``loopml monitor``, and the worker process that
``loopml serve --loop-policy`` starts beside the server (never training in the request process)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from loopml.loop.cli import MediaRootOpt, with_media_root
from loopml.registry.cli import ArtifactsOpt, StoreOpt, existing_store

#: how long the server waits for its loop worker to stop (a retrain in progress records its interruption first)
STOP_TIMEOUT_S = 60.0


def loop_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    policy: Annotated[Path, typer.Option(help="Policy YAML (trigger, data, gate, rollout, loop schedule, train).")],
    once: Annotated[bool, typer.Option("--once", help="Run one cycle now and exit.")] = False,
    interval: Annotated[float | None, typer.Option(help="Seconds between cycles (default: the policy's loop.interval_s).")]
    = None,
    media_root: MediaRootOpt = None, store: StoreOpt = None, artifacts: ArtifactsOpt = None,
) -> None:
    """Run the loop unattended: monitor → rollouts → trigger → retrain → gate → promote, every interval.

    One worker per model (a lock in the store); a second one stands by and takes over when the first stops.

    The schedule survives restarts; SIGTERM stops it cleanly (a retrain in progress is interrupted, recorded, redone)."""
    from loopml.errors import LoopmlError
    from loopml.loop.policy import MAX_INTERVAL_S, MIN_INTERVAL_S, load_policy
    from loopml.loop.worker import LoopWorker

    if interval is not None and not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
        raise LoopmlError(f"--interval must be between {MIN_INTERVAL_S:g} and {MAX_INTERVAL_S:g} seconds (got {interval})")
    if not policy.is_file():
        raise LoopmlError(f"policy file not found: {policy}")
    loaded = load_policy(policy)  # the policy's own mistakes first: they are in the file named on the command line
    loaded = with_media_root(loaded, media_root)
    worker = LoopWorker(existing_store(store, artifacts), name, loaded, interval=interval, echo=typer.echo)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, worker.on_signal)
    ended = worker.run(once=once)
    if worker.stop_signal is not None:
        held = "; loop lock released" if worker.held else " (was standing by)"
        typer.echo(f"loop {name}: stopped by {signal.Signals(worker.stop_signal).name}{held}")
        if worker.stop_signal == signal.SIGINT:
            raise typer.Exit(130)
    elif ended == "once":
        typer.echo(f"loop {name}: one cycle done")


def loop_lines(store, name: str, decisions: int = 5) -> list[str]:
    """The loop in a few lines for ``loopml monitor``: is a worker alive, cycles, last and next cycle, last decisions."""
    from loopml.loop.worker import _clock, decision_outcome, loop_status

    status = loop_status(store, name)
    row, worker = status["state"], status["worker"]
    if row is None:
        lines = [f"loop: never run (start a worker: loopml loop {name} --policy policy.yaml)"]
    else:
        state = row.get("state") or {}
        who = (f"worker {worker['pid']} on {worker['host']} alive" if worker else "no worker running")
        phase = state.get("phase", "idle")
        if phase == "retraining":
            phase += f" since {_clock(state.get('retrain_started_at'))} ({state.get('reason')})"
            if not worker:
                phase += ", interrupted: redone when a worker starts"
        lines = [f"loop: {who}; {row['cycles'] or 0} cycles, last {_clock(row['last_cycle_at'])}, "
                 f"next {_clock(row['next_cycle_at']) if worker else '(when a worker runs)'}; {phase}"]
    for r in status.get("rollouts", []):  # a candidate on trial or a champion under watch: how far it is
        share = f" {r['percent']:g}%" if r["mode"] == "canary" and r.get("percent") else ""
        labels = (r.get("numbers") or {}).get("candidate_labels")
        until = f", watched until {_clock(r['watch_until'])}" if r["state"] == "watching" and r.get("watch_until") else ""
        lines.append(f"rollout: {name}:{r['candidate_version']} {r['mode']}{share} {r['state']} since "
                     f"{_clock(r['started_at'])} (champion :{r['champion_version']}"
                     f"{f', {labels} live labels' if labels is not None else ''}{until})")
    recent = store.list_gate_decisions(name)[-decisions:]
    if recent:
        lines.append("last decisions:")
    for d in reversed(recent):
        versions = f" {name}:{d['candidate_version']} vs :{d['champion_version']}" if d["candidate_version"] else ""
        reason = d["reason"] if len(d["reason"] or "") <= 140 else d["reason"][:139] + "…"
        lines.append(f"  #{d['id']} {_clock(d['at'])} {d.get('kind') or 'retrain'}{versions} "
                     f"{decision_outcome(d).upper()}: {reason}")
    return lines


def _parent_death_signal():
    """Linux: a function for the child that makes it get SIGTERM if the server dies without stopping it (kill -9)."""
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    except (OSError, AttributeError):  # no libc to ask: the server's stop_worker is the only stop
        return None
    parent = os.getpid()

    def _die_with_parent() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the server died between fork and prctl: no death signal will ever come
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's own handler would swallow it before exec
            os.kill(os.getpid(), signal.SIGTERM)

    return _die_with_parent


def start_worker(model: str, policy: Path, store: str | None, artifacts: str | None,
                 media_root: str | None = None) -> subprocess.Popen:
    """``loopml loop`` as a separate process for ``loopml serve NAME@alias --loop-policy``; its lines go to our stdout.
    ``media_root``: the server's, which the feedback's image/audio paths are relative to (without one the
    server reads them from its working directory: so must the worker, whatever the policy or champion say)."""
    name = model.split("@", 1)[0]
    command = [sys.executable, "-m", "loopml", "loop", name, "--policy", str(policy)]
    command += ["--media-root", str(Path(media_root or Path.cwd()).expanduser().resolve())]
    command += ["--store", store] if store else []
    command += ["--artifacts", artifacts] if artifacts else []
    return subprocess.Popen(command, preexec_fn=_parent_death_signal())


def stop_worker(process: subprocess.Popen | None, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """SIGTERM, then wait (a retrain records its interruption); SIGKILL only past ``timeout``."""
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.terminate()
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class WorkerSupervisor:
    """Keeps ``loopml loop`` running beside the server: a worker that dies (kill -9, OOM, a crash) is started
    again after a pause that doubles with each quick death (``RESTART_DELAYS_S``; back to the first once a
    worker has lived ``HEALTHY_S``), one line each time. The store's lock and the cycle record make a restart
    safe: an interrupted cycle is redone, never half-applied."""

    def __init__(self, start: Callable[[], subprocess.Popen], echo: Callable[[str], None] = typer.echo) -> None:
        self._start, self._echo = start, echo
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.process = start()
        self.restarts = 0
        self._thread = threading.Thread(target=self._watch, name="loop-worker-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        delay_index, started = 0, time.monotonic()
        while not self._stopping.wait(WATCH_S):
            code = self.process.poll()
            if code is None:
                continue
            if time.monotonic() - started >= HEALTHY_S:
                delay_index = 0
            delay = RESTART_DELAYS_S[min(delay_index, len(RESTART_DELAYS_S) - 1)]
            self._echo(f"loop worker exited (code {code}); starting it again in {delay:g} s")
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.process = self._start()
                self.restarts += 1
            self._echo(f"loop worker started again (pid {self.process.pid})")
            delay_index, started = delay_index + 1, time.monotonic()

    def stop(self) -> int | None:
        """No more restarts; then SIGTERM the worker and wait for it (``stop_worker``)."""
        with self._lock:
            self._stopping.set()
        self._thread.join()
        return stop_worker(self.process)


#: the supervisor's poll period, its pauses before restarting a dead worker, and the life that resets them
WATCH_S = 0.5
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 15.0, 60.0)
HEALTHY_S = 120.0


@contextlib.contextmanager
def serving_with_loop(model: str, policy: Path | None, store: str | None, artifacts: str | None,
                      media_root: str | None = None) -> Iterator[None]:
    """Around ``uvicorn.run``: the loop worker runs while the server does (started again if it dies) and stops
    with it.

    uvicorn re-raises the SIGTERM it caught once it has shut down; with a worker to stop, that signal
    ends the ``with`` block (so the worker is stopped and waited for) instead of the process at once."""
    if policy is None:
        yield
        return
    supervisor = WorkerSupervisor(lambda: start_worker(model, policy, store, artifacts, media_root))
    typer.echo(f"loop worker started (pid {supervisor.process.pid}, policy {policy})")
    previous = None

    def _stop_serving(_signum, _frame) -> None:
        raise SystemExit(0)

    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stop_serving)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        started = time.time()
        code = supervisor.stop()
        typer.echo(f"loop worker stopped (exit {code}, {time.time() - started:.1f} s)")


def check_loop_policy(model: str, policy: Path) -> None:
    """``serve --loop-policy``: a registered NAME@alias and a policy that loads, checked before serving."""
    from loopml.errors import LoopmlError
    from loopml.loop.policy import load_policy
    from loopml.registry.store import REF

    match = REF.match(model)
    if not match or not match.group("alias") or Path(model).exists():
        raise LoopmlError(f"--loop-policy needs a registered model followed by its alias (NAME@alias), not {model!r}")
    if not policy.is_file():
        raise LoopmlError(f"loop policy file not found: {policy}")
    loaded = load_policy(policy)
    if loaded.alias != match.group("alias"):
        raise LoopmlError(f"the loop policy promotes to alias '{loaded.alias}' but the server follows "
                          f"'{match.group('alias')}': set alias: {match.group('alias')} in {policy}")
