"""What the ensemble learners share: multi-view inputs, rows of any view, score <-> probability, members on disk.

A learner whose members may read different views has ``view = "multi"``; its ``Split.x`` (and the
``x`` of ``predict_scores``) is a plain dict ``{view kind: view}`` holding every kind that
``needed_views`` names. Single-view members get their own view out of it; multi members get the dict.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from loopml.errors import LoopmlError
from loopml.features import StrictModel
from loopml.learners.base import LEARNERS, VIEWS, Context, Learner, Task

MULTI = "multi"
_EPS = 1e-7  # probability clip before logit/log: keeps scores finite when folds agree on 0 or 1


def needed_views(cls: type[Learner], params: StrictModel) -> tuple[str, ...]:
    """The view kinds a learner reads: ``(cls.view,)``, or for a multi learner its members' union."""
    if cls.view == MULTI:
        return cls.views_for(params)  # type: ignore[attr-defined]
    return (cls.view,)


def leaf_learners(cls: type[Learner], params: StrictModel) -> list[tuple[type[Learner], StrictModel]]:
    """Every single-view learner inside (for ``accepts`` checks naming the column); itself if single-view."""
    if cls.view == MULTI:
        return cls.leaves(params)  # type: ignore[attr-defined]
    return [(cls, params)]


def union_views(kinds: list[tuple[str, ...]]) -> tuple[str, ...]:
    seen = {k for group in kinds for k in group}
    return tuple(k for k in VIEWS if k in seen)


def member_params(config: Any) -> tuple[type[Learner], StrictModel]:
    """A member's learner class and validated Params from ``"lightgbm"`` or ``{"type": ..., ...}``."""
    if isinstance(config, str):
        config = {"type": config}
    if not isinstance(config, dict) or "type" not in config:
        raise LoopmlError(f"an ensemble member must be a learner name or a mapping with 'type', not {config!r}")
    cls = LEARNERS.get(str(config["type"]))
    try:
        return cls, cls.Params.model_validate(config)
    except ValidationError as e:
        from loopml.config import describe_error  # config imports the learners

        # the member's own schema: its unknown keys get the nearest name, as at the top level
        raise LoopmlError(f"member {config['type']}: {describe_error(e, cls.Params)}") from None


def normalise_member(config: Any) -> dict:
    """Validation for a ``member``/``members`` entry: the member's full section as plain JSON."""
    _, params = member_params(config)
    return params.model_dump(mode="json")


def member_name(config: dict) -> str:
    if config.get("type") == "bagged" and isinstance(config.get("member"), dict):
        return f"bagged_{config['member'].get('type')}"
    return str(config.get("type"))


def select_view(x: Any, cls: type[Learner], params: StrictModel) -> Any:
    """The input a member reads out of a multi-view dict."""
    if cls.view == MULTI:
        return x
    if not isinstance(x, dict) or cls.view not in x:
        have = sorted(x) if isinstance(x, dict) else type(x).__name__
        raise ValueError(f"a multi-view input needs the '{cls.view}' view (a dict keyed by view kind), got {have}")
    return x[cls.view]


def member_task(task: Task, seed_offset: int = 0) -> Task:
    """Members run single-threaded: the ensemble spends ``task.threads`` on parallel folds instead."""
    return dataclasses.replace(task, threads=1, seed=task.seed + seed_offset)


