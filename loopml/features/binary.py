from __future__ import annotations

from collections import Counter
from typing import Literal

import pandas as pd
import torch

from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel, canonical_key, canonical_keys

#: canonical keys read as the positive value when they are one of the two (else the second in order)
_TRUE = {"1", "true", "yes", "y", "t"}


class BinaryConfig(StrictModel):
    type: Literal["binary"] = "binary"
    missing: Literal["mode", "constant", "drop"] = "mode"
    fill_value: float = 0.0


@FEATURE_TYPES.register("binary")
class BinaryFeature(FeatureType):
    """Two values -> 0.0 / 1.0, compared by ``canonical_key`` (``1``, ``1.0``, ``"1"`` and ``True``
    vs ``"true"`` are the same value). Missing values, and values that are neither of the two
    seen in training, become the fill value (``missing: mode`` = the more frequent one)."""

    Config = BinaryConfig
    infer_priority = 20

    @classmethod
    def infer(cls, column: pd.Series, stats: dict) -> bool:
        return stats["unique"] == 2

    def fit(self, column: pd.Series) -> dict:
        cfg: BinaryConfig = self.config
        counts = Counter(k for k in canonical_keys(column) if k is not None)
        values = sorted(counts)[:2]
        positive = next((v for v in values if v.lower() in _TRUE), values[-1] if values else "1")
        present = sum(counts[v] for v in values)
        mode = 1.0 if present and counts.get(positive, 0) * 2 >= present else 0.0
        fill = mode if cfg.missing == "mode" else cfg.fill_value
        self.state = {"positive": positive, "values": values, "fill": fill}
        return self.state

    def transform(self, column: pd.Series) -> torch.Tensor:
        s = self.state
        # canonicalised here too, so bundles saved with '1.0'-style keys read JSON 1 as before
        values = {canonical_key(v) for v in s["values"]}
        positive, fill = canonical_key(s["positive"]), float(s["fill"])
        out = [fill if k is None or k not in values else float(k == positive) for k in canonical_keys(column)]
        return torch.tensor(out, dtype=torch.float32).unsqueeze(1)

    def unusable(self, column: pd.Series) -> pd.Series:
        # the values transform reads as the fill value without them being missing: keep in step with it
        values = {canonical_key(v) for v in self.state["values"]}
        return pd.Series([k is not None and k not in values for k in canonical_keys(column)], index=column.index)

    def encoder_inputs(self) -> dict:
        return {"width": 1}
