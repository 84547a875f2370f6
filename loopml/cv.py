"""K-fold cross-validation: stratified, duplicates kept within one fold, preprocessing fitted per fold.

Each fold is an ordinary training run (``Model.fit``: any learner the config names, AutoML
included) on the same rows with a split column saying which rows are held out; the validation
split (early stopping, threshold tuning) is carved from the other folds.
The fold's data (rows + split column) is fingerprinted like any input, so re-running the same CV
reuses the tensor cache, and nothing fitted on a held-out fold can leak into its model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from loopml.config import Config, load_config
from loopml.data.infer import infer_target_kind
from loopml.data.read import Source, read_table
from loopml.data.split import duplicate_groups
from loopml.errors import LoopmlError, did_you_mean

FOLD_COLUMN = "__loopml_fold__"


def fold_assignments(df: pd.DataFrame, target: str, kind: str, folds: int, seed: int) -> np.ndarray:
    """The fold (0..K-1) of every row: stratified on the label (regression: its deciles), grouped on duplicates."""
    labels = df[target]
    if kind == "number":
        strata = pd.qcut(pd.to_numeric(labels, errors="coerce").rank(method="first"), q=10, labels=False)
    else:
        strata = labels.astype(str)
    smallest = strata.value_counts().min()
    if smallest < folds and kind != "number":
        raise LoopmlError(f"cannot make {folds} stratified folds: a class of '{target}' has only {smallest} rows")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment = np.empty(len(df), dtype=np.int64)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(df)), strata.to_numpy(), duplicate_groups(df))):
        assignment[held_out] = k
    return assignment


def cross_validate(
    config: Config | dict | str | os.PathLike | None, data: Source, folds: int = 5, seed: int = 0,
    progress: bool = False, cache_dir: Path | None | bool = None, target: str | None = None,
) -> dict:
    """Train ``folds`` models; per-fold metrics on each held-out fold, and their mean and std."""
    from loopml.api import Model

    if folds < 2:
        raise LoopmlError("--folds must be at least 2")
    cfg = config if isinstance(config, Config) else load_config(config, target=target)
    df = read_table(data, cfg.data)
    column = cfg.target.column
    if column not in df.columns:
        raise LoopmlError(f"target column '{column}' not found{did_you_mean(column, list(df.columns))}")
    df = df[df[column].notna()].reset_index(drop=True)
    kind = cfg.target.type if cfg.target.type != "auto" else infer_target_kind(df[column])
    assignment = fold_assignments(df, column, kind, folds, seed)
    fold_cfg = cfg.model_copy(update={"split": cfg.split.model_copy(update={"column": FOLD_COLUMN, "test": 0.0})})
    results = []
    for k in range(folds):
        start = time.perf_counter()
        fold_df = df.copy()
        fold_df[FOLD_COLUMN] = np.where(assignment == k, "test", "train")
        model = Model(fold_cfg).fit(fold_df, progress=progress, cache_dir=cache_dir)
        scalars = {m: v for m, v in model.metrics["test"].items() if isinstance(v, (int, float))}
        results.append({**scalars, "fold": k, "rows": int((assignment == k).sum()),
                        "seconds": time.perf_counter() - start, "epochs": _rounds(model)})
        if progress:
            shown = ", ".join(f"{m} {scalars[m]:.4f}" for m in ("accuracy", "f1", "roc_auc", "r2") if m in scalars)
            print(f"fold {k + 1}/{folds}: {shown}", flush=True)
    keys = [m for m in results[0] if m not in ("fold", "rows", "seconds", "epochs", "learner")
            and all(m in r for r in results)]
    return {
        "folds": results, "k": folds, "seed": seed, "target": column, "task": kind, "learner": cfg.learner.type,
        "mean": {m: float(np.mean([r[m] for r in results])) for m in keys},
        "std": {m: float(np.std([r[m] for r in results], ddof=1)) for m in keys},
        "description": f"{folds}-fold cross-validation, stratified on '{column}', exact duplicates kept in one fold, "
                       "preprocessing fitted on each fold's training rows only, validation carved from them.",
    }


def _rounds(model) -> int | None:
    """Epochs (network) or boosting rounds kept (trees) of a fold's model; None for a learner without either."""
    epochs = model.info.get("training", {}).get("epochs_run")
    if epochs is not None:
        return int(epochs)
    learner = getattr(model, "learner", None)
    kept = (getattr(learner, "info", None) or {}).get("best_iteration")
    return int(kept) if isinstance(kept, (int, float)) else None
