"""LightGBM as a learner: native categoricals, early stopping and the time budget per round, text model file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from loopml.errors import LoopmlError, did_you_mean
from loopml.features.views import TableView
from loopml.learners.base import LEARNERS, Split
from loopml.learners.trees import Stopper, TreeLearner, TreeParams, check_target, sample_weights

#: canonical LightGBM names loopml sets (or that would read/write files, or change the task)
_MANAGED = frozenset({"objective", "metric", "num_class", "num_threads", "seed", "deterministic", "verbosity",
                      "force_col_wise", "force_row_wise", "num_iterations", "early_stopping_round", "task", "data",
                      "valid", "input_model", "output_model", "device_type", "boost_from_average",
                      "save_binary", "snapshot_freq", "output_result", "machine_list_filename", "machines",
                      "num_machines", "forcedbins_filename", "forcedsplits_filename", "parser_config_file"})

_OBJECTIVES = {"binary": ("binary", "binary_logloss"), "category": ("multiclass", "multi_logloss"),
               "number": ("regression", "rmse")}


@LEARNERS.register("lightgbm")
class LightGBMLearner(TreeLearner):
    """Leaf-wise boosted trees; category codes go in as LightGBM categoricals (NaN = missing/unseen)."""

    model_file = "lightgbm.txt"

    class Params(TreeParams):
        type: Literal["lightgbm"] = "lightgbm"
        num_leaves: int = Field(31, ge=2)
        max_depth: int = -1  # -1: no limit (num_leaves bounds the tree)
        min_child_samples: int = Field(20, ge=1)
        min_child_weight: float = Field(1e-3, ge=0)
        #: row subsampling per round (bagging); 1 = off
        subsample: float = Field(1.0, gt=0, le=1)
        colsample_bytree: float = Field(1.0, gt=0, le=1)
        reg_alpha: float = Field(0.0, ge=0)
        reg_lambda: float = Field(0.0, ge=0)
        min_split_gain: float = Field(0.0, ge=0)
        max_bin: int = Field(255, ge=2)
        cat_smooth: float = Field(10.0, ge=0)
        cat_l2: float = Field(10.0, ge=0)
        max_cat_to_onehot: int = Field(4, ge=1)
        min_data_per_group: int = Field(100, ge=1)

    def metric_name(self) -> str:
        return _OBJECTIVES[self.task.kind][1]

    def check_extra(self, extra: dict) -> None:
        from lightgbm.basic import _ConfigAliases

        # every name and alias LightGBM reads, to its canonical name: an alias ('app' for
        # 'objective') must not slip past the names loopml sets, nor a typo be silently ignored
        canonical = {a: name for name, aliases in _ConfigAliases._get_all_param_aliases().items()
                     for a in (name, *aliases)}
        for key in extra:
            if key not in canonical:
                raise LoopmlError(f"learner.extra: unknown lightgbm parameter {key!r}{did_you_mean(key, canonical)}")
            if canonical[key] in _MANAGED:
                raise LoopmlError(f"learner.extra: {key!r} (lightgbm's {canonical[key]!r}) is set by loopml itself")

    def library_errors(self) -> tuple[type[BaseException], ...]:
        import lightgbm as lgb

        return (lgb.basic.LightGBMError,)

    @staticmethod
    def library_version() -> str:
        import lightgbm

        return lightgbm.__version__

    def library_params(self) -> dict[str, Any]:
        p: LightGBMLearner.Params = self.params  # type: ignore[assignment]
        objective, metric = _OBJECTIVES[self.task.kind]
        params: dict[str, Any] = {
            "objective": objective, "metric": metric, "learning_rate": p.learning_rate,
            "num_leaves": p.num_leaves, "max_depth": p.max_depth, "min_child_samples": p.min_child_samples,
            "min_child_weight": p.min_child_weight, "bagging_fraction": p.subsample,
            "bagging_freq": 1 if p.subsample < 1 else 0, "feature_fraction": p.colsample_bytree,
            "lambda_l1": p.reg_alpha, "lambda_l2": p.reg_lambda, "min_split_gain": p.min_split_gain,
            "max_bin": p.max_bin, "cat_smooth": p.cat_smooth, "cat_l2": p.cat_l2,
            "max_cat_to_onehot": p.max_cat_to_onehot, "min_data_per_group": p.min_data_per_group,
            "num_threads": self.task.threads, "seed": self.task.seed,
            # same trees for the same data, seed and threads (col-wise: no timing-based choice)
            "deterministic": True, "force_col_wise": True, "verbosity": -1,
        }
        if self.task.kind == "category":
            params["num_class"] = self.task.n_classes
        params.update(p.extra)
        return params

    def _train(self, train: Split, validation: Split | None, stopper: Stopper) -> None:
        import lightgbm as lgb

        params = self.library_params()
        cats = sorted(self.categorical)
        names = self.generic_names()

        def dataset(split: Split, reference: Any = None) -> Any:
            return lgb.Dataset(split.x.x, label=check_target(split, self.task), weight=sample_weights(split, self.task),
                               feature_name=names, categorical_feature=cats, reference=reference,
                               params={"max_bin": params["max_bin"], "verbosity": -1}, free_raw_data=True)

        dtrain = dataset(train)
        valid_sets, valid_names = [dtrain], ["train"]
        if validation is not None:
            valid_sets.append(dataset(validation, dtrain))
            valid_names.append("validation")
        metric = params["metric"]

        def callback(env: Any) -> None:
            results = {(r[0], r[1]): r[2] for r in env.evaluation_result_list}
            reason = stopper.update(env.iteration - env.begin_iteration, results.get(("train", metric)),
                                    results.get(("validation", metric)))
            if reason:
                raise lgb.callback.EarlyStopException(stopper.best, [])

        booster = lgb.train(params, dtrain, num_boost_round=self.params.n_estimators, valid_sets=valid_sets,
                            valid_names=valid_names, callbacks=[callback])
        # keep only the rounds up to the best one: predict, save and load then use the same trees
        self.model = lgb.Booster(model_str=booster.model_to_string(num_iteration=stopper.kept))

    def _predict(self, x: TableView) -> np.ndarray:
        return self.model.predict(x.x, raw_score=True, num_threads=self.task.threads)

    def _contributions(self, x: TableView) -> np.ndarray:
        out = self.model.predict(x.x, pred_contrib=True, num_threads=self.task.threads)
        if self.task.kind == "category":  # (n, K * (columns + 1)), class-major -> (n, columns + 1, K)
            out = np.asarray(out).reshape(len(x), self.task.n_classes, -1).transpose(0, 2, 1)
        return out

    def _save_model(self, path: Path) -> None:
        self.model.save_model(str(path))

    def _load_model(self, path: Path) -> Any:
        import lightgbm as lgb

        text = path.read_text(encoding="utf-8", errors="replace")
        problem = _framing_problem(text)
        if problem is not None:
            raise LoopmlError(f"{path.name} is not a complete LightGBM model ({problem})")
        # without tree_sizes LightGBM parses the trees one by one and raises on a bad one; with it, its
        # parallel parser aborts or crashes the whole process (a served model swap included)
        try:
            booster = lgb.Booster(model_str=_TREE_SIZES.sub("", text, count=1))
        except lgb.basic.LightGBMError as e:
            raise LoopmlError(f"{path.name} is not a valid LightGBM model: {str(e)[:200]}") from None
        if booster.num_model_per_iteration() != self.task.n_outputs:
            raise LoopmlError(f"{path.name} has {booster.num_model_per_iteration()} outputs per round, "
                              f"the target needs {self.task.n_outputs}: modified?")
        return booster


_TREE_SIZES = re.compile(r"^tree_sizes=[0-9 ]*\n", re.MULTILINE)


def _framing_problem(text: str) -> str | None:
    """Why a LightGBM model text is cut short (a truncated file still parses, into fewer trees), or None."""
    head, found, _ = text.partition("\nTree=")
    if not found or "\nend of trees" not in text:
        return "no 'end of trees': truncated?"
    sizes = _TREE_SIZES.search(head + "\n")
    if sizes is not None:  # each tree starts where the header says, and the last ends at 'end of trees'
        position = len(head) + 1
        for size in sizes.group(0).removeprefix("tree_sizes=").split():
            if not text.startswith("Tree=", position):
                return "a tree is not where its size says: truncated or modified?"
            position += int(size)
        if not text.startswith("end of trees", position):
            return "the trees end before 'end of trees': truncated or modified?"
    return None
