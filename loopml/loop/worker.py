"""The unattended loop: ``loopml loop NAME --policy policy.yaml`` repeats, on the policy's schedule,

    monitor (the newest predictions) → rollouts (shadow/canary trials, the watch) → trigger → retrain → gate → promote

One worker per model runs the loop: it holds the model's ``loop`` lock in the store (renewed while it
runs); a second worker stands by and takes over when the first one's lock frees (its process died,
or its expiry passed). The schedule and the phase of the current cycle live in ``loop_state``, so a
restarted worker resumes at ``next_cycle_at`` and redoes a retrain that a ``kill -9`` cut short.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa

from loopml.errors import LoopmlError
from loopml.loop.policy import MAX_INTERVAL_S, Policy
from loopml.registry import db
from loopml.registry.liveness import pid_alive

PURPOSE = "loop"
#: the loop lock's expiry: a holder renews it every third of this; a dead holder on another host frees it after it
LOCK_TTL_S = 120.0
#: the longest wait before retrying a retrain that keeps failing (or one interval, if that is longer)
MAX_BACKOFF_S = 3600.0
#: how soon a wait notices a stop (a signal handler may not take the event's lock, so waits poll)
STOP_POLL_S = 0.2


class StopRequested(KeyboardInterrupt):
    """SIGTERM/SIGINT while a retrain trains: raised in the main thread so training stops there.

    A KeyboardInterrupt, so training marks its run killed and ``retrain`` records the interrupted attempt."""


def _clock(stamp: float | None) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(stamp)) if stamp else "never"
    except (OverflowError, ValueError, OSError):  # a stamp no clock can show (inf, 1e300 from an old schedule)
        return "never"


# -- loop_state -------------------------------------------------------------------------------------
def read_state(store, name: str) -> dict | None:
    with store.engine.connect() as c:
        row = c.execute(sa.select(db.loop_state).where(db.loop_state.c.model_name == name)).first()
    return dict(row._mapping) if row is not None else None


def write_state(store, name: str, **values) -> None:
    """Upsert ``name``'s row (only the worker holding the loop lock writes it)."""
    values["updated_at"] = time.time()
    with store.writer.begin() as c:
        updated = c.execute(db.loop_state.update().where(db.loop_state.c.model_name == name).values(**values)).rowcount
        if not updated:
            c.execute(db.loop_state.insert().values(model_name=name, **{"cycles": 0, **values}))


def decision_outcome(d: dict) -> str:
    """One word for a decision row: promoted | rejected | failed | skipped | no_candidate, the loop's event
    (trigger | interrupted) or a rollout's new state."""
    numbers = d.get("numbers") or {}
    if isinstance(numbers.get("outcome"), str):
        return numbers["outcome"]
    if d.get("kind") == "loop":
        return str(numbers.get("event", "event"))
    if d.get("kind") in ("rollout", "watch") and isinstance(numbers.get("state"), str):
        return numbers["state"]  # the rollout's new state: promoted, rejected, kept, rolled_back, cancelled …
    if d.get("promoted"):
        return "promoted"
    if numbers.get("failed"):
        return "failed"
    if numbers.get("skipped"):
        return "skipped"
    return "no_candidate" if d.get("candidate_version") is None else "rejected"


def loop_status(store, name: str, counts: bool = True) -> dict:
    """What ``/metrics`` and ``loopml monitor`` show: the schedule, whether a worker holds the loop, decision counts
    (``counts=False``: none — they read every decision row of the model, which a page shown often should not)."""
    row = read_state(store, name)
    holder = store.lock_holder(name, PURPOSE)
    alive = bool(holder) and holder["expires_at"] > time.time() and (
        holder["host"] != socket.gethostname() or pid_alive(holder["pid"], holder["acquired_at"]))
    g = db.gate_decisions
    rows = []
    if counts:
        with store.engine.connect() as c:
            rows = c.execute(sa.select(g.c.kind, g.c.promoted, g.c.candidate_version, g.c.numbers)
                             .where(g.c.model_name == name)).all()
    tally: dict[tuple[str, str], int] = {}
    for r in rows:
        d = dict(r._mapping)
        key = (d["kind"] or "retrain", decision_outcome(d))
        tally[key] = tally.get(key, 0) + 1
    from loopml.loop.rollout import ACTIVE, list_rollouts

    return {"state": row, "worker": holder if alive else None, "decisions": tally,
            "rollouts": list_rollouts(store, name, ACTIVE)}


