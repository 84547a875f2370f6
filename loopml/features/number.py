from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from loopml.data.validate import out_of_range
from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel, is_missing


class NumberConfig(StrictModel):
    type: Literal["number"] = "number"
    missing: Literal["mean", "median", "constant", "drop"] = "median"
    fill_value: float = 0.0
    #: auto = log1p for non-negative, heavily skewed columns, then z-score; else z-score
    normalize: Literal["auto", "zscore", "minmax", "log1p", "none"] = "auto"
    #: add a 0/1 "was missing" input when the training column had missing values
    missing_indicator: bool = True
    #: piecewise-linear encoding over this many quantile bins (0 = off): lets an MLP learn
    #: threshold effects that a single scaled value hides
    bins: int = Field(32, ge=0, le=256)


def as_numbers(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


@FEATURE_TYPES.register("number")
class NumberFeature(FeatureType):
    Config = NumberConfig
    infer_priority = 30

    @classmethod
    def infer(cls, column: pd.Series, stats: dict) -> bool:
        return stats["numeric_ratio"] >= 0.98

    def fit(self, column: pd.Series) -> dict:
        cfg: NumberConfig = self.config
        values = as_numbers(column)
        present = values[~np.isnan(values)]
        if present.size == 0:
            present = np.zeros(1)
        median = np.median(present)
        fill = {"mean": present.mean(), "median": median, "drop": median}.get(cfg.missing, cfg.fill_value)
        method = cfg.normalize
        if method == "auto":
            skew = float(pd.Series(present).skew()) if present.size > 2 else 0.0
            method = "log1p" if present.min() >= 0 and abs(skew) > 2.0 else "zscore"
        scaled = _scale_raw(np.where(np.isnan(values), fill, values), method)
        if method == "minmax":
            lo, hi = float(scaled.min()), float(scaled.max())
            center, scale = lo, (hi - lo) or 1.0
        elif method == "none":
            center, scale = 0.0, 1.0
        else:  # zscore, and log1p followed by a z-score
            center, scale = float(scaled.mean()), float(scaled.std()) or 1.0
        edges = []
        if cfg.bins:
            filled = np.where(np.isnan(values), fill, values)
            edges = np.unique(np.quantile(filled, np.linspace(0, 1, cfg.bins + 1))).tolist()
        self.state = {
            "edges": edges if len(edges) > 2 else [],
            "fill": float(fill),
            "method": method,
            "center": center,
            "scale": scale,
            "indicator": bool(cfg.missing_indicator and np.isnan(values).any()),
        }
        return self.state

    def transform(self, column: pd.Series) -> torch.Tensor:
        # a value far outside the training range overflows to inf here; the callers refuse non-finite
        # tensors with a message naming the column, so numpy's warning would only be noise in the log
        with np.errstate(over="ignore", invalid="ignore"):
            return self._transform(column)

    def _transform(self, column: pd.Series) -> torch.Tensor:
        s = self.state
        values = as_numbers(column)
        missing = np.isnan(values)
        scaled = (_scale_raw(np.where(missing, s["fill"], values), s["method"]) - s["center"]) / s["scale"]
        parts = [scaled]
        edges = np.asarray(s.get("edges", []))
        if edges.size:
            raw = np.where(missing, s["fill"], values)[:, None]
            lo, hi = edges[:-1][None, :], edges[1:][None, :]
            parts = [scaled] + list(np.clip((raw - lo) / (hi - lo), 0.0, 1.0).T)
        if s["indicator"]:
            parts.append(missing.astype(np.float64))
        return torch.from_numpy(np.stack(parts, axis=1).astype(np.float32))

    def unusable(self, column: pd.Series) -> pd.Series:
        """Text that is not a number ('old'), and numbers beyond the float32 range (inf, 1e308)."""
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            return pd.Series(out_of_range(column), index=column.index)  # no text possible: vectorised
        present = np.array([not is_missing(v) for v in column.tolist()], dtype=bool)
        return pd.Series(present & (np.isnan(as_numbers(column)) | out_of_range(column)), index=column.index)

    def encoder_inputs(self) -> dict:
        bins = max(len(self.state.get("edges", [])) - 1, 0)
        return {"width": 1 + bins + (1 if self.state["indicator"] else 0)}


def _scale_raw(values: np.ndarray, method: str) -> np.ndarray:
    if method == "log1p":
        return np.sign(values) * np.log1p(np.abs(values))
    return values
