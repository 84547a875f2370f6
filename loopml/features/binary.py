from __future__ import annotations

from typing import Literal

import pandas as pd
import torch

from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel
from loopml.features.category import is_missing

_TRUE = {"1", "true", "yes", "y", "t", "1.0"}


class BinaryConfig(StrictModel):
    type: Literal["binary"] = "binary"
    missing: Literal["mode", "constant", "drop"] = "mode"
    fill_value: float = 0.0


def canonical(value: object) -> str:
    return str(value).strip()


@FEATURE_TYPES.register("binary")
class BinaryFeature(FeatureType):
    Config = BinaryConfig
    infer_priority = 20

    @classmethod
    def infer(cls, column: pd.Series, stats: dict) -> bool:
        return stats["unique"] == 2

    def fit(self, column: pd.Series) -> dict:
        cfg: BinaryConfig = self.config
        present = column.dropna().map(canonical)
        values = sorted(present.unique().tolist())[:2]
        # "true"/"yes"/"1" is the positive value when present; else the second in sort order
        positive = next((v for v in values if v.lower() in _TRUE), values[-1] if values else "1")
        counts = present.value_counts()
        mode = 1.0 if counts.get(positive, 0) * 2 >= len(present) and len(present) else 0.0
        fill = mode if cfg.missing == "mode" else cfg.fill_value
        self.state = {"positive": positive, "values": values, "fill": fill}
        return self.state

    def transform(self, column: pd.Series) -> torch.Tensor:
        s = self.state
        values, positive, fill = set(s["values"]), s["positive"], float(s["fill"])
        out = []
        for v in column.tolist():
            text = None if is_missing(v) else canonical(v)
            out.append(fill if text not in values else float(text == positive))
        return torch.tensor(out, dtype=torch.float32).unsqueeze(1)

    def encoder_inputs(self) -> dict:
        return {"width": 1}
