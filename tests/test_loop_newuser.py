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
