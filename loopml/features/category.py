from __future__ import annotations

from typing import Literal

import pandas as pd
import torch
from pydantic import Field

from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel

UNKNOWN = 0  # index of the bucket for unseen, rare and (by default) missing values
MISSING_TOKEN = "<missing>"


class CategoryConfig(StrictModel):
    type: Literal["category"] = "category"
    #: constant = missing values are a category of their own; mode = the most frequent value
    missing: Literal["constant", "mode", "drop"] = "constant"
    #: values seen fewer times than this in training go to the unknown bucket (one sighting
    #: cannot be learned from, and ids/tickets would otherwise become noise embeddings)
    min_frequency: int = Field(2, ge=1)
    max_vocab: int = 10_000


def is_missing(value: object) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def as_strings(column: pd.Series) -> pd.Series:
    return column.map(lambda v: str(v).strip(), na_action="ignore")


@FEATURE_TYPES.register("category")
class CategoryFeature(FeatureType):
    Config = CategoryConfig
    infer_priority = 90  # the fallback for anything not claimed by a more specific type
    tensor_dtype = torch.long

    @classmethod
    def infer(cls, column: pd.Series, stats: dict) -> bool:
        return True

    def _fill(self, column: pd.Series, mode: str | None) -> pd.Series:
        values = as_strings(column)
        return values.fillna(mode if self.config.missing == "mode" and mode else MISSING_TOKEN)

    def fit(self, column: pd.Series) -> dict:
        cfg: CategoryConfig = self.config
        present = as_strings(column.dropna())
        mode = present.mode().iloc[0] if len(present) else None
        counts = self._fill(column, mode).value_counts()
        counts = counts[counts >= cfg.min_frequency]
        # ties broken by value so the vocabulary does not depend on row order
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.max_vocab]
        self.state = {"vocab": [value for value, _ in ordered], "mode": mode}
        return self.state

    def transform(self, column: pd.Series) -> torch.Tensor:
        # plain Python over the values: as fast as pandas for big columns, 10x faster for the one-row
        # batches a server sees
        vocab = self.state["vocab"]
        if getattr(self, "_index_of", None) is not vocab:
            self._index, self._index_of = {value: i + 1 for i, value in enumerate(vocab)}, vocab
        mode = self.state["mode"]
        fill = mode if self.config.missing == "mode" and mode else MISSING_TOKEN
        index = self._index
        ids = [index.get(fill if is_missing(v) else str(v).strip(), UNKNOWN) for v in column.tolist()]
        return torch.tensor(ids, dtype=torch.int64)

    def encoder_inputs(self) -> dict:
        return {"vocab_size": len(self.state["vocab"]) + 1}
