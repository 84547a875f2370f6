"""AutoML in a time budget: choose learners for the column types, fit them cheapest-first, tune the
best with Optuna, bag and ensemble with what is left, and keep whichever scores best on validation.

The budget is the whole fit's wall clock, preprocessing included (``Budget.started`` is set by the
caller when the run starts). A share of it (``reserve``) is kept for what comes after ``fit``
(evaluating the splits, importance, the report, saving). Phases, each inside its share of the time
left after preprocessing (time a phase does not use flows to the next):

1. portfolio: members in priority order (tables: LightGBM, XGBoost, [mostly numeric tables: LightGBM
   on pairwise + - * / features], LightGBM extra-trees, CatBoost, LightGBM large, linear; text:
   TF-IDF linear, network; images/audio: network), each fitted on the
   training split with early stopping on validation. A member whose projected time (from the first member's measured time
   and relative costs) would not fit is deferred to the end, for whatever time is left then. The
   first member's predict time also moves the end of fitting forward when the evaluation after
   fit (permutation importance) will need more than the reserve.
2. tuning: an Optuna study (seeded TPE, median pruning on per-fold reports) on the best tunable
   member's learner, 3-fold CV on the training split, starting from that member's parameters;
   its best parameters are refitted as one more member. Only when several trials fit. Then the
   slow members (the network), so they cannot eat the cheap members' tuning time.
3. ensembling. ``fast``: a Caruana ensemble on the validation predictions of the members.
   ``best``: k-fold bagging of the members the validation ensemble would use (cheapest projection
   first) and a Caruana ensemble on their out-of-fold predictions; the final model is the best of
   the bagged members and that ensemble on validation (rows none of them saw, whereas a single
   member early-stopped on them). When nothing could be bagged in time, as ``fast``. A final model whose predictions would not let
   the evaluation after fit end inside the budget gives way to the best one that would.

Everything fitted is on the leaderboard (``info["leaderboard"]``, ``leaderboard.json``): learner,
parameters, validation score, fit seconds, predict seconds per row.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from loopml.errors import LoopmlError
from loopml.features import StrictModel
from loopml.learners.automl_ensembling import Ensembling
from loopml.learners.base import ANY_FEATURE_TYPE, LEARNERS, Budget, Context, FitData, Learner, Split, Task
from loopml.learners.multiview import (
    MULTI,
    as_array,
    jsonable,
    leaf_learners,
    load_member,
    member_params,
    member_task,
    needed_views,
    normalise_member,
    save_member,
    select_view,
    union_views,
)
from loopml.learners.portfolio import portfolio
from loopml.learners.tuning import accuracy, metric_name, score_from_loss, tunable, tune, validation_loss

#: what the fit itself needs at least after preprocessing (one fast member); below it the budget is refused
MIN_FIT_SECONDS = 1.0
#: fixed part of the reserve for the work after ``fit`` (evaluation, report, save)
RESERVE_SECONDS = 0.5
#: cost of a member relative to a default LightGBM on the same rows (measured on adult/california,
#: one thread): the projection before a member of that learner has been timed
RELATIVE_COST = {"lightgbm": 1.0, "xgboost": 1.0, "catboost": 6.0, "linear": 0.5, "network": 30.0, "embedding_linear": 1.0}
#: share of the fit time (after preprocessing) that each phase may end at, cumulatively
PHASE_END = {"fast": {"portfolio": 0.6, "tuning": 0.8, "late": 1.0},
             "best": {"portfolio": 0.4, "tuning": 0.5, "late": 0.7}}
#: learners fitted after tuning (slow). Not in the table portfolios: on adult/california a network
#: took 30-40 s of a 120 s budget and scored below every tree (AutoGluon's gave it weight 0 too)
LATE = {"network"}
#: fitted right after the first portfolio member, with the time up to the late phase's end: frozen
#: MiniLM embeddings + LR (text only; it embeds as many training rows as that time allows). On
#: ag_news a Caruana ensemble of it and the TF-IDF linear model: .900-.907 vs .895 for linear alone
EMBEDDING = {"embedding_linear"}
TUNING_FOLDS = 3
#: what the evaluation after fit predicts at least (evaluate/assemble.py: with a budget, permutation
#: importance shrinks to what is left, down to one repeat per feature on 500 validation rows, after
#: one timing pass on up to 5000 rows): the chosen model must leave time for that much
IMPORTANCE_REPEATS = 1
IMPORTANCE_ROWS = 500
IMPORTANCE_TIMING_ROWS = 5_000
#: at most this share of the budget is kept for the evaluation after fit
MAX_POST_FIT = 0.4
#: a faster final model may have a validation loss up to this factor of the best one's
LOSS_SLACK = 1.05
#: a bagged member or ensemble wins over a single member unless its validation loss is above this
#: factor of the single one's (which early-stopped on the validation rows: ~0.5% optimistic on adult)
HONEST_SLACK = 1.02

_TABLE_TYPES = {"number", "binary", "category", "date"}
_ALL_TYPES = ANY_FEATURE_TYPE


def automl_sections(time_budget: float | None, preset: str | None) -> dict:
    """Config sections for ``--time-budget S [--preset P]`` / ``Model(time_budget=S, preset=P)``."""
    from loopml.errors import did_you_mean

    if preset is not None and preset not in PHASE_END:
        raise LoopmlError(f"preset {preset!r} is not a preset{did_you_mean(preset, PHASE_END)}; choose fast or best")
    if time_budget is None:
        if preset is not None:
            raise LoopmlError("a preset goes with a time budget (--time-budget S)")
        return {}
    if not 0 < time_budget < math.inf:  # inf: the deadline's inf - inf is NaN, and every member got 1 ms
        raise LoopmlError(f"the time budget must be a positive, finite number of seconds, not {time_budget:g}")
    automl = {"time_budget": float(time_budget), **({"preset": preset} if preset else {})}
    # a name, not a section: it replaces a config file's learner section instead of merging into it
    return {"automl": automl, "learner": "automl"}


@dataclasses.dataclass(eq=False)
class _Member:
    name: str
    config: dict
    learner: Learner
    scores: np.ndarray  # on the validation split
    loss: float
    fit_seconds: float
    predict_per_row: float
    stage: str


@LEARNERS.register("automl")
class AutoMLLearner(Ensembling, Learner):
    """``learner: {type: automl, preset: best}`` with ``automl: {time_budget: 120}``."""

    view = MULTI
    accepts = _ALL_TYPES

    class Params(Learner.Params):
        type: Literal["automl"] = "automl"
        preset: Literal["fast", "best"] = "best"
        seed: int | None = None  # None: the task's seed
        #: the portfolio, name -> learner section, in priority order; None: chosen from the column
        #: types (``plan``), or a table portfolio when fitted without a plan
        members: dict[str, dict[str, Any]] | None = None
        #: bagging folds (preset best)
        folds: int = Field(5, ge=2, le=20)
        tune: bool = True
        #: share of the budget kept for the work after fit (evaluation, report, save)
        reserve: float = Field(0.1, ge=0.0, lt=0.5)

        @field_validator("members", mode="before")
        @classmethod
        def _members(cls, value: Any) -> Any:
            if value is None:
                return None
            if not isinstance(value, dict) or not value:
                raise ValueError("members must be a non-empty mapping of name -> learner section")
            # {lightgbm: {num_leaves: 15}}: a section without 'type' is the learner its name names
            return {str(k): normalise_member({"type": str(k), **v} if isinstance(v, dict) and "type" not in v else v)
                    for k, v in value.items()}

    # -- the multi-view protocol --------------------------------------------------------------
    @classmethod
    def plan(cls, params: StrictModel, pre: Any) -> StrictModel:
        """Params with the portfolio chosen from the fitted preprocessor's column types."""
        if params.members is not None:
            return params
        kinds = [f.config.type for f in pre.features.values() if f.config.type != "skip"]
        share = kinds.count("number") / len(kinds) if kinds else 0.0
        return params.model_copy(update={"members": portfolio(set(kinds), params.preset, share)})

    @classmethod
    def _members_of(cls, params: StrictModel) -> dict[str, dict]:
        return params.members if params.members is not None else portfolio(set(_TABLE_TYPES), params.preset)

    @classmethod
    def views_for(cls, params: StrictModel) -> tuple[str, ...]:
        return union_views([needed_views(*member_params(m)) for m in cls._members_of(params).values()])

    @classmethod
    def leaves(cls, params: StrictModel) -> list:
        return [leaf for m in cls._members_of(params).values() for leaf in leaf_learners(*member_params(m))]

    def _reset(self) -> None:
        super()._reset()
        self.final: Learner | None = None
        self.leaderboard: list[dict] = []

    # -- fit -------------------------------------------------------------------------------------
    def fit(self, data: FitData, budget: Budget) -> AutoMLLearner:
        self._reset()
        p = self.params
        task = dataclasses.replace(self.task, seed=self.task.seed if p.seed is None else p.seed)
        deadline = self._deadline(budget)
        started = time.monotonic()
        fit_time = None if deadline is None else deadline - started
        members: list[_Member] = []
        notes: list[dict] = []
        ends = PHASE_END[p.preset]

        def phase_end(name: str) -> float | None:
            return None if deadline is None else started + ends[name] * fit_time

        embedding = [(n, c) for n, c in self._members_of(p).items() if c["type"] in EMBEDDING]
        configs = [(n, c) for n, c in self._members_of(p).items() if c["type"] not in LATE | EMBEDDING]
        late = [(n, c) for n, c in self._members_of(p).items() if c["type"] in LATE]
        if not configs:  # images/audio: the network is all there is
            configs, late = late, []
        deferred = self._portfolio(configs[:1], data, task, members, notes, phase_end("portfolio"))
        if deadline is not None:
            # the first member's predict time shows what the evaluation after fit will cost: keep it
            deadline = min(deadline, budget.started + budget.seconds - self._post_fit_seconds(members[0], data, budget))
            fit_time = max(deadline - started, 0.0)
        if embedding and configs:  # it sizes its rows to the time it gets: give it most of the fit
            deferred += self._portfolio(embedding, data, task, members, notes, phase_end("late"))
        deferred += self._portfolio(configs[1:], data, task, members, notes, phase_end("portfolio"))
        tuning: dict = {}
        if p.tune:
            tuning = self._tune(data, task, members, notes, phase_end("tuning"))
        if late:  # slow members after tuning the cheap ones, leaving room for bagging and the rest
            deferred += self._portfolio(late, data, task, members, notes, phase_end("late"))
        bagged = self._bagged_ensemble(data, task, members, notes, deadline) if p.preset == "best" else None
        # members the portfolio phase had no time for get what bagging left
        for name, _ in self._portfolio(deferred, data, task, members, notes, deadline):
            notes.append({"name": name, "stage": "portfolio", "reason": "did not fit in the time left"})
        holdout = self._holdout_ensemble(data, task, members)
        pool = members + [m for m in (bagged, holdout) if m is not None]
        # A single member early-stopped on the validation rows, so its validation loss flatters it.
        # Bagged members (early-stopped on their own folds) and their out-of-fold ensemble never saw
        # those rows: when there are any, the final model is the best of them.
        # (unless the best of them is clearly worse: then bagging only had time for weak members)
        best_any = min(pool, key=lambda m: m.loss)
        honest = [m for m in pool if m.stage == "bagged" or m is bagged]
        best_honest = min(honest, key=lambda m: m.loss) if honest else None
        winner = best_honest if best_honest is not None and best_honest.loss <= HONEST_SLACK * best_any.loss \
            else best_any
        winner, post_fit = self._affordable(winner, pool, data, budget)
        self.final, final_name = winner.learner, winner.name
        rows = [self._row(m, data.validation) for m in pool]
        for row in rows:
            row["chosen"] = row["name"] == final_name
        higher = task.kind == "number"
        rows.sort(key=lambda r: -r["score"] if higher else r["score"])
        self.leaderboard = jsonable(rows)
        spent = time.monotonic() - budget.started
        self.info = jsonable({
            "leaderboard": self.leaderboard, "chosen": final_name, "preset": p.preset,
            "predict_seconds_per_row": winner.predict_per_row, "post_fit_estimate_s": post_fit,
            "metric": metric_name(task.kind), "time_budget": budget.seconds,
            "seconds": round(time.monotonic() - started, 3), "seconds_since_start": round(spent, 3),
            "skipped": notes, "tuning": tuning, "members": list(self._members_of(p)),
        })
        return self

    def _post_fit_rows(self, data: FitData) -> int:
        n_val = len(data.validation)
        features = len(self.context.preprocessor.features) if self.context is not None else 10
        return (2 * n_val + min(n_val, IMPORTANCE_TIMING_ROWS)
                + min(n_val, IMPORTANCE_ROWS) * IMPORTANCE_REPEATS * (features + 1))

    def _post_fit_seconds(self, member: _Member, data: FitData, budget: Budget) -> float:
        """Seconds to keep after fit: the static reserve, or what predicting like ``member`` after fit
        takes, capped at MAX_POST_FIT of the budget (beyond that the choice of final model adapts)."""
        static = self.params.reserve * budget.seconds + RESERVE_SECONDS
        projected = member.predict_per_row * self._post_fit_rows(data) + RESERVE_SECONDS
        return max(static, min(projected, MAX_POST_FIT * budget.seconds))

    def _affordable(self, winner: _Member, pool: list[_Member], data: FitData,
                    budget: Budget) -> tuple[_Member, float]:
        """The winner, unless predicting with it after fit (evaluation, permutation importance) would
        overrun the budget: then the best candidate that fits among those scoring close to it (loss
        within LOSS_SLACK), else the fastest of those: a much worse model is never taken for speed."""
        rows = self._post_fit_rows(data)
        cost = {id(m): m.predict_per_row * rows for m in pool}
        if budget.seconds is None:
            return winner, round(cost[id(winner)], 3)
        left = budget.started + budget.seconds - time.monotonic() - RESERVE_SECONDS
        if cost[id(winner)] <= left:
            return winner, round(cost[id(winner)], 3)
        close = [m for m in pool if m.loss <= winner.loss * LOSS_SLACK]
        fits = [m for m in close if cost[id(m)] <= left]
        chosen = min(fits, key=lambda m: m.loss) if fits else min(close, key=lambda m: cost[id(m)])
        return chosen, round(cost[id(chosen)], 3)

    def _deadline(self, budget: Budget) -> float | None:
        """When fitting must end (monotonic clock), or a LoopmlError when the budget cannot fit one member."""
        if budget.seconds is None:
            return None
        reserve = self.params.reserve * budget.seconds + RESERVE_SECONDS
        deadline = budget.started + budget.seconds - reserve
        left = deadline - time.monotonic()
        if left < MIN_FIT_SECONDS:
            used = time.monotonic() - budget.started
            need = math.ceil((used + MIN_FIT_SECONDS + RESERVE_SECONDS) / (1.0 - self.params.reserve))
            raise LoopmlError(
                f"time budget {budget.seconds:g}s is too small: preparing the data took {used:.1f}s and "
                f"fitting needs at least {MIN_FIT_SECONDS:g}s more plus {reserve:.1f}s for evaluation; "
                f"the minimum here is {need}s (--time-budget {need})")
        return deadline

    def _fit_member(self, name: str, config: dict, data: FitData, task: Task, budget: Budget,
                    stage: str) -> _Member:
        cls, params = member_params(config)
        fit_data = FitData(*(Split(select_view(s.x, cls, params), s.y, s.weight) for s in (data.train, data.validation)))
        t0 = time.monotonic()
        learner = cls(params, member_task(task), self.context).fit(fit_data, budget)
        fit_seconds = time.monotonic() - t0
        return self._scored(name, config, learner, fit_data.validation, task, fit_seconds, stage)

    def _scored(self, name: str, config: dict, learner: Learner, validation: Split, task: Task,
                fit_seconds: float, stage: str) -> _Member:
        t0 = time.monotonic()
        scores = np.asarray(learner.predict_scores(validation.x))
        per_row = (time.monotonic() - t0) / max(1, len(validation))
        y = as_array(validation.y)
        w = None if validation.weight is None else as_array(validation.weight)
        loss = validation_loss(scores, y, task.kind, w) if len(y) else math.inf
        return _Member(name, config, learner, scores, loss, fit_seconds, per_row, stage)

    def _estimate(self, config: dict, members: list[_Member], data: FitData | None = None) -> float | None:
        """Projected seconds for a member: the same learner's last time, else the relative cost times
        the fastest member's time per unit of cost (the first fit also pays the library's import);
        times the growth in columns that ``pairwise`` brings (a tree's cost is about linear in them)."""
        kind = config["type"]
        plain = [m for m in members if m.stage == "portfolio" and not m.config.get("pairwise")]
        same = [m.fit_seconds for m in plain if m.config["type"] == kind]
        if same:
            base = max(same)
        elif plain:
            base = min(m.fit_seconds / RELATIVE_COST.get(m.config["type"], 10.0) for m in plain) \
                * RELATIVE_COST.get(kind, 10.0)
        else:
            return None
        return base * self._column_growth(config, data)

    @staticmethod
    def _column_growth(config: dict, data: FitData | None) -> float:
        k = int(config.get("pairwise") or 0)
        table = data.train.x.get("table") if data is not None and isinstance(data.train.x, dict) else None
        if not k or table is None or not table.columns:
            return 1.0
        numeric = min(k, len(table.columns) - len(table.categorical))
        width = len(table.columns) + 2.0 * numeric * (numeric - 1)
        # histograms are built for the columns each tree samples
        return max(1.0, width * min(1.0, float(config.get("colsample_bytree", 1.0))) / len(table.columns))

    def _portfolio(self, configs: list[tuple[str, dict]], data: FitData, task: Task, members: list[_Member],
                   notes: list[dict], end: float | None) -> list[tuple[str, dict]]:
        """Fit ``configs`` in order until ``end``; returns those whose projected time did not fit."""
        errors: list[str] = []
        deferred: list[tuple[str, dict]] = []
        for i, (name, config) in enumerate(configs):
            left = None if end is None else end - time.monotonic()
            if left is not None and members:
                estimate = self._estimate(config, members, data) or 0.0
                if left <= 0 or estimate > 1.5 * left:
                    deferred.append((name, config))
                    continue
            # the members after this one get a fair part: a slow learner is cut by its budget, not theirs
            share = None if left is None else max(left, 0.2) * (1.0 if i == len(configs) - 1 else 0.6)
            try:
                members.append(self._fit_member(name, config, data, task, Budget(share), "portfolio"))
            except (LoopmlError, ValueError, RuntimeError, MemoryError) as e:
                # one failing library must not end the run: the others may fit (AutoGluon does the same)
                errors.append(f"{name}: {e}")
                notes.append({"name": name, "stage": "portfolio", "reason": f"failed: {e}"})
        if not members:
            raise LoopmlError(f"automl: every member failed; first: {errors[0]}" if errors else
                              "automl: no member could be fitted in the budget")
        return deferred

    def _tune(self, data: FitData, task: Task, members: list[_Member], notes: list[dict],
              end: float | None) -> dict:
        candidates = [m for m in members if tunable(m.config["type"])]
        if not candidates:
            return {}
        best = min(candidates, key=lambda m: m.loss)
        kind = best.config["type"]
        trial_cost = TUNING_FOLDS * best.fit_seconds * (TUNING_FOLDS - 1) / TUNING_FOLDS
        left = None if end is None else end - time.monotonic()
        # enough for a few trials and the refit of the winner, else tuning cannot pay
        if left is not None and left < 4 * trial_cost + 1.5 * best.fit_seconds:
            notes.append({"name": f"{best.name}_tuned", "stage": "tuning",
                          "reason": f"a trial takes ~{trial_cost:.1f}s, {max(left, 0):.1f}s left"})
            return {}
        cls, params = member_params(best.config)
        base = {k: v for k, v in best.config.items() if k != "type"}
        train = Split(select_view(data.train.x, cls, params), data.train.y, data.train.weight)
        study_budget = Budget(None if left is None else left - 1.5 * best.fit_seconds)
        try:
            result = tune(kind, base, member_task(task), self.context, train, budget=study_budget,
                          trials=None if left is not None else 20, folds=TUNING_FOLDS, enqueue=base)
        except (LoopmlError, ValueError, RuntimeError) as e:  # tuning is a bonus: the portfolio stands
            notes.append({"name": f"{best.name}_tuned", "stage": "tuning", "reason": f"failed: {e}"})
            return {"learner": kind, "from": best.name, "error": str(e)}
        summary = {"learner": kind, "from": best.name, "trials": result.trials, "pruned": result.pruned,
                   "cv_loss": result.best_loss, "seconds": round(result.seconds, 3)}
        if not math.isfinite(result.best_loss) or result.best_is_start:
            return {**summary, "improved": False}
        config = normalise_member({"type": kind, **result.best_params})
        remaining = None if end is None else max(end - time.monotonic(), 2.0 * best.fit_seconds)
        try:
            members.append(self._fit_member(f"{best.name}_tuned", config, data, task, Budget(remaining), "tuned"))
        except (LoopmlError, ValueError, RuntimeError) as e:
            notes.append({"name": f"{best.name}_tuned", "stage": "tuning", "reason": f"failed: {e}"})
        return {**summary, "improved": True}

    def _row(self, m: _Member, validation: Split) -> dict:
        kind = self.task.kind
        shown = m.config
        if m.stage in ("portfolio", "tuned"):  # only what differs from the learner's defaults
            cls, params = member_params(m.config)
            defaults = cls.Params().model_dump(mode="json")
            shown = {k: v for k, v in params.model_dump(mode="json").items() if k == "type" or defaults.get(k) != v}
        return {
            "name": m.name, "learner": m.config.get("type"), "stage": m.stage, "params": shown,
            "metric": metric_name(kind), "score": score_from_loss(m.loss, kind),
            "accuracy": accuracy(m.scores, as_array(validation.y), kind) if len(validation) else None,
            "fit_seconds": round(m.fit_seconds, 3), "predict_seconds_per_row": m.predict_per_row,
            "best_iteration": m.learner.info.get("best_iteration"),
        }

    # -- use / persistence -----------------------------------------------------------------------
    def predict_scores(self, x: Any) -> np.ndarray:
        if self.final is None:
            raise RuntimeError("automl learner is not fitted")
        return self.final.predict_scores(select_view(x, type(self.final), self.final.params))

    def save(self, folder: Path) -> None:
        if self.final is None:
            raise RuntimeError("save() before fit()")
        folder = Path(folder)
        save_member(self.final, folder / "final")
        (folder / "leaderboard.json").write_text(json.dumps(self.leaderboard, indent=1))
        (folder / "automl.json").write_text(json.dumps({"info": self.info, "history": self.history}, indent=1))

    @classmethod
    def load(cls, folder: Path, params: StrictModel, task: Task, context: Context | None = None) -> AutoMLLearner:
        folder = Path(folder)
        learner = cls(params, task, context)
        try:
            saved = json.loads((folder / "automl.json").read_text())
            board = json.loads((folder / "leaderboard.json").read_text())
            learner.final = load_member(folder / "final", task, context)
        except (OSError, ValueError) as e:
            raise LoopmlError(f"cannot read the automl model in {folder}: {e}") from None
        learner.info, learner.history, learner.leaderboard = saved["info"], saved["history"], board
        return learner