# -- the worker -------------------------------------------------------------------------------------
class LoopWorker:
    """Runs the loop for one model; ``run()`` returns when stopped (``stop_event``, a signal) or after ``once``."""

    def __init__(self, store, name: str, policy: Policy, *, interval: float | None = None,
                 echo: Callable[[str], None] | None = None, stop_event: threading.Event | None = None) -> None:
        self.store, self.name, self.policy = store, name, policy
        self.interval = interval or policy.loop.interval_s
        self.echo = echo or (lambda line: print(line, flush=True))
        self.stop_event = stop_event or threading.Event()
        self.stop_signal: int | None = None
        self.keeper = None
        self.held = False  # whether this worker ever ran the loop (held its lock)
        self._training = False
        self._raised = False
        self._served: tuple[int, object] | None = None

    # signals: installed by the command (main thread); training is interrupted, anything else finishes its step
    def on_signal(self, signum: int, _frame) -> None:
        # a plain attribute, not stop_event.set(): the handler runs in the main thread between bytecodes, possibly
        # while that thread holds the event's internal lock inside wait() — set() would then wait on it forever
        self.stop_signal = signum
        if self._training and not self._raised:
            self._raised = True  # once: a second signal must not cut short the recording of the first
            raise StopRequested(f"stopped by {signal.Signals(signum).name}")

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None or self.stop_event.is_set()

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as a stop is asked (a signal or ``stop_event``), polled in short waits."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.stop_event.wait(min(STOP_POLL_S, left))
        return True

    def run(self, once: bool = False) -> str:
        """Take the loop lock (or stand by until it frees) and run cycles; how it ended: stopped | once | standby."""
        from loopml.registry.gating import LockHeld, LockKeeper

        self.store.resolve(f"{self.name}@{self.policy.alias}")  # no such model/alias: one line before anything runs
        standing_by = False
        while not self.stopping:
            keeper = LockKeeper(self.store, self.name, PURPOSE, LOCK_TTL_S)
            try:
                keeper.acquire()
            except LockHeld:
                if not standing_by:
                    self.echo(f"loop {self.name}: {self._holder_text()}; "
                              + ("not running a cycle (--once)" if once else
                                 f"standing by, retrying every {self.interval:g} s"))
                if once:
                    return "standby"
                standing_by = True
                self._wait(self.interval)
                continue
            self.keeper, self.held = keeper, True
            try:
                self.echo(f"loop {self.name}: worker {os.getpid()} " + ("took over the loop" if standing_by else "runs the loop")
                          + f" (every {self.interval:g} s, newest {self.policy.loop.monitor_rows} predictions, "
                            f"trigger {self.policy.trigger.min_feedback} labels, rollout {self.policy.rollout.mode})")
                self.store.reap_runs()  # a killed worker's training run reads 'killed', not 'running'
                ended = self._active(once)
            except StopRequested:
                ended = "stopped"
            finally:
                keeper.release()
                self.keeper = None
            if ended != "lost":
                return ended
            standing_by = True
        return "stopped"

    def _holder_text(self) -> str:
        holder = self.store.lock_holder(self.name, PURPOSE)
        if holder is None:
            return "another worker runs the loop"
        return f"another worker runs the loop (pid {holder['pid']} on {holder['host']}, since {_clock(holder['acquired_at'])})"

    def _active(self, once: bool) -> str:
        store_file = _store_file(self.store)
        self._recover()
        while not self.stopping:
            try:
                row = read_state(self.store, self.name) or {}
                wait = (row.get("next_cycle_at") or 0) - time.time()
                if not wait <= MAX_INTERVAL_S:  # inf/NaN/1e300 written before intervals were bounded: one interval
                    wait = self.interval
                if wait > 0 and not once and self._wait(wait):
                    break
                _check_store_file(store_file)
                if self.keeper.lost:
                    self.echo(f"loop {self.name}: lost the loop lock (another worker took it over); standing by")
                    return "lost"
                self.cycle(int(row.get("cycles") or 0) + 1)
            except sa.exc.SQLAlchemyError as e:  # the store is briefly unreachable: the schedule goes on
                self.echo(f"loop {self.name}: store error: {str(e).splitlines()[0]} (retrying in {self.interval:g} s)")
                self._wait(self.interval)
                continue
            if once:
                return "once"
        return "stopped"

    # -- one cycle ----------------------------------------------------------------------------------
    def cycle(self, n: int) -> None:
        started = time.time()
        previous = (read_state(self.store, self.name) or {}).get("state") or {}
        state = {"phase": "monitoring", "cycle": n, "started_at": started, "pid": os.getpid(),
                 "host": socket.gethostname(), "monitored_until": previous.get("monitored_until")}
        write_state(self.store, self.name, state=state)
        # each step on its own: a window that cannot be monitored does not keep feedback from retraining
        seen = self._step(n, "monitoring", lambda: self._monitor(state)) or "monitoring skipped"
        for d in self._step(n, "rollouts", self._rollouts) or []:
            self.echo(f"cycle {n}: {describe_rollout(d)}")
        if self.stopping:
            self.echo(f"cycle {n}: {seen}; stopping before the trigger check")
        else:
            self._step(n, "retrain", lambda: self._trigger(n, seen, state))
        self._finish(n, started, state)

    def _step(self, n: int, what: str, step: Callable[[], object]) -> object:
        try:
            return step()
        except (LoopmlError, sa.exc.SQLAlchemyError) as e:
            self.echo(f"cycle {n}: {what} error: {e}")
        except Exception as e:  # noqa: BLE001  an unattended worker outlives one broken step (retrain recorded its own)
            self.echo(f"cycle {n}: {what} error: {type(e).__name__}: {e}")
        return None

    def _monitor(self, state: dict) -> str:
        from loopml.loop.monitor import monitor

        newest = self.store.prediction_window(self.name, last=1)
        if not newest:
            return "no predictions yet"
        if state.get("monitored_until") and newest[-1]["created_at"] <= state["monitored_until"]:
            return "no new predictions"
        result = monitor(self.store, self.name, self.policy.alias, last=self.policy.loop.monitor_rows,
                         served=self._champion())
        state["monitored_until"] = result["end"]
        text = f"{result['rows']} predictions, " + (f"drift in {', '.join(result.get('drifted') or []) or 'predictions'}"
                                                    if result["drift"] else "no drift")
        live = result.get("live") or {}
        if live.get("accuracy") is not None:
            text += f", live accuracy {live['accuracy']:.3f} on {live['labelled']} labels"
        return text

    def _champion(self) -> tuple[int, object]:
        import loopml

        version = self.store.resolve(f"{self.name}@{self.policy.alias}")
        if self._served is None or self._served[0] != int(version["version"]):  # loaded once per champion
            self._served = (int(version["version"]), loopml.load(version["path"]))
        return self._served

    def _rollouts(self) -> list[dict]:
        from loopml.loop.rollout import advance_rollouts

        return advance_rollouts(self.store, self.name, self.policy)

    def _trigger(self, n: int, seen: str, state: dict) -> None:
        from loopml.loop.retrain import should_retrain

        fire, why = should_retrain(self.store, self.name, self.policy)
        if not fire:
            self.echo(f"cycle {n}: {seen}; no retrain: {why}")
            return
        streak, last_failed = _failed_streak(self.store, self.name)
        if streak:  # a retrain that keeps failing: retried after interval × 2^failures, not every cycle
            retry_at = last_failed + min(self.interval * 2 ** min(streak, 20), max(MAX_BACKOFF_S, self.interval))
            if time.time() < retry_at:
                self.echo(f"cycle {n}: {seen}; trigger: {why}, but the last {streak} retrain(s) failed: "
                          f"retrying at {_clock(retry_at)}")
                return
        self.echo(f"cycle {n}: {seen}; trigger: {why} → retraining")
        self.store.add_gate_decision(self.name, None, self.store.alias_version(self.name, self.policy.alias), False,
                                     f"cycle {n}: trigger: {why} → retraining", {"event": "trigger", "cycle": n,
                                                                                  "trigger": why}, kind="loop")
        self._retrain(n, why, state)

    def _retrain(self, n: int, why: str, state: dict) -> None:
        from loopml.loop.retrain import describe_outcome, retrain

        state.update(phase="retraining", reason=why, retrain_started_at=time.time())
        write_state(self.store, self.name, state=state)
        try:
            self._training = True
            if self.stopping:  # a stop between the trigger and here: before training starts
                raise StopRequested(f"stopped by {signal.Signals(self.stop_signal).name}" if self.stop_signal
                                    else "stop requested")
            decision = retrain(self.store, self.name, self.policy, reason=why)
        except StopRequested as e:
            # the phase stays 'retraining': the next start redoes this cycle (retrain recorded the interrupted attempt)
            write_state(self.store, self.name, state={**state, "stopped": str(e)})
            self.echo(f"cycle {n}: retrain interrupted ({e}); recorded, redone when a worker starts again")
            raise
        finally:
            self._training = False
        self.echo(f"cycle {n}: {describe_outcome(self.name, decision)}")

    def _finish(self, n: int, started: float, state: dict) -> None:
        now = time.time()
        state = {k: v for k, v in state.items() if k in ("cycle", "pid", "host", "monitored_until")}
        write_state(self.store, self.name, cycles=n, last_cycle_at=now, next_cycle_at=max(started + self.interval, now),
                    state={**state, "phase": "idle"})

    # -- restarts -----------------------------------------------------------------------------------
    def _recover(self) -> None:
        """A cycle its worker never finished (kill -9, power loss, SIGTERM mid-retrain): recorded, and its retrain redone."""
        row = read_state(self.store, self.name)
        state = (row or {}).get("state") or {}
        if state.get("phase") != "retraining":
            return
        n, started = int(state.get("cycle") or (row["cycles"] or 0) + 1), float(state.get("retrain_started_at") or 0)
        how = state.get("stopped") or f"pid {state.get('pid')} on {state.get('host')} died"
        since = f"retraining since {_clock(started)} ({state.get('reason')})"
        finished = [d for d in self.store.list_gate_decisions(self.name)
                    if (d.get("kind") or "retrain") == "retrain" and d["at"] >= started
                    and not (d.get("numbers") or {}).get("failed")]
        champion = self.store.alias_version(self.name, self.policy.alias)
        numbers = {"event": "interrupted", "cycle": n, "trigger": state.get("reason"), "retrain_started_at": started}
        if finished:  # it died after its retrain was decided: nothing to redo
            why = f"interrupted cycle {n} ({since}; {how}): its retrain was decided (decision {finished[0]['id']}); not redone"
            self.store.add_gate_decision(self.name, None, champion, False, why, numbers, kind="loop")
            self.echo(f"cycle {n}: {why}")
            self._finish(n, time.time(), state)
            return
        why = f"interrupted cycle {n} ({since}; {how}): redone"
        self.store.add_gate_decision(self.name, None, champion, False, why, numbers, kind="loop")
        self.echo(f"cycle {n}: {why}")
        cycle_started = time.time()
        reason = str(state.get("reason") or "redone after an interrupted cycle")
        state = {**{k: v for k, v in state.items() if k in ("cycle", "monitored_until")}, "pid": os.getpid(),
                 "host": socket.gethostname(), "started_at": cycle_started}
        try:
            self._retrain(n, reason, state)
        except (LoopmlError, sa.exc.SQLAlchemyError) as e:
            self.echo(f"cycle {n}: error: {e}")
        except Exception as e:  # noqa: BLE001  as in cycle(): the worker goes on (retrain recorded the failure)
            self.echo(f"cycle {n}: error: {type(e).__name__}: {e}")
        self._finish(n, cycle_started, state)


