"""AutoML's last phase: ensembles of the fitted members (mixed into ``AutoMLLearner``).

``fast``: a Caruana ensemble on the members' validation predictions. ``best``: k-fold bagging of the
members that ensemble would use, then a Caruana ensemble on their out-of-fold predictions.
"""

from __future__ import annotations

import time

import numpy as np

from loopml.errors import LoopmlError
from loopml.learners.base import Budget, FitData, Learner, Task
from loopml.learners.multiview import as_array
from loopml.learners.tuning import validation_loss

#: members with a validation loss above this factor of the best are not bagged
BAG_SLACK = 1.15
MAX_BAGGED = 5


class Ensembling:
    """Needs ``self.params.folds``, ``self.context`` and ``self._scored`` (AutoMLLearner's)."""

    def _holdout_ensemble(self, data: FitData, task: Task, members: list) -> object | None:
        """Caruana on the validation predictions of every member (single or bagged): no more fitting.

        Its loss is cross-fitted (weights chosen on one half of the validation rows, scored on the
        other, both ways), so it competes fairly with the members; the kept weights use all rows.
        """
        from loopml.learners.bagging import fold_indices
        from loopml.learners.ensemble import EnsembleLearner, blend, caruana
        from loopml.learners.multiview import from_proba, row_weights, to_proba

        if len(members) < 2 or len(data.validation) < 20:
            return None
        y = as_array(data.validation.y)
        w = None if data.validation.weight is None else as_array(data.validation.weight)
        rw = row_weights(task, y, w)
        probas = [to_proba(m.scores, task.kind) for m in members]
        crossed = np.zeros_like(probas[0])
        for held in fold_indices(y, task.kind, 2, task.seed):
            rest = np.setdiff1d(np.arange(len(y)), held, assume_unique=True)
            weights, _ = caruana([p[rest] for p in probas], y[rest], task.kind, None if rw is None else rw[rest])
            crossed[held] = blend([p[held] for p in probas], weights)
        ensemble = EnsembleLearner.from_fitted([m.learner for m in members], task, y=y, weight=w,
                                               scores=[m.scores for m in members], context=self.context)
        if len(ensemble.members) < 2:
            return None
        member = self._scored("ensemble_validation", ensemble.params.model_dump(mode="json"), ensemble,
                              data.validation, task, 0.0, "ensemble (weights fitted on validation)")
        member.loss = validation_loss(from_proba(crossed, task.kind), y, task.kind, w)
        return member

    def _bagged_ensemble(self, data: FitData, task: Task, members: list, notes: list[dict],
                         deadline: float | None) -> object | None:
        """k-fold bagging of the useful members, then Caruana on their out-of-fold predictions (preset best)."""
        from loopml.learners.bagging import BaggedLearner
        from loopml.learners.ensemble import EnsembleLearner

        chosen = self._useful(data, task, members)
        names = {m.name for m in chosen}
        chosen = [m for m in chosen if f"{m.name}_tuned" not in names]  # the tuned variant replaces it
        folds = self.params.folds
        # no credit for parallel folds: on a busy machine two folds at once run no faster than one
        # after the other, and a fold cut short by time makes the bagged member worse than the single one
        cost = {m.name: folds * m.fit_seconds * (folds - 1) / folds for m in chosen}
        bagged: list[Learner] = []
        for m in chosen:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None:
                # in priority order, each gets what it needs: a bagged member cut short by time is
                # worse than the single one, so one that does not fit is not started
                if cost[m.name] > left:
                    notes.append({"name": f"bagged_{m.name}", "stage": "bagging",
                                  "reason": f"projected {cost[m.name]:.1f}s, {max(left, 0):.1f}s left"})
                    continue
                share = min(left, 2.0 * cost[m.name])
            params = BaggedLearner.Params(member=m.config, folds=folds, seed=task.seed)
            t0 = time.monotonic()
            try:
                learner = BaggedLearner(params, task, self.context).fit(data, Budget(None if left is None else share))
            except (LoopmlError, ValueError, RuntimeError) as e:
                notes.append({"name": f"bagged_{m.name}", "stage": "bagging", "reason": f"failed: {e}"})
                continue
            bagged.append(learner)
            members.append(self._scored(f"bagged_{m.name}", params.model_dump(mode="json"), learner, data.validation,
                                        task, time.monotonic() - t0, "bagged"))
        if len(bagged) < 2:  # a single bagged member is on the leaderboard already
            return None
        ensemble = EnsembleLearner.from_fitted(bagged, task, context=self.context)
        return self._scored("ensemble_oof", ensemble.params.model_dump(mode="json"), ensemble, data.validation,
                            task, 0.0, "ensemble (weights fitted on out-of-fold predictions)")

    def _useful(self, data: FitData, task: Task, members: list) -> list:
        """Members to bag, in order: those a validation Caruana gives weight (best first), then the rest."""
        from loopml.learners.ensemble import caruana
        from loopml.learners.multiview import to_proba

        ranked = sorted(members, key=lambda m: m.loss)
        # a member far behind the best is not worth its bagging time
        ranked = [m for m in ranked if m.loss <= BAG_SLACK * ranked[0].loss]
        if len(ranked) == 1:
            return ranked
        y = as_array(data.validation.y)
        weights, _ = caruana([to_proba(m.scores, task.kind) for m in ranked], y, task.kind, None)
        useful = [m for m, w in zip(ranked, weights, strict=True) if w > 0]
        # then the others by score: bagged, a member the holdout ensemble left out may still help
        return (useful + [m for m in ranked if all(m is not u for u in useful)])[:MAX_BAGGED]
