"""k-fold bagging of one member learner: out-of-fold predictions for the ensemble, the mean of the folds to predict.

As AutoGluon: fold j's model trains on the other folds and early-stops on fold j, whose rows get
its out-of-fold (OOF) prediction; a prediction is the mean of the fold models' probabilities
(numbers for regression), turned back into logits / standardised numbers. Folds run in parallel
threads (the GBM libraries release the GIL), each member single-threaded, ``Task.threads`` at once.
Each fold is given 0.8 x remaining / rounds of folds left; once a fold has finished, a fold that
its time says will not fit in what is left is skipped (recorded in ``info``), so its rows have no
OOF prediction (``oof_mask``). ``refit: true`` then fits one model on every row for the folds' mean
best iteration, which alone predicts (AutoGluon's refit_full: one model to serve instead of k).
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from loopml.errors import LoopmlError
from loopml.features import StrictModel
from loopml.learners.base import ANY_FEATURE_TYPE, LEARNERS, Budget, Context, FitData, Learner, Split, Task
from loopml.learners.multiview import (
    MULTI,
    as_array,
    combine_contributions,
    concat_views,
    from_proba,
    jsonable,
    leaf_learners,
    load_member,
    loss,
    member_name,
    member_params,
    member_task,
    metric_name,
    needed_views,
    normalise_member,
    row_weights,
    save_member,
    select_view,
    take_rows,
    to_proba,
)

FOLD_SHARE = 0.8
#: batches this large predict the folds in parallel threads; a few rows (serving) stay in the caller's thread
PARALLEL_ROWS = 2048


def fold_indices(y: np.ndarray, kind: str, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out row indices per fold: stratified for classes (when every class can fill the folds)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(y)
    if folds > n:
        raise LoopmlError(f"bagging needs at least {folds} rows for {folds} folds, got {n}")
    dummy = np.zeros(n)
    if kind != "number" and np.bincount(y.astype(np.int64)).min() >= folds:
        splitter: Any = StratifiedKFold(folds, shuffle=True, random_state=seed)
        return [held for _, held in splitter.split(dummy, y.astype(np.int64))]
    return [held for _, held in KFold(folds, shuffle=True, random_state=seed).split(dummy)]


@LEARNERS.register("bagged")
class BaggedLearner(Learner):
    """``learner: {type: bagged, member: {type: lightgbm, ...}, folds: 5}``."""

    view = MULTI
    accepts = ANY_FEATURE_TYPE

    class Params(Learner.Params):
        type: Literal["bagged"] = "bagged"
        #: the learner bagged: a name or its full section (validated against that learner's Params)
        member: dict[str, Any] = Field(default_factory=lambda: {"type": "lightgbm"})
        folds: int = Field(5, ge=2, le=50)
        #: folds over train + validation rows (AutoGluon's way) instead of the training rows only
        include_validation: bool = False
        seed: int | None = None  # None: the task's seed
        #: after the folds, fit one model on all rows for the folds' mean best iteration and predict with it
        #: alone (AutoGluon's refit_full: 1 model to serve, not ``folds``); learners with ``n_estimators`` only
        refit: bool = False

        @field_validator("member", mode="before")
        @classmethod
        def _member(cls, value: Any) -> dict:
            return normalise_member(value)

    @classmethod
    def views_for(cls, params: StrictModel) -> tuple[str, ...]:
        return needed_views(*member_params(params.member))

    @classmethod
    def leaves(cls, params: StrictModel) -> list:
        return leaf_learners(*member_params(params.member))

    def _reset(self) -> None:
        super()._reset()
        self.models: dict[int, Learner] = {}
        #: the refit model on all rows (``refit: true``); when set it alone predicts
        self.full: Learner | None = None
        #: out-of-fold scores of the rows folded over (train, or train + validation), NaN where skipped
        self.oof: np.ndarray | None = None
        self.oof_mask: np.ndarray | None = None
        self.oof_y: np.ndarray | None = None
        self.oof_weight: np.ndarray | None = None

    # -- fit ---------------------------------------------------------------------------------

    def _fold_rows(self, data: FitData) -> Split:
        if not self.params.include_validation:
            return data.train
        t, v = data.train, data.validation
        weight = None
        if t.weight is not None or v.weight is not None:
            weight = np.concatenate([_weights_or_ones(t), _weights_or_ones(v)])
        y = np.concatenate([as_array(t.y), as_array(v.y)])
        return Split(concat_views(t.x, v.x), y, weight)

    def fit(self, data: FitData, budget: Budget) -> BaggedLearner:
        self._reset()
        started = time.monotonic()
        cls, params = member_params(self.params.member)
        rows = self._fold_rows(data)
        x = select_view(rows.x, cls, params)
        y = as_array(rows.y)
        weight = None if rows.weight is None else as_array(rows.weight)
        seed = self.task.seed if self.params.seed is None else self.params.seed
        held = fold_indices(y, self.task.kind, self.params.folds, seed)
        n, k = len(y), len(held)
        oof = np.full((n, self.task.n_classes) if self.task.kind == "category" else (n,), np.nan)

        def run_fold(j: int, fold_budget: Budget) -> tuple[Learner, float]:
            t0 = time.monotonic()
            keep = np.setdiff1d(np.arange(n), held[j], assume_unique=True)
            split = FitData(_rows(x, y, weight, keep), _rows(x, y, weight, held[j]))
            learner = cls(params, member_task(self.task, j), self.context).fit(split, fold_budget)
            oof[held[j]] = learner.predict_scores(split.validation.x)
            return learner, time.monotonic() - t0

        concurrency = max(1, min(self.task.threads, k))
        pending, running = list(range(k)), {}
        fold_seconds: dict[int, float] = {}
        skipped: list[int] = []
        with ThreadPoolExecutor(concurrency) as pool:
            while pending or running:
                while pending and len(running) < concurrency:
                    left = budget.remaining()
                    slowest = max(fold_seconds.values(), default=None)
                    # the first fold always runs; later ones only if the first one's time fits
                    if left is not None and slowest is not None and slowest > left:
                        skipped.extend(pending)
                        pending = []
                        break
                    rounds_left = math.ceil(len(pending) / concurrency)
                    share = None if left is None else FOLD_SHARE * left / rounds_left
                    j = pending.pop(0)
                    running[pool.submit(run_fold, j, Budget(share))] = j
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: running[f]):
                    j = running.pop(future)
                    self.models[j], fold_seconds[j] = _result(future)
        self.models = dict(sorted(self.models.items()))
        mask = np.zeros(n, dtype=bool)
        for j in self.models:
            mask[held[j]] = True
        self.oof, self.oof_mask, self.oof_y, self.oof_weight = oof, mask, y, weight
        score = loss(to_proba(oof[mask], self.task.kind), y[mask], self.task.kind,
                     _masked(row_weights(self.task, y, weight), mask))
        for j, model in self.models.items():
            self.history.extend({"fold": j, **row} for row in model.history)
        refit = self._refit(cls, params, x, y, weight, budget, max(fold_seconds.values())) if self.params.refit else None
        self.info = jsonable({
            "name": member_name(self.params.model_dump(mode="json")),
            "metric": metric_name(self.task.kind),
            "oof_score": score,
            "oof_rows": int(mask.sum()),
            "folds": k,
            "folds_fitted": sorted(self.models),
            "folds_skipped": sorted(skipped),
            "skip_reason": "time budget: the first fold's time would not fit" if skipped else None,
            "fold_seconds": [round(fold_seconds[j], 3) for j in sorted(fold_seconds)],
            "fold_info": [model.info for model in self.models.values()],
            "refit": refit,
            "seconds": round(time.monotonic() - started, 3),
        })
        if self.full is not None:
            self.models = {}  # the folds were for the OOF predictions; the refit model predicts
        return self

    def _refit(self, cls: type[Learner], params: StrictModel, x: Any, y: np.ndarray, weight: np.ndarray | None,
               budget: Budget, slowest: float) -> str:
        """Fit ``self.full`` on every row for the folds' mean best iteration; the outcome as a sentence."""
        best = [m.info.get("best_iteration") for m in self.models.values()]
        if "n_estimators" not in type(params).model_fields or any(not isinstance(b, int) for b in best):
            return f"not done: {cls.registered_name} has no n_estimators/best_iteration"
        left = budget.remaining()
        if left is not None and left < 1.5 * slowest:
            return "not done: time budget"
        rounds = max(1, round(float(np.mean(best))))
        update = {"n_estimators": rounds}
        if "early_stopping_rounds" in type(params).model_fields:
            update["early_stopping_rounds"] = 0
        every = np.arange(len(y))
        data = FitData(_rows(x, y, weight, every), _rows(x, y, weight, every[:0]))
        self.full = cls(params.model_copy(update=update), member_task(self.task, len(self.models)), self.context)
        self.full.fit(data, Budget(left))
        return f"done: {rounds} rounds on {len(y)} rows"

    # -- predict / save ------------------------------------------------------------------------

    def predict_scores(self, x: Any) -> np.ndarray:
        if not self.models and self.full is None:
            raise RuntimeError("bagged learner is not fitted")
        cls, params = member_params(self.params.member)
        view = select_view(x, cls, params)
        models = [self.full] if self.full is not None else list(self.models.values())
        workers = min(self.task.threads, len(models)) if _n_rows(view) >= PARALLEL_ROWS else 1
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                scores = list(pool.map(lambda m: m.predict_scores(view), models))
        else:
            scores = [m.predict_scores(view) for m in models]
        return from_proba(np.mean([to_proba(s, self.task.kind) for s in scores], axis=0), self.task.kind)

    def contributions(self, x: Any) -> np.ndarray | None:
        """The mean of the folds' attributions; each row sums to ``predict_scores`` (see combine_contributions)."""
        cls, params = member_params(self.params.member)
        view = select_view(x, cls, params)
        models = [self.full] if self.full is not None else list(self.models.values())
        parts = [m.contributions(view) for m in models]
        return combine_contributions(parts, np.full(len(parts), 1.0 / len(parts)), self.predict_scores(x))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        for j, model in self.models.items():
            save_member(model, folder / "folds" / str(j))
        if self.full is not None:
            save_member(self.full, folder / "full")
        doc = {"folds": sorted(self.models), "full": self.full is not None, "info": self.info,
               "history": jsonable(self.history)}
        (folder / "bagged.json").write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, folder: Path, params: StrictModel, task: Task, context: Context | None = None) -> BaggedLearner:
        folder = Path(folder)
        doc = json.loads((folder / "bagged.json").read_text())
        learner = cls(params, task, context)
        learner.models = {int(j): load_member(folder / "folds" / str(j), member_task(task, int(j)), context)
                          for j in doc["folds"]}
        if doc.get("full"):
            learner.full = load_member(folder / "full", member_task(task, len(doc["folds"])), context)
        learner.info, learner.history = doc["info"], doc["history"]
        return learner


def _weights_or_ones(split: Split) -> np.ndarray:
    return np.ones(len(split)) if split.weight is None else as_array(split.weight).astype(np.float64)


def _rows(x: Any, y: np.ndarray, weight: np.ndarray | None, index: np.ndarray) -> Split:
    return Split(take_rows(x, index), y[index], None if weight is None else weight[index])


def _n_rows(view: Any) -> int:
    if isinstance(view, dict):
        return _n_rows(next(iter(view.values()))) if view else 0
    return len(view)


def _masked(weight: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if weight is None else weight[mask]


def _result(future: Future) -> Any:
    return future.result()  # re-raises the fold's error in this thread
