"""Attacks on the unattended loop worker (`loopml loop`): schedules no clock can hold, failures, restarts."""

import threading
import time

import pytest
from test_loop import _store
from test_loop_worker import POLICY, champion_dir  # noqa: F401  (the module's champion fixture)

from loopml.cli import main
from loopml.errors import LoopmlError
from loopml.loop.policy import load_policy
from loopml.loop.worker import _clock, read_state, run_loop, write_state
from loopml.loop.worker_cli import loop_lines

FAST = 0.2  # the worker's interval override (a policy's loop.interval_s is at least 1 s)


@pytest.mark.parametrize("field,raw", [("loop.interval_s", {"loop": {"interval_s": 0.001}}),
                                       ("rollout.watch_s", {"rollout": {"watch_s": 0.01}}),
                                       ("rollout.trial_max_s", {"rollout": {"mode": "shadow", "trial_max_s": 0.5}})])
def test_a_busy_loop_interval_or_a_blink_watch_is_refused_naming_the_field(field, raw):
    """`loop: {interval_s: 0.001}` was accepted: a worker cycling a thousand times a second on the store lock."""
    with pytest.raises(LoopmlError) as e:
        load_policy(raw)
    assert field in str(e.value) and len(str(e.value).splitlines()) == 1
    assert load_policy({"loop": {"interval_s": 1}, "rollout": {"watch_s": 0}}).rollout.watch_s == 0  # 0 = no watch


def test_a_cli_interval_under_a_second_is_refused(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text("loop: {interval_s: 5}\n")
    assert main(["loop", "clf", "--policy", str(policy), "--interval", "0.001"]) == 2
    assert "--interval must be between 1 and" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["shadow", "direct"])
def test_a_percent_outside_a_canary_is_refused_naming_the_field(mode):
    with pytest.raises(LoopmlError) as e:
        load_policy({"rollout": {"mode": mode, "percent": 50}})
    assert "rollout.percent" in str(e.value) and "canary" in str(e.value) and len(str(e.value).splitlines()) == 1
    assert load_policy({"rollout": {"mode": "canary", "percent": 50}}).rollout.percent == 50


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n\n   \n"])
@pytest.mark.parametrize("command", ["loop", "serve", "retrain"])
def test_an_empty_policy_file_is_an_error_not_every_default(tmp_path, capsys, text, command):
    """An empty policy (0 bytes, or only comments) silently meant every default: a truncated copy retrained on defaults."""
    policy = tmp_path / "p.yaml"
    policy.write_text(text)
    args = {"loop": ["loop", "clf", "--policy", str(policy)],
            "serve": ["serve", "clf@production", "--loop-policy", str(policy)],
            "retrain": ["retrain", "clf", "--policy", str(policy)]}[command]
    assert main([*args, "--store", f"sqlite:///{tmp_path}/r.db"]) == 2
    err = capsys.readouterr().err
    assert f"policy file {policy} is empty" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    policy.write_text("{}\n")  # an explicit empty mapping is every default, on purpose
    assert load_policy(policy).loop.interval_s == 60


@pytest.mark.parametrize("interval", ["inf", "1e300"])
def test_an_interval_no_clock_can_hold_is_refused_in_one_line(tmp_path, capsys, interval):
    """`interval_s: .inf` used to be accepted: its `next_cycle_at = inf` then crashed every later worker
    (OverflowError, exit 1), whatever its own interval."""
    with pytest.raises(LoopmlError, match="loop.interval_s"):
        load_policy({"loop": {"interval_s": float(interval)}})
    policy = tmp_path / "p.yaml"
    policy.write_text("loop: {interval_s: 5}\n")
    assert main(["loop", "clf", "--policy", str(policy), "--interval", interval, "--store", f"sqlite:///{tmp_path}/r.db"]) == 2
    err = capsys.readouterr().err
    assert "--interval" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_schedule_no_clock_can_hold_does_not_crash_a_worker(champion_dir, tmp_path):  # noqa: F811
    """A store written before intervals were bounded (next_cycle_at inf or 1e300): a restarted worker used to exit 1
    (OverflowError) whatever its own interval; now it runs its cycle within its interval, and `monitor` prints."""
    store = _store(tmp_path, champion_dir)
    policy = load_policy({**POLICY, "loop": {"monitor_rows": 10}})
    for due in (float("inf"), 1e300):
        write_state(store, "clf", cycles=3, last_cycle_at=time.time() - 10, next_cycle_at=due, state={"phase": "idle"})
        stop, lines, errors = threading.Event(), [], []

        def target(stop=stop, lines=lines, errors=errors) -> None:
            try:
                run_loop(store, "clf", policy, stop_event=stop, echo=lines.append, interval=FAST)
            except Exception as e:  # noqa: BLE001  the assertion below reports it
                errors.append(e)

        thread = threading.Thread(target=target)
        thread.start()
        try:
            deadline = time.time() + 10
            while read_state(store, "clf")["cycles"] < 4 and time.time() < deadline and thread.is_alive():
                time.sleep(0.05)
            assert not errors and read_state(store, "clf")["cycles"] >= 4, (errors, lines)
        finally:
            stop.set()
            thread.join(20)
        write_state(store, "clf", next_cycle_at=due)
        assert loop_lines(store, "clf")[0].startswith("loop:")
    assert _clock(float("inf")) == _clock(1e300) == "never"


