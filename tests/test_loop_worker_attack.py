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


def test_a_schedule_far_away_or_infinite_does_not_hold_a_worker_past_its_interval(champion_dir, tmp_path):  # noqa: F811
    """A store written by an old worker (next_cycle_at inf, or a week away from a longer interval): a restarted
    worker with a short interval runs its cycle within that interval, and `loopml monitor`'s lines still print."""
    store = _store(tmp_path, champion_dir)
    policy = load_policy({**POLICY, "loop": {"interval_s": 0.3, "monitor_rows": 10}})
    for due in (float("inf"), time.time() + 7 * 86400):
        write_state(store, "clf", cycles=3, last_cycle_at=time.time() - 10, next_cycle_at=due, state={"phase": "idle"})
        stop, lines, errors = threading.Event(), [], []

        def target(stop=stop, lines=lines, errors=errors) -> None:
            try:
                run_loop(store, "clf", policy, stop_event=stop, echo=lines.append)
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
