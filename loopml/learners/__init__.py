"""Learners: the registered models that fit prepared features (see base.py for the contract)."""

from loopml.learners.base import LEARNERS, VIEWS, Budget, Context, FitData, Learner, Split, Task  # noqa: I001

# each module registers its learners; keep these imports light (see base.py)
from loopml.learners import network  # noqa: E402,F401
from loopml.learners import tree_catboost, tree_lightgbm, tree_xgboost  # noqa: E402,F401
from loopml.learners import linear  # noqa: E402,F401
from loopml.learners import embedding  # noqa: E402,F401
from loopml.learners import onnx_network  # noqa: E402,F401  (made by `loopml compress`, never from a config)
from loopml.learners import automl, bagging, ensemble  # noqa: E402,F401  (after the members they may name)

__all__ = ["LEARNERS", "VIEWS", "Budget", "Context", "FitData", "Learner", "Split", "Task"]
