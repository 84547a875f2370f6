"""The Learner contract: the one seam between prepared features and a fitted model.

A learner is registered by name in ``LEARNERS`` (like encoders), has a pydantic ``Params``
section (``learner: {type: lightgbm, ...}`` in the config), names the *view* of the features
it reads, and is fitted, used and saved through five methods:

- ``fit(data, budget)`` -> self: trains from scratch. Like scikit-learn's ``fit`` it first
  forgets everything an earlier fit left (``_reset``).
- ``predict_scores(x)`` -> ``np.ndarray``: raw outputs in the space ``Target.decode`` reads, the
  same as the network's: shape (n,) logits for binary, (n, K) logits for category, (n,) the
  standardised number for regression. Everything downstream (metrics, threshold, report, serve)
  works from these, whichever learner made them.
- ``save(folder)`` / ``load(folder, params, task, context)``: the library's own text/JSON format, JSON or
  safetensors. Never pickle.
- optional: ``contributions(x)`` -> (n, columns-of-the-view + 1) per-row attributions in score
  space (trees: the libraries' own ``pred_contrib``); ``history`` (per-iteration curves).

Views (computed by the features stage from one fitted preprocessing state, see features/views.py):
``tensors`` (dict of column -> tensor, the network's input), ``table`` (raw numbers, integer
category codes as native categoricals: ``TableView``), ``sparse`` (TF-IDF word+char n-grams,
one-hot categories, standardised numbers: ``SparseView``), ``text`` (the text columns' canonical
strings, for learners that embed them: ``TextView``).

Learner modules import only numpy, pydantic and loopml.features/plugins at the top: the config
module imports every learner to build its schema, so torch training code, lightgbm, sklearn and
optuna are imported inside the methods that need them (import cost, and no import cycles).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from loopml.features import FEATURE_TYPES, StrictModel
from loopml.plugins import Registry

#: every registered feature type a learner can be given (``skip`` columns never reach a learner)
ANY_FEATURE_TYPE = frozenset(FEATURE_TYPES.names()) - {"skip"}

VIEWS = ("tensors", "table", "sparse", "text")


@dataclass(frozen=True)
class Task:
    """What a learner needs to know about the target and its resources."""

    kind: str  # "binary" | "category" | "number"
    n_classes: int  # 0 for number
    class_weights: tuple[float, ...] | None = None
    seed: int = 42
    #: CPU threads this learner may use (the caller sizes it to the CPUs this process may use)
    threads: int = 1

    @property
    def n_outputs(self) -> int:
        return self.n_classes if self.kind == "category" else 1


@dataclass
class Budget:
    """A wall-clock allowance. ``seconds=None``: no limit (learners then use their own stopping)."""

    seconds: float | None = None
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float | None:
        if self.seconds is None:
            return None
        return max(0.0, self.seconds - (time.monotonic() - self.started))

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0.0

    def share(self, fraction: float) -> Budget:
        """A sub-budget of ``fraction`` of what is left now (unlimited stays unlimited)."""
        left = self.remaining()
        return Budget(None if left is None else left * fraction)


@dataclass
class Split:
    """One split in a learner's view: inputs ``x``, the transformed target ``y``, optional row weights."""

    x: Any
    y: np.ndarray
    weight: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class FitData:
    train: Split
    validation: Split


@dataclass
class Context:
    """The fitted preprocessing and the full config, for learners built from them (the network)."""

    config: Any  # loopml.config.Config
    preprocessor: Any  # loopml.features.pipeline.Preprocessor


class Learner(ABC):
    """Base class of every learner. Subclasses set ``view``, ``accepts`` and a ``Params`` model."""

    #: which view of the features this learner reads (one of VIEWS)
    view: ClassVar[str] = "tensors"
    #: feature types it can take; a column of another type is a config error naming the column
    accepts: ClassVar[frozenset[str]] = frozenset()
    #: made from another fitted learner (``loopml compress``), never trained from a config: the training
    #: contract (tests/test_learners.py) does not apply; its own suite (tests/test_compress.py) does
    derived: ClassVar[bool] = False
    registered_name: ClassVar[str]

    class Params(StrictModel):
        pass

    def __init__(self, params: StrictModel, task: Task, context: Context | None = None) -> None:
        self.params, self.task, self.context = params, task, context
        self._reset()

    def _reset(self) -> None:
        """Forget every fitted part (called by ``fit`` first). Subclasses extend it."""
        #: per-iteration/epoch curves, e.g. [{"iteration": 1, "train_loss": ..., "val_loss": ...}]
        self.history: list[dict] = []
        #: what the learner reports about its fit (best iteration, stop reason, seconds ...)
        self.info: dict = {}

    @abstractmethod
    def fit(self, data: FitData, budget: Budget) -> Learner: ...

    @abstractmethod
    def predict_scores(self, x: Any) -> np.ndarray: ...

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, params: StrictModel, task: Task, context: Context | None = None) -> Learner: ...

    def contributions(self, x: Any) -> np.ndarray | None:
        """Per-row attributions in score space, one column per view column plus the bias; None if unsupported."""
        return None


LEARNERS: Registry[type[Learner]] = Registry("learner")
