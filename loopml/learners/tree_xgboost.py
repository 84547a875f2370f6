"""XGBoost as a learner: hist trees, native categoricals (feature type 'c'), JSON model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from loopml.errors import LoopmlError, did_you_mean
from loopml.features.views import TableView
from loopml.learners.base import LEARNERS, Split
from loopml.learners.trees import Stopper, TreeLearner, TreeParams, check_target, sample_weights

_OBJECTIVES = {"binary": ("binary:logistic", "logloss"), "category": ("multi:softprob", "mlogloss"),
               "number": ("reg:squarederror", "rmse")}


@LEARNERS.register("xgboost")
class XGBoostLearner(TreeLearner):
    """Depth-wise hist trees; category codes go in as categoricals (NaN = missing/unseen)."""

    model_file = "xgboost.json"

    class Params(TreeParams):
        type: Literal["xgboost"] = "xgboost"
        learning_rate: float = Field(0.1, gt=0, le=1)
        max_depth: int = Field(6, ge=0)
        #: 0 = no limit; with grow_policy lossguide this bounds the tree instead of max_depth
        max_leaves: int = Field(0, ge=0)
        grow_policy: Literal["depthwise", "lossguide"] = "depthwise"
        min_child_weight: float = Field(1.0, ge=0)
        subsample: float = Field(1.0, gt=0, le=1)
        colsample_bytree: float = Field(1.0, gt=0, le=1)
        reg_alpha: float = Field(0.0, ge=0)
        reg_lambda: float = Field(1.0, ge=0)
        gamma: float = Field(0.0, ge=0)
        max_bin: int = Field(256, ge=2)
        #: categories up to this many are split one-vs-rest, more by partitions
        max_cat_to_onehot: int = Field(4, ge=1)

    def metric_name(self) -> str:
        return _OBJECTIVES[self.task.kind][1]

    def check_extra(self, extra: dict) -> None:
        if not extra:
            return
        import json

        import xgboost as xgb

        # XGBoost ignores a name it does not know (a warning at most): read every name it does
        # know from the configuration of a booster with loopml's own parameters
        params = {k: v for k, v in self.library_params().items() if k not in extra}
        tiny = xgb.DMatrix(np.arange(4.0).reshape(2, 2), label=np.arange(2.0))
        booster = xgb.train(params, tiny, num_boost_round=0)  # configured, no trees
        known: set[str] = set()
        stack: list[Any] = [json.loads(booster.save_config())]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                known.update(node)
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        for key in extra:
            if key not in known:
                raise LoopmlError(f"learner.extra: unknown xgboost parameter {key!r}{did_you_mean(key, known)}")

    def library_errors(self) -> tuple[type[BaseException], ...]:
        import xgboost as xgb

        return (xgb.core.XGBoostError,)

    @staticmethod
    def library_version() -> str:
        import xgboost

        return xgboost.__version__

    def library_params(self) -> dict[str, Any]:
        p: XGBoostLearner.Params = self.params  # type: ignore[assignment]
        objective, metric = _OBJECTIVES[self.task.kind]
        params: dict[str, Any] = {
            "objective": objective, "eval_metric": metric, "eta": p.learning_rate, "max_depth": p.max_depth,
            "max_leaves": p.max_leaves, "grow_policy": p.grow_policy, "min_child_weight": p.min_child_weight,
            "subsample": p.subsample, "colsample_bytree": p.colsample_bytree, "alpha": p.reg_alpha,
            "lambda": p.reg_lambda, "gamma": p.gamma, "max_bin": p.max_bin, "max_cat_to_onehot": p.max_cat_to_onehot,
            "tree_method": "hist", "nthread": self.task.threads, "seed": self.task.seed, "verbosity": 0,
        }
        if self.task.kind == "category":
            params["num_class"] = self.task.n_classes
        params.update(self.params.extra)
        return params

    def _matrix(self, x: np.ndarray, split: Split | None = None) -> Any:
        import xgboost as xgb

        types = ["c" if i in self.categorical else "q" for i in range(x.shape[1])]
        label = None if split is None else check_target(split, self.task)
        weight = None if split is None else sample_weights(split, self.task)
        return xgb.DMatrix(x, label=label, weight=weight, missing=np.nan, feature_names=self.generic_names(),
                           feature_types=types, enable_categorical=True, nthread=self.task.threads)

    def _train(self, train: Split, validation: Split | None, stopper: Stopper) -> None:
        import xgboost as xgb

        metric = self.metric_name()
        dtrain = self._matrix(train.x.x, train)
        evals = [(dtrain, "train")]
        if validation is not None:
            evals.append((self._matrix(validation.x.x, validation), "validation"))

        class Budgeted(xgb.callback.TrainingCallback):
            def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
                def last(name: str) -> float | None:
                    values = evals_log.get(name, {}).get(metric)
                    return float(values[-1]) if values else None

                return stopper.update(epoch, last("train"), last("validation")) is not None

        booster = xgb.train(self.library_params(), dtrain, num_boost_round=self.params.n_estimators, evals=evals,
                            callbacks=[Budgeted()], verbose_eval=False)
        # keep only the rounds up to the best one: predict, save and load then use the same trees
        self.model = booster[: stopper.kept]
        self.model.set_param({"nthread": self.task.threads})

    def _predict(self, x: TableView) -> np.ndarray:
        # in place (no DMatrix): the same margins, half the time for the one-row batches a server sends
        return self.model.inplace_predict(x.x, predict_type="margin", missing=np.nan)

    def _contributions(self, x: TableView) -> np.ndarray:
        out = self.model.predict(self._matrix(x.x), pred_contribs=True)
        if self.task.kind == "category":  # (n, K, columns + 1) -> (n, columns + 1, K)
            out = out.transpose(0, 2, 1)
        return out

    def _save_model(self, path: Path) -> None:
        self.model.save_model(str(path))

    def _load_model(self, path: Path) -> Any:
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(path))
        booster.set_param({"nthread": self.task.threads})
        return booster
