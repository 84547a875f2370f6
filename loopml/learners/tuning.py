"""Hyper-parameter tuning with Optuna: seeded TPE, a k-fold objective that reports after every fold
(so the pruner can stop a poor trial after its first fold), and studies stored in a database.

Used twice: by the ``automl`` learner with the time left after its portfolio, and by
``loopml tune`` for a standalone, resumable study on one learner.

Search spaces are written per learner name with the parameter names of that learner's ``Params``;
a name the learner does not have is dropped, so a space never breaks a learner it does not fit.

A study cannot share the store's database file: Optuna and the store both keep an Alembic
``alembic_version`` table, and each refuses the other's revision. SQLite stores therefore keep
studies in a sibling file (``registry.db`` -> ``registry-studies.db``); PostgreSQL stores in a
schema ``optuna`` of the same database.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loopml.errors import LoopmlError
from loopml.learners.base import LEARNERS, Budget, Context, FitData, Learner, Split, Task
from loopml.learners.multiview import as_array, take_rows, to_proba

# -- scores -------------------------------------------------------------------------------------


def validation_loss(scores: np.ndarray, y: np.ndarray, kind: str, weight: np.ndarray | None = None) -> float:
    """What tuning minimises and AutoML ranks by: log loss for classes, 1 - R² for numbers."""
    y = np.asarray(y)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
    if kind == "number":
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        yy = y.astype(np.float64).reshape(-1)
        mean = np.average(yy, weights=w)
        total = np.average((yy - mean) ** 2, weights=w)
        return float(np.average((yy - s) ** 2, weights=w) / (total or 1.0))
    p = to_proba(scores, kind)
    eps = 1e-12
    if kind == "binary":
        t = y.astype(np.float64).reshape(-1)
        losses = -(t * np.log(np.clip(p, eps, 1)) + (1 - t) * np.log(np.clip(1 - p, eps, 1)))
    else:
        losses = -np.log(np.clip(p[np.arange(len(y)), y.astype(np.int64).reshape(-1)], eps, 1))
    return float(np.average(losses, weights=w))


def accuracy(scores: np.ndarray, y: np.ndarray, kind: str) -> float | None:
    if kind == "number":
        return None
    s = np.asarray(scores)
    pred = (s.reshape(-1) > 0).astype(np.int64) if kind == "binary" else s.argmax(axis=1)
    return float(np.mean(pred == np.asarray(y).astype(np.int64).reshape(-1)))


def metric_name(kind: str) -> str:
    return "r2" if kind == "number" else "log_loss"


def score_from_loss(loss: float, kind: str) -> float:
    """The leaderboard's score in its metric's own units: R² for numbers, log loss for classes."""
    return 1.0 - loss if kind == "number" else loss


# -- rows of a view -----------------------------------------------------------------------------


def take_split(split: Split, index: np.ndarray) -> Split:
    weight = None if split.weight is None else as_array(split.weight)[index]
    return Split(take_rows(split.x, index), as_array(split.y)[index], weight)


def fold_pairs(y: np.ndarray, kind: str, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) row indices per fold, stratified by class for classifiers (as bagging folds)."""
    from loopml.learners.bagging import fold_indices

    n = len(y)
    return [(np.setdiff1d(np.arange(n), held, assume_unique=True), held)
            for held in fold_indices(as_array(y).reshape(-1), kind, folds, seed)]


# -- search spaces ------------------------------------------------------------------------------


#: per learner: parameter -> (kind, low, high, log); names are the learner's ``Params`` fields
SPACES: dict[str, dict[str, tuple[str, float, float, bool]]] = {
    "lightgbm": {
        "learning_rate": ("float", 0.01, 0.3, True), "num_leaves": ("int", 8, 256, True),
        "min_child_samples": ("int", 3, 100, True), "colsample_bytree": ("float", 0.4, 1.0, False),
        "subsample": ("float", 0.5, 1.0, False), "reg_lambda": ("float", 1e-3, 10.0, True),
    },
    "xgboost": {
        "learning_rate": ("float", 0.01, 0.3, True), "max_depth": ("int", 3, 10, False),
        "min_child_weight": ("float", 0.5, 20.0, True), "subsample": ("float", 0.5, 1.0, False),
        "colsample_bytree": ("float", 0.4, 1.0, False), "reg_lambda": ("float", 1e-3, 10.0, True),
    },
    "catboost": {
        "learning_rate": ("float", 0.02, 0.3, True), "depth": ("int", 4, 8, False),
        "l2_leaf_reg": ("float", 1.0, 10.0, True),
    },
    "linear": {"C": ("float", 1e-2, 1e2, True)},
}


def _space(name: str) -> dict[str, tuple[str, float, float, bool]]:
    fields = LEARNERS.get(name).Params.model_fields
    return {k: v for k, v in SPACES.get(name, {}).items() if k in fields}


def start_point(name: str, params: dict) -> dict:
    """``params`` as a first trial: the searched names only, clipped into their ranges."""
    out = {}
    for key, (kind, low, high, _log) in _space(name).items():
        if key in params and isinstance(params[key], int | float):
            value = min(max(params[key], low), high)
            out[key] = int(round(value)) if kind == "int" else float(value)
    return out


def tunable(name: str) -> bool:
    return name in SPACES


def suggest(name: str, trial, base: dict | None = None) -> dict:
    """Params for learner ``name``: ``base`` with the trial's suggestions on top (names the learner lacks dropped)."""
    if name not in SPACES:
        raise LoopmlError(f"learner '{name}' has no search space{_did_you_mean(name, SPACES)}; "
                          f"tunable learners: {', '.join(sorted(SPACES))}")
    suggested: dict = {}
    for key, (kind, low, high, log) in _space(name).items():
        if kind == "int":
            suggested[key] = trial.suggest_int(key, int(low), int(high), log=log)
        else:
            suggested[key] = trial.suggest_float(key, low, high, log=log)
    return {**(base or {}), **suggested}


