"""A weighted ensemble of learners (Caruana greedy forward selection), optionally one stacking level.

Members (each usually ``bagged``; a plain learner is wrapped in ``bagged`` with the ensemble's
``folds``) are fitted one after another, each with its share of what is left of the budget. The
weights come from their out-of-fold (OOF) predictions: 25 rounds of greedy forward selection with
replacement, the best prefix kept (Caruana et al. 2004, as AutoGluon). ``folds: 0`` fits members
on the training split and selects on the validation split's predictions instead (cheap, for small
budgets).

The selection metric is log loss for classes and MSE (on the standardised number) for regression:
a proper, smooth score of the probabilities that everything downstream uses (threshold,
calibration, AUC), which moves with every member added; accuracy is flat between thresholds and
ties on most greedy steps, and AUC ignores calibration and exists for binary targets only.

``stack: true`` also fits a logistic (classes) / ridge (numbers) meta-learner on the members' OOF
scores and keeps it only if its cross-validated OOF loss beats Caruana's cross-validated loss.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from loopml.features import StrictModel
from loopml.learners.bagging import BaggedLearner, fold_indices
from loopml.learners.base import ANY_FEATURE_TYPE, LEARNERS, Budget, Context, FitData, Learner, Split, Task
from loopml.learners.multiview import (
    MULTI,
    as_array,
    combine_contributions,
    from_proba,
    jsonable,
    leaf_learners,
    load_member,
    loss,
    member_name,
    member_params,
    metric_name,
    needed_views,
    normalise_member,
    row_weights,
    save_member,
    select_view,
    to_proba,
    union_views,
)

__all__ = ["EnsembleLearner", "caruana", "leaf_learners", "needed_views"]

MEMBER_SHARE = 0.97  # of each member's even share of what is left; the rest pays for the selection


def caruana(probas: list[np.ndarray], y: np.ndarray, kind: str, weight: np.ndarray | None = None,
            rounds: int = 25) -> tuple[np.ndarray, list[float]]:
    """Greedy forward selection with replacement: (weights of the best prefix, loss after each round)."""
    current = np.zeros_like(probas[0])
    counts = np.zeros(len(probas), dtype=np.int64)
    losses: list[float] = []
    snapshots: list[np.ndarray] = []
    for r in range(1, rounds + 1):
        trial = [loss((current * (r - 1) + p) / r, y, kind, weight) for p in probas]
        best = int(np.argmin(trial))  # ties: the earlier member (members come in priority order)
        current = (current * (r - 1) + probas[best]) / r
        counts[best] += 1
        losses.append(trial[best])
        snapshots.append(counts.copy())
    size = int(np.argmin(losses)) + 1
    return snapshots[size - 1] / size, losses


def blend(probas: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return sum(w * p for w, p in zip(weights, probas, strict=True) if w > 0)


def _stack_features(scores: list[np.ndarray], kind: str) -> np.ndarray:
    return np.column_stack([from_proba(to_proba(s, kind), kind) for s in scores])


def fit_meta(x: np.ndarray, y: np.ndarray, kind: str, weight: np.ndarray | None, seed: int) -> dict:
    """A logistic (classes) / ridge (numbers) regression on member scores, as JSON-able coefficients."""
    if kind == "number":
        from sklearn.linear_model import Ridge

        model = Ridge(alpha=1.0).fit(x, y, sample_weight=weight)
        return {"coef": [model.coef_.tolist()], "intercept": [float(model.intercept_)]}
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x, y.astype(np.int64), sample_weight=weight)
    return {"coef": model.coef_.tolist(), "intercept": model.intercept_.tolist()}


def meta_scores(meta: dict, x: np.ndarray, kind: str) -> np.ndarray:
    z = x @ np.asarray(meta["coef"], dtype=np.float64).T + np.asarray(meta["intercept"], dtype=np.float64)
    return z if kind == "category" else z[:, 0]


@LEARNERS.register("ensemble")
class EnsembleLearner(Learner):
    """``learner: {type: ensemble, members: [lightgbm, xgboost, catboost], stack: false}``."""

    view = MULTI
    accepts = ANY_FEATURE_TYPE

    class Params(Learner.Params):
        type: Literal["ensemble"] = "ensemble"
        #: learner names or sections, in priority order (ties in the selection go to the earlier one)
        members: list[dict[str, Any]] = Field(
            default_factory=lambda: [{"type": "lightgbm"}, {"type": "xgboost"}, {"type": "catboost"}], min_length=1
        )
        #: folds for members that are not ``bagged`` already; 0: no bagging, select on the validation split
        folds: int = Field(5, ge=0, le=50)
        rounds: int = Field(25, ge=1, le=1000)
        stack: bool = False
        #: bagged members fold over train + validation rows (then every bagged member does)
        include_validation: bool = False

        @field_validator("members", mode="before")
        @classmethod
        def _members(cls, value: Any) -> list:
            if not isinstance(value, list):
                value = [value]
            return [normalise_member(v) for v in value]

        @field_validator("folds")
        @classmethod
        def _folds(cls, value: int) -> int:
            if value == 1:
                raise ValueError("folds must be 0 (no bagging) or at least 2")
            return value

    @classmethod
    def views_for(cls, params: StrictModel) -> tuple[str, ...]:
        return union_views([needed_views(*member_params(m)) for m in params.members])

    @classmethod
    def leaves(cls, params: StrictModel) -> list:
        return [leaf for m in params.members for leaf in leaf_learners(*member_params(m))]

    def _reset(self) -> None:
        super()._reset()
        self.members: list[Learner] = []
        self.weights: np.ndarray = np.zeros(0)
        self.meta: dict | None = None

    def _member_configs(self) -> list[dict]:
        p = self.params
        configs = []
        for config in p.members:
            if p.folds and config["type"] != "bagged":
                config = {"type": "bagged", "member": config, "folds": p.folds}
            if p.folds and config["type"] == "bagged":
                config = normalise_member({**config, "include_validation": p.include_validation})
            configs.append(config)
        return configs

    def fit(self, data: FitData, budget: Budget) -> EnsembleLearner:
        self._reset()
        started = time.monotonic()
        configs = self._member_configs()
        fitted: list[Learner] = []
        scores: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        skipped: list[dict] = []
        y_sel = as_array(data.validation.y)
        w_sel = None if data.validation.weight is None else as_array(data.validation.weight)
        for i, config in enumerate(configs):
            left = budget.remaining()
            if left is not None and left <= 0 and fitted:
                skipped.append({"name": member_name(config), "type": config["type"], "params": config,
                                "weight": 0.0, "skipped": "time budget"})
                continue
            cls, params = member_params(config)
            member_budget = Budget(None if left is None else MEMBER_SHARE * left / (len(configs) - i))
            fit_data = FitData(*(Split(select_view(s.x, cls, params), s.y, s.weight) for s in (data.train, data.validation)))
            member = cls(params, self.task, self.context).fit(fit_data, member_budget)
            if isinstance(member, BaggedLearner) and self.params.folds:
                scores.append(member.oof)
                masks.append(member.oof_mask)
                y_sel, w_sel = member.oof_y, member.oof_weight
            else:
                scores.append(member.predict_scores(fit_data.validation.x))
                masks.append(np.ones(len(y_sel), dtype=bool))
            fitted.append(member)
        self._select(fitted, scores, masks, y_sel, w_sel, skipped)
        self.info["seconds"] = round(time.monotonic() - started, 3)
        return self

    @classmethod
    def from_fitted(cls, members: list[Learner], task: Task, y: np.ndarray | None = None,
                    weight: np.ndarray | None = None, scores: list[np.ndarray] | None = None,
                    context: Context | None = None, rounds: int = 25, stack: bool = False) -> EnsembleLearner:
        """An ensemble of learners fitted elsewhere (AutoML): on their OOF (``bagged``) or the given ``scores``."""
        # a refit of these params (retrain) redoes the same: folds=0 selects on given (validation) scores
        bagged = [m for m in members if isinstance(m, BaggedLearner)]
        params = cls.Params(members=[m.params.model_dump(mode="json") for m in members], rounds=rounds, stack=stack,
                            folds=0 if scores is not None else cls.Params().folds,
                            include_validation=bool(bagged) and scores is None and bagged[0].params.include_validation)
        ensemble = cls(params, task, context)
        if scores is None:
            scores = [m.oof for m in members]  # type: ignore[attr-defined]
            masks = [m.oof_mask for m in members]  # type: ignore[attr-defined]
            y = members[0].oof_y if y is None else y  # type: ignore[attr-defined]
            weight = members[0].oof_weight if weight is None else weight  # type: ignore[attr-defined]
        else:
            masks = [np.ones(len(s), dtype=bool) for s in scores]
        ensemble._select(list(members), list(scores), masks, as_array(y), weight, [])
        return ensemble

    def _select(self, fitted: list[Learner], scores: list[np.ndarray], masks: list[np.ndarray],
                y: np.ndarray, weight: np.ndarray | None, skipped: list[dict]) -> None:
        kind = self.task.kind
        if len({len(s) for s in scores} | {len(y)}) != 1:
            raise ValueError("ensemble members' OOF predictions cover different rows (mixed include_validation?)")
        mask = np.logical_and.reduce(masks)
        y = y[mask]
        w = row_weights(self.task, y, None if weight is None else as_array(weight)[mask])
        probas = [to_proba(s[mask], kind) for s in scores]
        weights, losses = caruana(probas, y, kind, w, self.params.rounds)
        info: dict[str, Any] = {
            "metric": metric_name(kind), "selection_rows": int(mask.sum()), "mode": "caruana",
            "caruana_loss": min(losses), "oof_score": min(losses), "ensemble_size": int(np.argmin(losses)) + 1,
        }
        meta = None
        if self.params.stack and len(fitted) > 1:
            meta, info_stack = self._try_stack(probas, [s[mask] for s in scores], y, w)
            info.update(info_stack)
        keep = list(range(len(fitted))) if meta is not None else [i for i in range(len(fitted)) if weights[i] > 0]
        self.members = [fitted[i] for i in keep]
        self.weights = weights[keep]
        self.meta = meta
        self.history = [{"iteration": r + 1, f"oof_{info['metric']}": v} for r, v in enumerate(losses)]
        rows, names = [], set()
        for i, member in enumerate(fitted):
            name = member.info.get("name") or member_name(member.params.model_dump(mode="json"))
            unique = name if name not in names else f"{name}_{i}"
            names.add(unique)
            rows.append({
                "name": unique, "type": member.registered_name, "params": member.params.model_dump(mode="json"),
                "oof_score": float(loss(probas[i], y, kind, w)), "weight": float(weights[i]),
                "seconds": member.info.get("seconds"), "folds_fitted": member.info.get("folds_fitted"),
                "folds_skipped": member.info.get("folds_skipped"), "saved": i in keep,
            })
        info["members"] = rows + skipped
        self.info = jsonable(info)

    def _try_stack(self, probas: list[np.ndarray], scores: list[np.ndarray], y: np.ndarray,
                   w: np.ndarray | None) -> tuple[dict | None, dict]:
        """Meta-learner vs Caruana, both cross-validated on the OOF rows; the meta-learner only if it wins."""
        kind, seed = self.task.kind, self.task.seed
        x = _stack_features(scores, kind)
        car, stk = np.zeros_like(probas[0]), np.zeros_like(probas[0])
        for held in fold_indices(y, kind, 5, seed):
            rest = np.setdiff1d(np.arange(len(y)), held, assume_unique=True)
            wr = None if w is None else w[rest]
            fold_w, _ = caruana([p[rest] for p in probas], y[rest], kind, wr, self.params.rounds)
            car[held] = blend([p[held] for p in probas], fold_w)
            stk[held] = to_proba(meta_scores(fit_meta(x[rest], y[rest], kind, wr, seed), x[held], kind), kind)
        car_cv, stack_cv = loss(car, y, kind, w), loss(stk, y, kind, w)
        info = {"caruana_cv": car_cv, "stack_cv": stack_cv}
        if stack_cv >= car_cv:
            return None, info
        meta = fit_meta(x, y, kind, w, seed)
        return meta, {**info, "mode": "stack", "oof_score": stack_cv}

    def predict_scores(self, x: Any) -> np.ndarray:
        if not self.members:
            raise RuntimeError("ensemble is not fitted")
        kind = self.task.kind
        scores = []
        for member in self.members:
            cls = type(member)
            scores.append(member.predict_scores(select_view(x, cls, member.params)))
        if self.meta is not None:
            return meta_scores(self.meta, _stack_features(scores, kind), kind)
        return from_proba(blend([to_proba(s, kind) for s in scores], self.weights), kind)

    def contributions(self, x: Any) -> np.ndarray | None:
        """Weighted members' attributions (Caruana, members reading one view); None for stacking or mixed views."""
        if self.meta is not None or len({type(m).views_for(m.params) if m.view == MULTI else (m.view,)
                                         for m in self.members}) != 1:
            return None
        parts = [m.contributions(select_view(x, type(m), m.params)) for m in self.members]
        return combine_contributions(parts, self.weights, self.predict_scores(x))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        for i, member in enumerate(self.members):
            save_member(member, folder / "members" / str(i))
        doc = {"weights": self.weights.tolist(), "meta": self.meta, "info": self.info, "history": self.history}
        (folder / "ensemble.json").write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, folder: Path, params: StrictModel, task: Task, context: Context | None = None) -> EnsembleLearner:
        folder = Path(folder)
        doc = json.loads((folder / "ensemble.json").read_text())
        learner = cls(params, task, context)
        learner.weights = np.asarray(doc["weights"], dtype=np.float64)
        learner.members = [load_member(folder / "members" / str(i), task, context) for i in range(len(learner.weights))]
        learner.meta, learner.info, learner.history = doc["meta"], doc["info"], doc["history"]
        return learner