def test_a_deleted_store_file_stops_the_worker_in_one_line(champion_dir, tmp_path):  # noqa: F811
    """`rm .loopml/registry.db` under a running worker: its open connections kept the deleted file alive, and it
    went on cycling, deciding and promoting into a file no one could read. Now it stops, naming the store."""
    store = _store(tmp_path, champion_dir)
    policy = load_policy({**POLICY, "loop": {"monitor_rows": 10}})
    stop, lines, errors = threading.Event(), [], []

    def target() -> None:
        try:
            run_loop(store, "clf", policy, stop_event=stop, echo=lines.append, interval=FAST)
        except LoopmlError as e:
            errors.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        deadline = time.time() + 10
        while (read_state(store, "clf") or {}).get("cycles", 0) < 2 and time.time() < deadline:
            time.sleep(0.05)
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"r.db{suffix}").unlink(missing_ok=True)
        thread.join(10)
        assert not thread.is_alive(), lines
    finally:
        stop.set()
        thread.join(10)
    assert errors and "was deleted or replaced" in str(errors[0]) and "r.db" in str(errors[0]), lines


def test_a_retrain_that_keeps_failing_backs_off_and_its_labels_still_trigger_once_fixed(champion_dir, tmp_path,  # noqa: F811
                                                                                         monkeypatch):
    """A failed retrain used to consume its trigger: after the cause was fixed (a moved training file, a full disk)
    the labels never triggered again. Not consuming them must not make the loop retry every cycle either."""
    from test_loop import RECODED, _feed, make

    import loopml.loop.retrain as retrain_module

    store = _store(tmp_path, champion_dir)
    _feed(store, make(120, 5, codes=RECODED))
    # min_holdout above the feedback: once fixed, the retrain decides 'not enough feedback' at once (no training)
    policy = load_policy({**POLICY, "trigger": {"min_feedback": 100}, "data": {**POLICY["data"], "min_holdout": 1000},
                          "loop": {"monitor_rows": 10}})
    broken = {"on": True}
    real = retrain_module._retrain

    def flaky(*args, **kwargs):
        if broken["on"]:
            raise LoopmlError("cannot find the champion's train data (gone.csv)")
        return real(*args, **kwargs)

    monkeypatch.setattr(retrain_module, "_retrain", flaky)
    stop, lines = threading.Event(), []
    thread = threading.Thread(target=run_loop, args=(store, "clf", policy), kwargs={"interval": FAST, "stop_event": stop,
                                                                                    "echo": lines.append})
    thread.start()
    try:
        time.sleep(3.5)  # ~17 cycles: without a back-off that many failed retrains
        failed = [d for d in store.list_gate_decisions("clf") if (d["numbers"] or {}).get("failed")]
        assert 2 <= len(failed) <= 6, ([d["reason"] for d in failed], lines)
        assert any("retrain(s) failed: retrying at" in line for line in lines), lines
        broken["on"] = False
        deadline = time.time() + 30  # the back-off is at most 2^failures × 0.2 s here
        while time.time() < deadline and not any(
                d["kind"] == "retrain" and not (d["numbers"] or {}).get("failed") for d in store.list_gate_decisions("clf")):
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(20)
    decided = [d for d in store.list_gate_decisions("clf") if d["kind"] == "retrain" and not d["numbers"].get("failed")]
    assert len(decided) == 1 and decided[0]["reason"].startswith("not enough feedback"), lines
    decisions = store.list_gate_decisions("clf")
    triggers = [d for d in decisions if d["kind"] == "loop" and d["numbers"]["event"] == "trigger"]
    assert len(triggers) == len([d for d in decisions if d["kind"] == "retrain"]), lines  # one attempt per trigger


def test_the_stop_signal_handler_takes_no_lock_the_interrupted_wait_may_hold():
    """A signal handler runs in the main thread between bytecodes, maybe inside ``stop_event.wait()`` while that
    thread holds the event's lock: a handler that calls ``set()`` then blocks on it forever (a tester's SIGTERM
    hung a worker until the server killed it 60 s later). The handler only records the signal; waits poll it."""
    import signal as signals

    from loopml.loop.worker import LoopWorker

    worker = LoopWorker(None, "clf", load_policy({}))

    def signal_inside_wait() -> None:
        with worker.stop_event._cond:  # what the main thread holds inside Event.wait()
            worker.on_signal(signals.SIGTERM, None)

    handler = threading.Thread(target=signal_inside_wait, daemon=True)
    handler.start()
    handler.join(3)
    assert not handler.is_alive(), "the handler blocked on the event's lock"
    started = time.monotonic()
    assert worker.stopping and worker._wait(30) is True and time.monotonic() - started < 1
