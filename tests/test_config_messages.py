"""Config and policy errors read as one clean line: no pydantic "Value error, " and no "config config:"."""

from __future__ import annotations

import pytest

from loopml.config import load_config
from loopml.errors import LoopmlError
from loopml.loop.policy import load_policy


@pytest.mark.parametrize("raw, expected", [
    # a whole-config check (no key of its own): its sentence as it is
    ({"target": "y", "training": {"plan_to_max_time": True, "max_time": None}},
     "training.plan_to_max_time plans the epochs into training.max_time: set training.max_time (seconds)"),
    # a section's check that names its key: not named twice
    ({"target": "y", "training": {"mixup": {"alpha": 0}}},
     "training.mixup needs alpha > 0 (mixup) or cutmix_alpha > 0 (cutmix); to turn mixing off remove training.mixup"),
    # a field's check that does not: the key in front, the value after
    ({"target": {"column": "y", "threshold": 3}},
     "config target.threshold: threshold must be between 0 and 1 (exclusive), or auto (got 3)"),
])
def test_a_validator_error_is_its_own_sentence(raw, expected):
    with pytest.raises(LoopmlError) as caught:
        load_config(raw)
    assert str(caught.value) == expected


def test_a_type_error_still_names_the_key_and_the_value():
    with pytest.raises(LoopmlError) as caught:
        load_config({"target": "y", "training": {"epochs": "many"}})
    message = str(caught.value)
    assert message.startswith("config training.epochs: ") and '(got "many")' in message and "\n" not in message


def test_policy_errors_say_policy_not_config():
    with pytest.raises(LoopmlError) as caught:
        load_policy({"rollout": "sideways"})
    assert str(caught.value) == 'rollout must be direct, shadow, canary or canary(PERCENT) (got "sideways")'
    with pytest.raises(LoopmlError, match=r"^policy rollout.percent: only a canary takes a percent \(this rollout"):
        load_policy({"rollout": {"mode": "direct", "percent": 5}})
    with pytest.raises(LoopmlError, match=r"^unknown policy key 'trigerr'"):
        load_policy({"trigerr": {}})
