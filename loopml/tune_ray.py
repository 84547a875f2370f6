"""``loopml tune --ray [ADDRESS]``: the local ``tune``'s study, run by Ray Tune.

The same search space (``tuning.SPACES`` through ``suggest``, asked by Ray's ``OptunaSearch``
with the local study's seeded multivariate TPE) and the same objective (``tuning.cv_objective``:
k-fold loss, reported after every fold). Ray's ASHA scheduler takes the median pruner's place:
it stops a trial whose mean loss after a fold is in the worse half at that rung. Trials run in
parallel, one CPU each, on a local cluster started for the command or on the cluster at ADDRESS.

Every trial is recorded as a run in the store (experiment: the study name), with one metric step
per fold, from the driver once Ray is done: the trial processes never need the store's database.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from loopml.learners.base import Budget, Context, Split, Task
from loopml.learners.tuning import SPACES, cv_objective, metric_name, start_point, suggest
from loopml.train.ray_train import ray_cluster, require_ray


class RayTrial:
    """What ``cv_objective`` asks of an Optuna trial, answered inside a Ray Tune trial: the parameters
    OptunaSearch chose for it, and each fold's mean loss reported to Ray (ASHA decides the stopping)."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def suggest_int(self, key: str, *_args, **_kwargs) -> int:
        return int(self.config[key])

    def suggest_float(self, key: str, *_args, **_kwargs) -> float:
        return float(self.config[key])

    def report(self, value: float, step: int) -> None:
        from ray import tune

        tune.report({"loss": float(value), "folds": step + 1})

    def should_prune(self) -> bool:
        return False  # ASHA stops the trial at a report instead


class SearchSpace:
    """OptunaSearch's define-by-run space: the local study's ``suggest``. A class, not a closure: Ray Tune
    saves its searcher's state (with Python's pickle, in its own temporary folder, deleted after the command)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, trial) -> None:
        suggest(self.name, trial)


def run_trial(config: dict, *, name: str, base: dict, task: Task, context: Context | None, data: Split,
              folds: int) -> None:
    """One Ray Tune trial: the local tune's k-fold objective with Ray's suggestions."""
    import torch

    torch.set_num_threads(1)  # one CPU per trial
    cv_objective(name, base, task, context, data, folds, Budget(None))(RayTrial(config))


def tune_on_ray(address: str, name: str, base: dict, task: Task, context: Context | None, data: Split, *,
                trials: int | None, folds: int, budget: Budget, store: str | None, experiment: str) -> dict:
    """Run the study on Ray; every trial becomes a run in the store. Returns ``run_study``'s summary."""
    require_ray()
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from loopml.registry import Store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.monotonic()
    runs = Store(store)  # opened (and its URL checked) before any trial runs

    sampler = optuna.samplers.TPESampler(seed=task.seed, n_startup_trials=8, multivariate=True)
    first = start_point(name, base)
    searcher = OptunaSearch(space=SearchSpace(name), metric="loss", mode="min", sampler=sampler,
                            points_to_evaluate=[first] if first else None)
    scheduler = ASHAScheduler(time_attr="training_iteration", metric="loss", mode="min", max_t=folds, grace_period=1,
                              reduction_factor=2)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, name=name, base=base, task=task, context=context, data=data, folds=folds),
        {"cpu": 1})
    left = budget.remaining()
    with ray_cluster(address), tempfile.TemporaryDirectory(prefix="loopml-tune-ray-") as storage:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=trials or -1,
                                        time_budget_s=left, reuse_actors=True),
            run_config=tune.RunConfig(name="study", storage_path=storage, verbose=0),
        )
        grid = tuner.fit()
        results = [grid[i] for i in range(len(grid))]
    trials_done = [_record(runs, experiment, name, base, folds, task, result) for result in results]
    complete = [t for t in trials_done if t["folds"] == folds and t["loss"] is not None]
    best = min(complete, key=lambda t: t["loss"]) if complete else None
    return {
        "study": experiment, "storage": runs.url, "learner": name, "rows": len(data), "folds": folds,
        "trials_this_call": len(trials_done), "pruned_this_call": sum(t["stopped"] for t in trials_done),
        "trial_numbers": [trials_done[0]["number"], trials_done[-1]["number"]] if trials_done else [None, None],
        "trials_total": len(runs.list_runs(experiment, limit=100_000)), "best_trial": best["number"] if best else None,
        "best_cv_loss": best["loss"] if best else None,
        "metric": "log_loss" if task.kind != "number" else "1 - r2",
        "best_params": {**base, **best["params"]} if best else base, "seconds": round(time.monotonic() - start, 2),
        "run_ids": [t["run_id"] for t in trials_done], "engine": "ray",
    }


def _record(runs: Any, experiment: str, name: str, base: dict, folds: int, task: Task, result: Any) -> dict:
    """One trial as a finished (or failed) run: its parameters, the mean loss after each fold, the final one."""
    params = {k: v for k, v in (result.config or {}).items() if k in SPACES[name]}
    history = result.metrics_dataframe
    steps = [] if history is None or "loss" not in history else history[["folds", "loss"]].dropna().to_dict("records")
    number = len(runs.list_runs(experiment, limit=10_000))
    run_id = runs.start_run(experiment, {"learner": {"type": name, **base, **params},
                                         "tune": {"engine": "ray", "trial": number, "folds": folds}})
    for step in steps:
        runs.log_metrics(run_id, int(step["folds"]) - 1, {f"cv_{metric_name(task.kind)}_mean": step["loss"]})
    loss = float(steps[-1]["loss"]) if steps else None
    done = int(steps[-1]["folds"]) if steps else 0
    seconds = float((result.metrics or {}).get("time_total_s") or 0.0)
    metrics = {"cv": {"folds": done, "seconds": seconds, **({"loss": loss} if loss is not None else {})}}
    if result.error is not None:
        runs.end_run(run_id, "failed", metrics, error=f"{type(result.error).__name__}: {result.error}"[:2000])
    else:
        runs.end_run(run_id, "finished", metrics)
    return {"number": number, "run_id": run_id, "params": params, "loss": loss, "folds": done,
            "stopped": result.error is None and done < folds}
