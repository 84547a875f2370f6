"""The fitted preprocessing of every input column and the target, saved as JSON with the model."""

from __future__ import annotations

import json

import pandas as pd
import torch
from pydantic import BaseModel

from loopml.errors import LoopmlError
from loopml.features.base import FEATURE_TYPES, FeatureType
from loopml.features.target import Target


def records_frame(records: list[dict], columns: list[str]) -> pd.DataFrame:
    """JSON records (as a server or ``predict`` receives them) as the frame the features read.

    Columns stay ``object`` so each value reaches ``canonical_key`` as it was sent: no int -> float
    widening that would depend on the other rows of the batch (a big integer id next to a null).
    An absent key is a missing value.
    """
    return pd.DataFrame({c: [r.get(c) for r in records] for c in columns}, dtype=object,
                        index=pd.RangeIndex(len(records)), columns=columns)


class Preprocessor:
    """Every input column's fitted feature and the target; ``views``: fitted state of the learners'
    views beyond the features' own (most views keep theirs in the features' ``state``)."""

    def __init__(self, features: dict[str, FeatureType], target: Target, views: dict | None = None) -> None:
        self.features, self.target = features, target
        self.views: dict = views or {}

    def copy(self) -> Preprocessor:
        """An independent copy (through its JSON form, so nothing is shared)."""
        return Preprocessor.from_dict(json.loads(json.dumps(self.to_dict())))

    @classmethod
    def create(cls, configs: dict[str, BaseModel], target: Target) -> Preprocessor:
        return cls({col: FEATURE_TYPES.get(cfg.type)(col, cfg) for col, cfg in configs.items()}, target)

    def rows_to_drop(self, df: pd.DataFrame) -> pd.Series:
        """Training rows removed by ``missing: drop`` settings."""
        mask = pd.Series(False, index=df.index)
        for col, feature in self.features.items():
            mask |= feature.missing_rows(df[col])
        return mask

    def fit(self, train: pd.DataFrame, positive_class: object = None, normalize_target: bool = True) -> None:
        for col, feature in self.features.items():
            feature.fit(train[col])
        self.target.fit(train[self.target.column], positive_class, normalize_target)

    def check_columns(self, df: pd.DataFrame) -> None:
        missing = [col for col in self.features if col not in df.columns]
        if missing:
            raise LoopmlError(f"input is missing column(s): {', '.join(missing)}")

    def transform(self, df: pd.DataFrame) -> dict[str, torch.Tensor]:
        self.check_columns(df)
        return {col: feature.transform(df[col]) for col, feature in self.features.items()}

    def transform_target(self, df: pd.DataFrame) -> torch.Tensor:
        if self.target.column not in df.columns:
            raise LoopmlError(f"data has no target column '{self.target.column}'")
        return self.target.transform(df[self.target.column])

    def to_dict(self) -> dict:
        out = {
            "features": {
                col: {"config": f.config.model_dump(mode="json"), "state": f.state} for col, f in self.features.items()
            },
            "target": {"column": self.target.column, "kind": self.target.kind, "state": self.target.state},
        }
        if self.views:
            out["views"] = self.views
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> Preprocessor:
        from loopml.config import feature_config

        features = {}
        for col, item in raw["features"].items():
            cfg = feature_config(item["config"]["type"], item["config"])
            features[col] = FEATURE_TYPES.get(cfg.type)(col, cfg, item["state"])
        t = raw["target"]
        return cls(features, Target(t["column"], t["kind"], t["state"]), raw.get("views"))
