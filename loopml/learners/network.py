"""The PyTorch network (encoders per feature, a combiner, a head) as a learner."""

from __future__ import annotations

from typing import Literal

from loopml.learners.base import LEARNERS, Learner


@LEARNERS.register("network")
class NetworkLearner(Learner):
    """Built from the config's features/combiner/training sections; reads the ``tensors`` view."""

    view = "tensors"
    accepts = frozenset({"number", "category", "binary", "text", "image", "audio", "date"})

    class Params(Learner.Params):
        type: Literal["network"] = "network"