def _failed_streak(store, name: str) -> tuple[int, float]:
    """Retrains that failed in a row since the last one that decided (a signal's interruption is not counted: it
    is redone at once), and when the last of them failed."""
    streak, last = 0, 0.0
    for d in reversed(store.list_gate_decisions(name)):
        if (d.get("kind") or "retrain") != "retrain":
            continue
        if not (d.get("numbers") or {}).get("failed"):
            break
        if not str(d.get("reason") or "").startswith("failed: StopRequested"):
            streak, last = streak + 1, max(last, float(d["at"]))
    return streak, last


def _store_file(store) -> tuple[str, tuple[int, int]] | None:
    """A SQLite store's file and identity (device, inode); None for a server database or memory."""
    url = store.engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    try:
        st = os.stat(url.database)
    except OSError:
        return None
    return url.database, (st.st_dev, st.st_ino)


def _check_store_file(known: tuple[str, tuple[int, int]] | None) -> None:
    """Open connections keep a deleted SQLite file alive: without this the loop would go on deciding into a file
    nobody can read (and a new store at that path would get a second worker)."""
    if known is None:
        return
    path, identity = known
    try:
        st = os.stat(path)
        same = (st.st_dev, st.st_ino) == identity
    except OSError:
        same = False
    if not same:
        raise LoopmlError(f"the store file {path} was deleted or replaced while the loop ran; stopping")


def describe_rollout(d: dict) -> str:
    """``advance_rollouts``' state change as one line: ``canary rollout of v4: trial → PROMOTED: …``."""
    version = f" of v{d['candidate_version']}" if d.get("candidate_version") is not None else ""
    moved = f"{d.get('from')} → {str(d.get('to')).upper()}" if d.get("to") else "step"
    return f"{d.get('mode') or ''} rollout{version}: {moved}: {d.get('reason', '')}".strip()


def run_loop(store, name: str, policy: Policy, *, once: bool = False, stop_event: threading.Event | None = None,
             interval: float | None = None, echo: Callable[[str], None] | None = None) -> str:
    """Run the loop for ``name`` until ``stop_event`` is set (or one cycle with ``once``); how it ended."""
    return LoopWorker(store, name, policy, interval=interval, echo=echo, stop_event=stop_event).run(once=once)
