"""A new user's odd inputs to the unattended loop (issue 13): policies, the label prompt, the worker."""

from __future__ import annotations

import pytest

from loopml.errors import LoopmlError
from loopml.loop.policy import load_policy


@pytest.mark.parametrize("text, field", [
    ("loop: {interval_s: .nan}", "loop.interval_s"),
    ("loop: {interval_s: nan}", "loop.interval_s"),
    ("rollout: {mode: canary, percent: .nan}", "rollout.percent"),
    ("gate: {margin: .inf}", "gate.margin"),
    ("rollout: {watch_margin: .nan}", "rollout.watch_margin"),
])
def test_policy_nan_and_inf_say_finite(tmp_path, text, field):
    # NaN read as "should be less than or equal to 31536000": the user looks for a too-large value that is not there
    path = tmp_path / "p.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(LoopmlError) as e:
        load_policy(path)
    assert field in str(e.value) and "finite number" in str(e.value), str(e.value)


def _target(classes):
    from types import SimpleNamespace

    return SimpleNamespace(kind="category", column="y", classes=classes,
                           class_of=lambda text: text if text in classes else None)


def test_label_prompt_with_a_class_q_quits_only_on_colon_q(monkeypatch, capsys):
    # the prompt says ":q or Ctrl-D quits" when a class is named q: 'Q' (a mistyped label) asked again, not quitting
    import io
    import sys

    from loopml.loop import label_cli

    monkeypatch.setattr(sys, "stdin", io.StringIO("Q\nquit\nq\n"))
    assert label_cli._ask(_target(["q", "r"])) == "q"
    out = capsys.readouterr().out
    assert out.count("'Q' is not a class") == 1 and out.count("'quit' is not a class") == 1, out
    monkeypatch.setattr(sys, "stdin", io.StringIO(":q\n"))
    assert label_cli._ask(_target(["q", "r"])) is label_cli._QUIT
    monkeypatch.setattr(sys, "stdin", io.StringIO("Q\n"))  # no class q: q, Q, quit quit as the prompt says
    assert label_cli._ask(_target(["pos", "neg"])) is label_cli._QUIT


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_loop_worker_started_after_its_server_died_stops_at_once(monkeypatch):
    # `serve --loop-policy`: a server killed between fork and prctl left a worker that no death signal would reach
    # (it would hold the loop lock for ever); the child checks its parent right after asking for the signal
    import os
    import subprocess

    from loopml.loop import worker_cli

    monkeypatch.setattr(os, "getpid", lambda: 1)  # as if the parent that forked were already gone (getppid != it)
    preexec = worker_cli._parent_death_signal()
    monkeypatch.undo()
    import signal

    previous = signal.signal(signal.SIGTERM, lambda *a: None)  # a server with its own SIGTERM handler forks the worker
    try:
        child = subprocess.Popen(["sleep", "30"], preexec_fn=preexec)
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        assert child.wait(timeout=15) == -15
    finally:
        child.kill()
        child.wait()