def take_rows(view: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of any view: TableView/SparseView (``.rows``), dicts of tensors/arrays, arrays."""
    if hasattr(view, "rows"):
        return view.rows(index)
    if isinstance(view, dict):
        return {k: take_rows(v, index) for k, v in view.items()}
    if isinstance(view, list | tuple):
        return [view[i] for i in index]
    if type(view).__module__.startswith("torch"):
        import torch

        return view[torch.as_tensor(index, dtype=torch.long)]
    return view[index]


def concat_views(a: Any, b: Any) -> Any:
    """Rows of ``a`` then ``b`` (same kind of view): for folds over train + validation."""
    if dataclasses.is_dataclass(a) and hasattr(a, "x"):
        return dataclasses.replace(a, x=concat_views(a.x, b.x))
    if isinstance(a, dict):
        return {k: concat_views(a[k], b[k]) for k in a}
    if isinstance(a, list | tuple):
        return [*a, *b]
    if type(a).__module__.startswith("torch"):
        import torch

        return torch.cat([a, b])
    if type(a).__module__.startswith("scipy"):
        import scipy.sparse

        return scipy.sparse.vstack([a, b], format="csr")
    return np.concatenate([a, b])


def as_array(values: Any) -> np.ndarray:
    if type(values).__module__.startswith("torch"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def to_proba(scores: np.ndarray, kind: str) -> np.ndarray:
    """Raw scores -> what is averaged: p(positive) (n,), class probabilities (n, K), or the number itself."""
    s = np.asarray(scores, dtype=np.float64)
    if kind == "binary":
        return 1.0 / (1.0 + np.exp(-s.reshape(-1)))
    if kind == "category":
        z = s - s.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    return s.reshape(-1)


def from_proba(proba: np.ndarray, kind: str) -> np.ndarray:
    """The inverse of ``to_proba``: logits / log-probabilities (softmax of them gives ``proba``) / numbers."""
    if kind == "binary":
        p = np.clip(proba, _EPS, 1.0 - _EPS)
        return np.log(p) - np.log1p(-p)
    if kind == "category":
        return np.log(np.clip(proba, _EPS, 1.0))
    return np.asarray(proba, dtype=np.float64)


def row_weights(task: Task, y: np.ndarray, weight: np.ndarray | None) -> np.ndarray | None:
    """Weights for the selection metric: the rows' own, else the task's class weights."""
    if weight is not None:
        return as_array(weight).astype(np.float64).reshape(-1)
    if task.class_weights is not None and task.kind != "number":
        return np.asarray(task.class_weights, dtype=np.float64)[y.astype(np.int64)]
    return None


def loss(proba: np.ndarray, y: np.ndarray, kind: str, weight: np.ndarray | None = None) -> float:
    """Log loss (binary, category) or MSE on standardised numbers (number), optionally row-weighted."""
    if kind == "binary":
        p = np.clip(proba, 1e-15, 1.0 - 1e-15)
        per_row = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    elif kind == "category":
        p = np.clip(proba[np.arange(len(y)), y.astype(np.int64)], 1e-15, 1.0)
        per_row = -np.log(p)
    else:
        per_row = (proba - y) ** 2
    return float(np.average(per_row, weights=weight))


def metric_name(kind: str) -> str:
    return "mse" if kind == "number" else "log_loss"


#: a member folder's name and parameters, as the bundle's learner.json (which trees use for their own metadata)
MEMBER_FILE = "member.json"


def save_member(learner: Learner, folder: Path) -> None:
    """``folder/member.json`` ({"name", "params"}) and the learner's own files."""
    folder.mkdir(parents=True, exist_ok=True)
    learner.save(folder)
    if (folder / MEMBER_FILE).exists():
        raise ValueError(f"learner '{learner.registered_name}' wrote {MEMBER_FILE}, the name a member folder keeps for itself")
    params = learner.params.model_dump(mode="json")
    (folder / MEMBER_FILE).write_text(json.dumps({"name": learner.registered_name, "params": params}, indent=1))


def load_member(folder: Path, task: Task, context: Context | None) -> Learner:
    """The learner saved by ``save_member``, through the registry (never unpickled)."""
    doc = json.loads((folder / MEMBER_FILE).read_text())
    cls = LEARNERS.get(doc["name"])
    return cls.load(folder, cls.Params.model_validate(doc["params"]), task, context)


def jsonable(value: Any) -> Any:
    """``info`` values as plain JSON (numpy scalars/arrays to Python)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def combine_contributions(parts: list[np.ndarray | None], weights: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
    """Members' attributions, weighted, with the bias (last column) absorbing the rest so each row sums to ``scores``.

    For numbers the weighted sum is already exact; for classes the scores average probabilities, not
    logits, so the per-feature parts are the weighted logit attributions and the bias takes the difference.
    """
    if not parts or any(p is None for p in parts) or len({p.shape for p in parts}) != 1:
        return None
    total = sum(w * p for w, p in zip(weights, parts, strict=True))
    total[:, -1] += scores - total.sum(axis=1)
    return total
