from __future__ import annotations

from typing import Literal

import pandas as pd

from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel


class SkipConfig(StrictModel):
    type: Literal["skip"] = "skip"


@FEATURE_TYPES.register("skip")
class SkipFeature(FeatureType):
    """A column the model does not use (row ids by inference, anything by the user's choice)."""

    Config = SkipConfig
    infer_priority = 10

    @classmethod
    def infer(cls, column: pd.Series, stats: dict) -> bool:
        return stats.get("id_like", False)
