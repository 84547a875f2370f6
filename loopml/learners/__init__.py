"""Learners: the registered models that fit prepared features (see base.py for the contract)."""

from loopml.learners.base import LEARNERS, VIEWS, Budget, Context, FitData, Learner, Split, Task

# each module registers its learners; keep these imports light (see base.py)
from loopml.learners import network  # noqa: E402,F401

__all__ = ["LEARNERS", "VIEWS", "Budget", "Context", "FitData", "Learner", "Split", "Task"]
