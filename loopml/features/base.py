"""FeatureType: one subclass per column type. Fit on the training split, transform any split.

A feature type owns its preprocessing options (the nested pydantic ``Config``), its fitted
state (plain JSON) and the tensor it hands to its encoder. Adding a type is adding one class
registered in ``FEATURE_TYPES``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict

from loopml.plugins import Registry


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FeatureType:
    Config: ClassVar[type[StrictModel]]
    #: order in which inference asks types whether a column is theirs (lowest first)
    infer_priority: ClassVar[int] = 100
    #: the dtype of the tensor ``transform`` returns, so encoders can be checked against it
    tensor_dtype: ClassVar[torch.dtype] = torch.float32

    def __init__(self, column: str, config: Any, state: dict | None = None) -> None:
        self.column = column
        self.config = config
        self.state: dict = state or {}

    # -- inference ---------------------------------------------------------------------------
    @classmethod
    def infer(cls, column: pd.Series, stats: dict) -> bool:
        """Whether an unlabelled column looks like this type (``stats`` from data.infer)."""
        return False

    # -- fitting and transforming --------------------------------------------------------------
    def fit(self, column: pd.Series) -> dict:
        """Learn the state from the training column; returns (and keeps) the JSON state."""
        raise NotImplementedError

    def transform(self, column: pd.Series) -> torch.Tensor:
        raise NotImplementedError

    def missing_rows(self, column: pd.Series) -> pd.Series:
        """Rows the ``missing: drop`` policy removes from training data."""
        if getattr(self.config, "missing", None) == "drop":
            return column.isna()
        return pd.Series(False, index=column.index)

    def encoder_inputs(self) -> dict:
        """What an encoder needs to size itself (vocab size, width, ...)."""
        return {}


FEATURE_TYPES: Registry[type[FeatureType]] = Registry("feature type")
