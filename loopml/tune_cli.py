"""``loopml tune``: a standalone, resumable Optuna study on one learner, stored beside the store's database.

    loopml tune --data train.csv --target y --learner lightgbm --trials 50 [--time-budget S]
                [--store URL] [--study NAME] [--folds 3] [--output best.yaml]

Each trial is a k-fold cross-validation over the training and validation rows (the test split
stays out), reported after every fold so the median pruner can stop a poor trial early. Running
the same command again continues the study (trial numbers go on). The best parameters are printed
and written as a config YAML holding the ``learner:`` section, ready for ``loopml train --config``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.errors import LoopmlError


def run_study(data: str | Path, config: dict | str | Path | None, *, target: str | None, learner: str,
              trials: int | None, time_budget: float | None = None, store: str | None = None,
              study: str | None = None, folds: int = 3, ray: str | None = None) -> dict:
    """Run (or continue) the study; returns a summary with the best parameters and the trial numbers."""
    import numpy as np

    from loopml.config import load_config
    from loopml.learners import LEARNERS, Budget, Context, Split
    from loopml.learners.multiview import as_array, concat_views
    from loopml.learners.tuning import SPACES, study_storage, tunable, tune
    from loopml.prepare import prepare
    from loopml.train.run import check_learner, class_weights, learner_task, view_splits

    budget = Budget(time_budget)  # preparation counts against it, as in ``loopml train``
    cls = LEARNERS.get(learner)  # an unknown name: one line with the nearest one
    if not tunable(learner):
        raise LoopmlError(f"learner '{learner}' has no search space; tunable learners: {', '.join(sorted(SPACES))}")
    if trials is None and time_budget is None:
        raise LoopmlError("give --trials N, --time-budget S or both: a study needs a stopping rule")
    cfg = load_config(config, target=target)
    if cfg.learner.type != learner:  # the config's own section is kept (and tuned from) when it names this learner
        cfg = cfg.model_copy(update={"learner": cls.Params()})
    prepared = prepare(cfg, data)
    pre = prepared.preprocessor
    check_learner(cfg, pre)
    splits = view_splits(cfg, prepared, pre, cls)
    train, validation = splits["train"], splits["validation"]
    rows = train
    if validation is not None and len(validation):
        weight = None
        if train.weight is not None or validation.weight is not None:
            weight = np.concatenate([np.ones(len(s)) if s.weight is None else as_array(s.weight)
                                     for s in (train, validation)])
        rows = Split(concat_views(train.x, validation.x), np.concatenate([as_array(train.y), as_array(validation.y)]),
                     weight)
    if len(rows) < 2 * folds:
        raise LoopmlError(f"{len(rows)} rows are too few for {folds}-fold tuning")
    task = learner_task(cfg, pre, class_weights(cfg, pre, as_array(rows.y)))
    name = study or _default_study(data, cfg.target.column, learner)
    base = {k: v for k, v in cfg.learner.model_dump(mode="json").items() if k != "type"}
    if ray is not None:  # Ray Tune over the same space and objective; trials recorded as runs (tune_ray.py)
        from loopml.tune_ray import tune_on_ray

        return tune_on_ray(ray, learner, base, task, Context(cfg, pre), rows, trials=trials, folds=folds,
                           budget=budget, store=store, experiment=name)
    storage = study_storage(store)
    result = tune(learner, base, task, Context(cfg, pre), rows, budget=budget, trials=trials, folds=folds,
                  storage=storage, study_name=name, enqueue=base)
    import optuna

    loaded = optuna.load_study(study_name=name, storage=storage)
    numbers = [t.number for t in loaded.trials]
    complete = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = loaded.best_trial if complete else None
    return {
        "study": name, "storage": _shown(storage), "learner": learner, "rows": len(rows), "folds": folds,
        "trials_this_call": result.trials, "pruned_this_call": result.pruned,
        "trial_numbers": [numbers[-result.trials] if result.trials else None, numbers[-1] if numbers else None],
        "trials_total": len(numbers), "best_trial": best.number if best else None,
        "best_cv_loss": float(best.value) if best else None,
        "metric": "log_loss" if task.kind != "number" else "1 - r2",
        "best_params": {**base, **best.params} if best else base, "seconds": round(result.seconds, 2),
    }


def _default_study(data: str | Path, target: str, learner: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(data)).stem)[:80] or "data"
    return f"{stem}-{target}-{learner}"


def _shown(storage: Any) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(storage.url).render_as_string(hide_password=True)


def learner_yaml(summary: dict) -> str:
    import yaml

    section = {"type": summary["learner"], **summary["best_params"]}
    header = (f"# loopml tune: study {summary['study']}, best trial {summary['best_trial']} of "
              f"{summary['trials_total']}, cv {summary['metric']} {summary['best_cv_loss']}\n")
    return header + yaml.safe_dump({"learner": section}, sort_keys=False)


def tune_command(
    data: Annotated[Path, typer.Option("--data", "-d", help="Training table (CSV/TSV/Parquet/JSONL).")],
    learner: Annotated[str, typer.Option("--learner", "-l", help="Learner to tune: lightgbm, xgboost, catboost, linear.")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="Column to predict.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (features, split, ...).")] = None,
    trials: Annotated[int | None, typer.Option(help="Trials to run in this call (the study keeps earlier ones).",
                                               min=1)] = None,
    time_budget: Annotated[float | None, typer.Option("--time-budget", help="Stop starting trials after S seconds.",
                                                      min=0.1)] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds per trial.", min=2, max=20)] = 3,
    study: Annotated[str | None, typer.Option(help="Study name (default: <data>-<target>-<learner>); "
                                              "the same name continues the study.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the best parameters "
                                                "as a config YAML (default: <study>.yaml).")] = None,
    store: Annotated[str | None, typer.Option(help="Store URL whose database keeps the study "
                                              "(default $LOOPML_STORE or sqlite:///.loopml/registry.db).")] = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="[ADDRESS]", help="Run the trials on Ray Tune (OptunaSearch + ASHA), each recorded as a run: "
                                           "a cluster's address, or nothing for a local cluster.")] = None,
) -> None:
    """Tune one learner's hyper-parameters with Optuna (seeded TPE, pruning per fold) in a resumable study."""
    if output is not None and output.is_dir():
        raise LoopmlError(f"output {output} is a directory: give a file name")
    if not data.exists():
        raise LoopmlError(f"data file {data} does not exist")
    if ray is not None:
        from loopml.train.ray_train import require_ray

        require_ray()  # before the seconds of preparation
    summary = run_study(data, config, target=target, learner=learner, trials=trials, time_budget=time_budget,
                        store=store, study=study, folds=folds, ray=ray)
    text = learner_yaml(summary)
    path = output or Path(f"{summary['study']}.yaml")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    first, last = summary["trial_numbers"]
    best = summary["best_cv_loss"]
    typer.echo(f"study {summary['study']} ({summary['storage']}): ran trials {first}..{last} this call "
               f"({summary['pruned_this_call']} pruned), {summary['trials_total']} in the study; best trial "
               f"{summary['best_trial']}: cv {summary['metric']} "
               f"{'none finished' if best is None else format(best, '.5f')}", err=True)
    typer.echo(text, nl=False)
    typer.echo(f"best parameters written to {path}", err=True)
