"""What the gradient-boosted tree learners (LightGBM, XGBoost, CatBoost) share.

Each reads the ``table`` view (raw numbers, integer category codes as native categoricals),
trains on the transformed target a ``Split`` holds (0/1 for binary, class index for category,
the standardised number for regression) and returns raw margins, so ``Target.decode`` reads
them as it reads the network's logits.

One stopping rule for all three (``Stopper``), checked after every boosting round from the
library's callback: early stopping on the validation loss (lowest so far, ``patience`` rounds
without a better one) and the time budget (stop when the next round would not fit in it). With
early stopping the model kept is cut to the best round, so predict, save and load all use the
same trees; ``early_stopping_rounds: 0`` keeps every round.

Saved as the library's own format plus ``learner.json`` (view columns, best round, history);
never pickle. Library modules: tree_lightgbm.py, tree_xgboost.py, tree_catboost.py.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from loopml.errors import LoopmlError
from loopml.features import StrictModel
from loopml.features.views import TableView
from loopml.learners.base import Budget, Context, FitData, Learner, Split, Task

META_FILE = "learner.json"

#: extra library parameters a config may pass through (name -> scalar)
ExtraParams = dict[str, bool | int | float | str]
#: what ``extra`` may not set: files and folders the library would write or read, resources loopml
#: sizes itself, and what fixes the meaning of the scores (objective, classes, metric)
_RESERVED_EXTRA = ("file", "dir", "path", "snapshot", "writing", "model", "output", "input", "thread", "job",
                   "seed", "verbos", "device", "gpu", "task_type", "objective", "loss_function", "num_class",
                   "metric", "eval", "boost_from_average", "init_score", "base_score")


class TreeParams(Learner.Params):
    """Parameters every boosted-tree learner has; each library adds its own."""

    learning_rate: float = Field(0.05, gt=0, le=1)
    #: an upper bound: early stopping and the time budget usually stop sooner
    n_estimators: int = Field(10_000, ge=1)
    #: rounds without a better validation loss before stopping; 0 = no early stopping: every
    #: round is kept (the validation loss is still recorded)
    early_stopping_rounds: int = Field(50, ge=0)
    #: library parameters passed as they are (for tuning), e.g. {"min_split_gain": 0.1}
    extra: ExtraParams = Field(default_factory=dict)
    #: add a + b, a - b, a * b and a / b of every pair among this many numeric view columns (those
    #: with the highest absolute rank correlation to the training target; 0 = none): ratios and
    #: products that axis-aligned splits can only approximate. The pairs are saved with the model.
    pairwise: int = Field(0, ge=0, le=16)

    @field_validator("extra")
    @classmethod
    def _no_reserved_extra(cls, value: dict) -> dict:
        for key in value:
            if any(part in key.lower() for part in _RESERVED_EXTRA):
                raise ValueError(f"extra parameter {key!r} is set by loopml itself (files, threads, seeds, "
                                 "objective and metric are not configurable here)")
        return value


class Stopper:
    """Tracks the per-round losses, the best validation round and the time budget.

    ``update`` returns the stop reason, or None to go on. Rounds count from 0 here (the
    libraries' convention); ``best + 1`` is the number of rounds kept.
    """

    def __init__(self, patience: int, budget: Budget, has_validation: bool) -> None:
        self.patience = patience
        #: pick the best validation round (else keep every round)
        self.selects = has_validation and patience > 0
        left = budget.remaining()
        self.deadline = None if left is None else time.monotonic() + left
        self.last_tick: float | None = None
        self.recent: deque[float] = deque(maxlen=20)
        self.best, self.best_loss = -1, float("inf")
        self.history: list[dict] = []
        self.reason = "max_iterations"

    def update(self, iteration: int, train_loss: float | None, val_loss: float | None) -> str | None:
        now = time.monotonic()
        if self.last_tick is not None:  # the first round also holds the library's setup: not a round's cost
            self.recent.append(now - self.last_tick)
        self.last_tick = now
        row: dict = {"iteration": iteration + 1}
        if train_loss is not None:
            row["train_loss"] = float(train_loss)
        if val_loss is not None:
            row["val_loss"] = float(val_loss)
        self.history.append(row)
        # without selection every round is "the best": the model keeps all of them
        loss = float(val_loss) if self.selects and val_loss is not None else -float(iteration)
        if loss < self.best_loss:
            self.best, self.best_loss = iteration, loss
        elif self.selects and iteration - self.best >= self.patience:
            self.reason = "early_stopping"
            return self.reason
        # stop when one more round (as slow as the slowest recent one) would end past the deadline
        if self.deadline is not None and now + max(self.recent, default=0.0) > self.deadline:
            self.reason = "time_budget"
            return self.reason
        return None

    @property
    def kept(self) -> int:
        """Rounds kept: up to and including the best one."""
        return max(self.best + 1, 1)


PAIR_OPS = ("+", "-", "*", "/")


def choose_pairs(train: Split, k: int) -> list[tuple[int, int]]:
    """Every pair among the ``k`` numeric (non-categorical, non-constant) view columns with the highest
    absolute Spearman correlation to the target (per column on the rows where it is not NaN;
    ties: view order). Deterministic: the same rows give the same pairs."""
    from scipy.stats import rankdata

    x, y = train.x.x, np.asarray(train.y, dtype=np.float64).reshape(-1)
    ranked: list[tuple[float, int]] = []
    for i in range(x.shape[1]):
        if i in train.x.categorical:
            continue
        ok = ~np.isnan(x[:, i]) & ~np.isnan(y)
        if ok.sum() < 3 or np.ptp(x[ok, i]) == 0 or np.ptp(y[ok]) == 0:
            continue
        corr = np.corrcoef(rankdata(x[ok, i]), rankdata(y[ok]))[0, 1]
        ranked.append((-abs(float(np.nan_to_num(corr))), i))
    chosen = sorted(i for _, i in sorted(ranked)[:k])
    return [(a, b) for n, a in enumerate(chosen) for b in chosen[n + 1:]]


def pair_columns(x: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """(n, 4 * len(pairs)): a + b, a - b, a * b, a / b per pair (b == 0: NaN), in PAIR_OPS order."""
    out = np.empty((len(x), len(PAIR_OPS) * len(pairs)), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k, (i, j) in enumerate(pairs):
            a, b = x[:, i], x[:, j]
            out[:, 4 * k] = a + b
            out[:, 4 * k + 1] = a - b
            out[:, 4 * k + 2] = a * b
            out[:, 4 * k + 3] = np.where(b == 0, np.nan, a / np.where(b == 0, 1.0, b))
    out[~np.isfinite(out)] = np.nan
    return out


def sample_weights(split: Split, task: Task) -> np.ndarray | None:
    """Row weights: the split's own, times the class weight of each row's class."""
    weight = None if split.weight is None else np.asarray(split.weight, dtype=np.float64).reshape(-1)
    if task.class_weights and task.kind != "number":
        per_class = np.asarray(task.class_weights, dtype=np.float64)
        by_class = per_class[np.asarray(split.y).astype(np.int64).reshape(-1)]
        weight = by_class if weight is None else weight * by_class
    return weight


def check_target(split: Split, task: Task) -> np.ndarray:
    y = np.asarray(split.y).reshape(-1)
    if task.kind == "number":
        return y.astype(np.float64)
    codes = y.astype(np.int64)
    k = 2 if task.kind == "binary" else task.n_classes
    if codes.size and (codes.min() < 0 or codes.max() >= k):
        raise LoopmlError(f"target codes must lie in 0..{k - 1} for a {task.kind} target")
    return codes


class TreeLearner(Learner):
    """Base of the three boosted-tree learners: fit bookkeeping, view checks, save/load of the metadata."""

    view = "table"
    accepts = frozenset({"number", "binary", "category", "date"})
    #: the library's model file in the saved folder
    model_file: ClassVar[str]

    def _reset(self) -> None:
        super()._reset()
        self.model: Any = None
        self.columns: list[str] = []
        self.categorical: dict[int, int] = {}
        #: (i, j) view-column pairs whose arithmetic goes in after the view's columns (``pairwise``)
        self.pairs: list[tuple[int, int]] = []

    # -- the contract ----------------------------------------------------------------------------
    def fit(self, data: FitData, budget: Budget) -> TreeLearner:
        self._reset()
        started = time.monotonic()
        train, validation = data.train, data.validation
        for split in (train, validation):
            if not isinstance(split.x, TableView):
                raise TypeError(f"{self.registered_name} reads the table view, got {type(split.x).__name__}")
        if len(train) == 0 or not train.x.columns:
            raise LoopmlError(f"{self.registered_name}: no training rows or no input columns")
        if validation.x.columns != train.x.columns:
            raise ValueError("training and validation views have different columns")
        self.columns, self.categorical = list(train.x.columns), dict(train.x.categorical)
        params: TreeParams = self.params  # type: ignore[assignment]
        self.pairs = choose_pairs(train, params.pairwise) if params.pairwise else []
        train, validation = (Split(self._augment(s.x), s.y, s.weight) for s in (train, validation))
        self.check_extra(params.extra)
        stopper = Stopper(params.early_stopping_rounds, budget, len(validation) > 0)
        try:
            self._train(train, validation if len(validation) else None, stopper)
        except self.library_errors() as e:
            if not params.extra:  # loopml's own parameters: a bug, not the user's input
                raise
            reason = " ".join(str(e).split())[:300]
            raise LoopmlError(f"learner.extra {params.extra}: {self.registered_name} refused it: {reason}") from None
        self.history = stopper.history
        self.info = {
            "best_iteration": stopper.kept,
            "iterations": len(stopper.history),
            "stop_reason": stopper.reason,
            "best_val_loss": stopper.best_loss if stopper.selects else None,
            "metric": self.metric_name(),
            "seconds": round(time.monotonic() - started, 4),
        }
        return self

    def predict_scores(self, x: TableView) -> np.ndarray:
        self._check_view(x)
        scores = np.asarray(self._predict(self._augment(x)), dtype=np.float64)
        return scores.reshape(len(x), -1) if self.task.kind == "category" else scores.reshape(-1)

    def contributions(self, x: TableView) -> np.ndarray:
        """TreeSHAP in score space: (n, columns + 1) with the bias last; (n, columns + 1, K) for category."""
        self._check_view(x)
        out = np.asarray(self._contributions(self._augment(x)), dtype=np.float64)
        if not self.pairs:
            return out
        # a derived column's share goes half to each of its two view columns (sums stay the same)
        width = len(self.columns)
        folded = np.concatenate([out[:, :width], out[:, -1:]], axis=1)
        for k, (i, j) in enumerate(self.pairs):
            for op in range(len(PAIR_OPS)):
                share = out[:, width + k * len(PAIR_OPS) + op] / 2.0
                folded[:, i] += share
                folded[:, j] += share
        return folded

    def save(self, folder: Path) -> None:
        if self.model is None:
            raise RuntimeError("save() before fit()")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_model(folder / self.model_file)
        meta = {
            "learner": self.registered_name,
            "library_version": self.library_version(),
            "kind": self.task.kind,
            "n_classes": self.task.n_classes,
            "columns": self.columns,
            "categorical": {str(i): n for i, n in self.categorical.items()},
            "pairs": [list(p) for p in self.pairs],
            "info": self.info,
            "history": self.history,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: Path, params: StrictModel, task: Task, context: Context | None = None) -> TreeLearner:
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("learner") != cls.registered_name:
            raise LoopmlError(f"{folder} holds a '{meta.get('learner')}' model, not {cls.registered_name}")
        if meta["kind"] != task.kind or (task.kind == "category" and meta["n_classes"] != task.n_classes):
            raise LoopmlError(f"{folder}: the saved {cls.registered_name} model is for another target")
        learner = cls(params, task, context)
        learner.columns = list(meta["columns"])
        learner.categorical = {int(i): int(n) for i, n in meta["categorical"].items()}
        learner.pairs = [(int(i), int(j)) for i, j in meta.get("pairs", [])]
        learner.info, learner.history = dict(meta["info"]), list(meta["history"])
        try:
            learner.model = learner._load_model(folder / cls.model_file)
        except LoopmlError:
            raise
        except Exception as e:  # noqa: BLE001  each library raises its own type (and a native backtrace) on a bad file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise LoopmlError(f"{cls.model_file} is not a valid {cls.registered_name} model: {first}") from None
        return learner

    # -- shared helpers --------------------------------------------------------------------------
    def _check_view(self, x: TableView) -> None:
        if self.model is None:
            raise RuntimeError("predict before fit()")
        if not isinstance(x, TableView):
            raise TypeError(f"{self.registered_name} reads the table view, got {type(x).__name__}")
        if x.columns != self.columns:
            missing = [c for c in self.columns if c not in x.columns]
            raise LoopmlError(
                f"{self.registered_name}: the input has other columns than at training"
                + (f" (missing: {', '.join(missing[:5])})" if missing else "")
            )

    def generic_names(self) -> list[str]:
        # view column names are the users' (any characters); the libraries get safe ones, the
        # real names live in learner.json
        return [f"c{i}" for i in range(len(self.columns) + len(PAIR_OPS) * len(self.pairs))]

    def _augment(self, x: TableView) -> TableView:
        """The view with the ``pairwise`` columns appended (the view itself without pairs)."""
        if not self.pairs:
            return x
        extra = pair_columns(x.x, self.pairs)
        names = [f"{x.columns[i]}{op}{x.columns[j]}" for i, j in self.pairs for op in PAIR_OPS]
        sources = [x.sources[i] for i, _ in self.pairs for _ in PAIR_OPS]
        return TableView(np.concatenate([x.x, extra], axis=1), x.columns + names, x.categorical, x.sources + sources)

    def seconds_left(self, stopper: Stopper) -> float | None:
        return None if stopper.deadline is None else max(0.0, stopper.deadline - time.monotonic())

    # -- per library -----------------------------------------------------------------------------
    def _train(self, train: Split, validation: Split | None, stopper: Stopper) -> None:
        raise NotImplementedError

    def _predict(self, x: TableView) -> np.ndarray:
        raise NotImplementedError

    def _contributions(self, x: TableView) -> np.ndarray:
        raise NotImplementedError

    def _save_model(self, path: Path) -> None:
        raise NotImplementedError

    def _load_model(self, path: Path) -> Any:
        raise NotImplementedError

    def metric_name(self) -> str:
        raise NotImplementedError

    def check_extra(self, extra: dict) -> None:
        """Refuse ``extra`` names the library does not know (naming the nearest) before any training."""

    def library_errors(self) -> tuple[type[BaseException], ...]:
        """The library's own error classes: with ``extra`` set, they are the user's input (exit 2)."""
        return ()

    @staticmethod
    def library_version() -> str:
        raise NotImplementedError
