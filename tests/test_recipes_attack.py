"""Regressions from attacking issue 19's defaults: absurd time budgets."""

from __future__ import annotations

import pytest

from loopml.errors import LoopmlError
from loopml.learners.automl import automl_sections
from loopml.train.plan import EpochPlan


def test_a_huge_max_time_plans_the_configured_epochs_not_an_overflow():
    plan = EpochPlan(1e308, 200)
    assert plan.update(1, 0.1) == 200


@pytest.mark.parametrize("budget", [float("inf"), float("nan"), -1.0, 0.0])
def test_a_time_budget_that_is_not_a_positive_finite_number_is_refused(budget):
    with pytest.raises(LoopmlError, match="time budget"):
        automl_sections(budget, None)