def _did_you_mean(name: str, choices) -> str:
    from loopml.errors import did_you_mean

    return did_you_mean(name, choices)


def make_learner(name: str, params: dict, task: Task, context: Context | None) -> Learner:
    cls = LEARNERS.get(name)
    return cls(cls.Params(**{k: v for k, v in params.items() if k != "type"}), task, context)


# -- the objective ------------------------------------------------------------------------------


@dataclass
class TuneResult:
    best_params: dict
    best_loss: float
    trials: int  # finished trials of this call (complete + pruned)
    pruned: int
    seconds: float
    study_name: str | None = None
    #: seconds of each finished trial of this call
    trial_seconds: list[float] = field(default_factory=list)
    #: whether the best trial is the enqueued start point (nothing better found)
    best_is_start: bool = False


def cv_objective(name: str, base: dict, task: Task, context: Context | None, data: Split, folds: int,
                 budget: Budget) -> Callable[[Any], float]:
    """k-fold loss of one trial's params, reported after each fold so the pruner can stop it early."""
    import optuna

    indices = fold_pairs(data.y, task.kind, folds, task.seed)

    def objective(trial) -> float:
        params = suggest(name, trial, base)
        losses: list[float] = []
        for step, (inner, held) in enumerate(indices):
            left = budget.remaining()
            if left is not None and left <= 0:
                raise optuna.TrialPruned("out of time")
            held_out = take_split(data, held)
            learner = make_learner(name, params, task, context)
            learner.fit(FitData(take_split(data, inner), held_out), Budget(left))
            losses.append(validation_loss(learner.predict_scores(held_out.x), held_out.y, task.kind, held_out.weight))
            trial.report(float(np.mean(losses)), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {step + 1}")
        return float(np.mean(losses))

    return objective


def make_study(name: str, *, seed: int, storage: Any = None, study_name: str | None = None):
    """A minimising study with seeded TPE and a median pruner; resumed if ``study_name`` exists in ``storage``.

    The sampler's seed is offset by the trials already in the study, so a resumed study does not
    replay the random start-up points of the first call.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = 0
    if storage is not None and study_name is not None:
        try:
            done = len(optuna.load_study(study_name=study_name, storage=storage).trials)
        except KeyError:  # no such study yet
            done = 0
    sampler = optuna.samplers.TPESampler(seed=seed + done, n_startup_trials=8, multivariate=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    return optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner, storage=storage,
                               study_name=study_name, load_if_exists=study_name is not None)


def tune(name: str, base: dict, task: Task, context: Context | None, data: Split, *, budget: Budget,
         trials: int | None = None, folds: int = 3, storage: Any = None, study_name: str | None = None,
         enqueue: dict | None = None) -> TuneResult:
    """Run trials of learner ``name`` until ``trials`` finish or ``budget`` runs out (a trial that
    would not finish in what is left, projected from the slowest one so far, is not started)."""
    import optuna

    start = time.monotonic()
    study = make_study(name, seed=task.seed, storage=storage, study_name=study_name)
    first_number = len(study.trials)
    if enqueue and not study.trials:
        study.enqueue_trial(start_point(name, enqueue))
    objective = cv_objective(name, base, task, context, data, folds, budget)
    durations: list[float] = []

    def stop_when_out_of_time(study_, trial) -> None:
        if trial.datetime_complete and trial.datetime_start:
            durations.append((trial.datetime_complete - trial.datetime_start).total_seconds())
        left = budget.remaining()
        if left is not None and durations and max(durations) > left:
            study_.stop()

    left = budget.remaining()
    if left is not None and left <= 0:
        return TuneResult(dict(base), math.inf, 0, 0, 0.0, study_name)
    study.optimize(objective, n_trials=trials, timeout=left, callbacks=[stop_when_out_of_time],
                   catch=(), gc_after_trial=False)
    mine = [t for t in study.trials if t.number >= first_number]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in mine)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return TuneResult(dict(base), math.inf, len(mine), pruned, time.monotonic() - start, study_name, durations)
    best = study.best_trial
    params = {**base, **{k: v for k, v in best.params.items() if k in LEARNERS.get(name).Params.model_fields}}
    return TuneResult(params, float(best.value), len(mine), pruned, time.monotonic() - start, study_name, durations,
                      best_is_start=bool(enqueue) and best.number == first_number)


# -- storage ------------------------------------------------------------------------------------


def study_storage(store_url: str | None):
    """Optuna RDB storage beside the store's database (see the module docstring for why not inside it)."""
    import optuna
    import sqlalchemy as sa

    from loopml.registry.db import store_url as resolve

    url = sa.engine.make_url(resolve(store_url))
    backend = url.get_backend_name()
    engine_kwargs: dict = {}
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise LoopmlError("a study needs a file or server database; the store URL is in memory")
        path = Path(url.database).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = url.set(database=str(path.with_name(f"{path.stem}-studies{path.suffix or '.db'}")))
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif backend == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE SCHEMA IF NOT EXISTS optuna"))
        engine.dispose()
        engine_kwargs = {"connect_args": {"options": "-csearch_path=optuna"}}
    try:
        return optuna.storages.RDBStorage(url.render_as_string(hide_password=False), engine_kwargs=engine_kwargs)
    except (sa.exc.DatabaseError, RuntimeError) as e:
        raise LoopmlError(f"cannot open the study database {url.render_as_string(hide_password=True)}: "
                          f"{str(e).strip().splitlines()[0]}") from None
