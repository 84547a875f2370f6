"""The client side of federated training: one holder of rows that never sends them.

A ``Client`` reads its own table, splits it (train / validation, and test when the server holds no
test set), and answers the server with ``Message``s only: its schema (column types and counts), the
statistics of its training rows (federate/stats.py), its model weights after local training, and its
metrics. Every answer passes the server's ``Channel``, which a test can tap to check each one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from loopml.config import Config
from loopml.errors import LoopmlError, did_you_mean

#: the fewest training rows a client sends statistics of: the count, mean and 2nd/3rd moments (and the
#: rounded range) of a column over three rows give the three values back exactly
MIN_TRAIN_ROWS = 10
#: what a message may carry: its kind -> the keys of its payload
PAYLOADS = {
    "schema": {"rows", "target_kind", "columns", "fingerprint"},
    "summary": {"rows", "columns"},
    "histograms": {"columns"},
    "weights": {"weights", "rows", "train_loss", "privacy"},
    "metrics": {"split", "rows", "loss", "metrics"},
    "ready": {"rows"},
    "error": {"message"},
}


@dataclass
class Message:
    """One answer of a client: aggregated statistics, weights or metrics (``PAYLOADS``), never rows."""

    kind: str
    client: str
    payload: dict = field(default_factory=dict)


class Channel:
    """Everything a client sends the server goes through ``deliver``; ``tap`` sees each message."""

    def __init__(self, tap: Callable[[Message], None] | None = None) -> None:
        self.tap = tap

    def deliver(self, message: Message) -> Message:
        if not isinstance(message, Message) or message.kind not in PAYLOADS \
                or not set(message.payload) <= PAYLOADS[message.kind]:
            raise LoopmlError(f"a client sent an unexpected message: {getattr(message, 'kind', type(message).__name__)}")
        if self.tap is not None:
            self.tap(message)
        if message.kind == "error":
            raise LoopmlError(f"client {message.client}: {message.payload['message']}")
        return message


def _answer(method: Callable) -> Callable:
    """A client method whose input problems come back as an ``error`` message (so they cross Ray too)."""

    def wrapper(self: Client, *args: Any, **kwargs: Any) -> Message:
        try:
            return method(self, *args, **kwargs)
        except LoopmlError as e:
            return Message("error", self.name, {"message": str(e)})

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class Client:
    """A data holder. ``source``: its file (or, simulating clients, its part of a table)."""

    def __init__(self, name: str, source: Any, config: dict, has_test: bool, threads: int | None = None) -> None:
        self.name, self.source, self.has_test = name, source, has_test
        self.config = Config.model_validate(config)
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.frame: pd.DataFrame | None = None
        self.parts: dict[str, pd.DataFrame] = {}
        self.pre = None
        self.tensors: dict = {}
        self.network = None
        #: with training.privacy: this client's accountant history, carried across rounds
        self.privacy_state: dict | None = None

    # -- the schema -------------------------------------------------------------------------------
    @_answer
    def describe(self) -> Message:
        """Column types as this client infers them, with row and missing counts (no sample values)."""
        from loopml.data.read import fingerprint, read_table
        from loopml.schema import build_schema

        frame = read_table(self.source, self.config.data).reset_index(drop=True)
        config = self.config
        left_out = set(config.exclude) | {n for n, f in config.features.items() if f.type == "skip"}
        absent = left_out - set(frame.columns)
        if absent:  # a column other clients hold and the config leaves out: this client has nothing to leave out
            config = config.model_copy(update={"exclude": [c for c in config.exclude if c not in absent],
                                               "features": {k: v for k, v in config.features.items()
                                                            if k not in absent}})
        schema = build_schema(frame, config)
        target = schema.target
        self.frame = frame[frame[target].notna()].reset_index(drop=True)
        if isinstance(self.source, pd.DataFrame):
            from loopml.data.read import row_hashes

            digest = hashlib.sha256(row_hashes(self.source).tobytes()).hexdigest()[:16]
        else:
            digest = fingerprint(self.source)
        columns = {c.name: {"type": c.type, "rows": c.stats["rows"], "missing": c.stats["missing"]}
                   for c in schema.columns if c.type != "skip"}
        return Message("schema", self.name, {"rows": len(self.frame), "target_kind": schema.target_kind,
                                             "columns": columns, "fingerprint": digest})

    # -- fitting the preprocessing ------------------------------------------------------------------
    @_answer
    def summarize(self, plan: dict) -> Message:
        """Split the rows, then the statistics of the training split (round 1 of the federated fit)."""
        from loopml.data.split import split_frame
        from loopml.features.pipeline import Preprocessor
        from loopml.federate.stats import client_summary

        self.pre = Preprocessor.from_dict(plan)
        missing = [c for c in [*self.pre.features, self.pre.target.column] if c not in self.frame.columns]
        if missing:
            raise LoopmlError(f"has no column '{missing[0]}'{did_you_mean(missing[0], self.frame.columns)}")
        split_cfg = self.config.split.model_copy(update={"test": self.config.split.test if not self.has_test else 0.0})
        parts, _ = split_frame(self.frame, self.pre.target.column, split_cfg, self.pre.target.kind != "number")
        for name, part in parts.items():
            parts[name] = part[~self.pre.rows_to_drop(part)] if len(part) else part
        if not len(parts["validation"]):
            raise LoopmlError("the validation split is empty; use more data or a larger split.validation")
        if len(parts["train"]) < MIN_TRAIN_ROWS:  # checked here, before anything about them is sent
            raise LoopmlError(f"has {len(parts['train'])} training rows; a client needs {MIN_TRAIN_ROWS} or more "
                              "(the statistics of fewer would give its rows' values away)")
        self.parts = parts
        return Message("summary", self.name, {"rows": len(parts["train"]),
                                              "columns": client_summary(self.pre, parts["train"])})

    @_answer
    def histograms(self, grids: dict) -> Message:
        from loopml.federate.stats import client_histograms

        return Message("histograms", self.name, {"columns": client_histograms(self.pre, self.parts["train"], grids)})

    @_answer
    def adopt(self, fitted: dict, class_weights: list[float] | None) -> Message:
        """Take the server's fitted preprocessing; encode this client's splits with it; build the network."""
        from loopml.features.pipeline import Preprocessor
        from loopml.learners.network import build_network
        from loopml.train.trainer import TensorData

        self.pre = Preprocessor.from_dict(fitted)
        self.tensors = {name: TensorData(self.pre.transform(part), self.pre.transform_target(part))
                        for name, part in self.parts.items() if len(part)}
        self.network = build_network(self.pre, self.config, class_weights)
        return Message("ready", self.name, {"rows": len(self.parts["train"])})

    # -- training -------------------------------------------------------------------------------
    @_answer
    def train(self, weights: dict, round_number: int, local_epochs: int, mu: float, planned_epochs: int = 0) -> Message:
        """Local epochs of the ordinary Trainer from the global ``weights``; FedProx (``mu`` > 0) adds
        mu/2 * ||w - w_global||^2 to the loss. Returns the new weights and this client's row count.

        With ``training.privacy`` the Trainer runs DP-SGD on this client's rows: its noise is set for all
        ``planned_epochs`` (rounds x local epochs) and one accountant counts every round, so the ε sent
        back is what this client has spent so far."""
        import torch

        from loopml.train.callbacks import History
        from loopml.train.trainer import Trainer

        self.network.load_state_dict(weights)
        training = self.config.training
        cfg = training.model_copy(update={"epochs": local_epochs, "seed": training.seed + 1009 * round_number})
        torch.manual_seed(cfg.seed)
        private = training.privacy is not None
        # DP: the noise is calibrated for the whole federated training, the loop runs this round's epochs
        trainer = Trainer(self.network, cfg.model_copy(update={"epochs": max(planned_epochs, local_epochs)})
                          if private else cfg, [History()])
        if private:
            trainer.config = cfg
            if self.privacy_state is not None:
                trainer.privacy.load_state_dict(self.privacy_state)
        if mu > 0:
            anchor = [p.detach().clone() for p in self.network.parameters()]
            params = list(self.network.parameters())
            base = trainer.loss_fn

            def proximal(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                drift = sum(((p - a.to(p.device)) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                return base(outputs, target) + 0.5 * mu * drift

            trainer.loss_fn = proximal
        history = trainer.fit(self.tensors["train"], self.tensors["validation"])
        state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
        payload = {"weights": state, "rows": len(self.tensors["train"]),
                   "train_loss": float(history[-1]["train_loss"]) if history else None}
        if private:
            self.privacy_state = trainer.privacy.state_dict()
            record = trainer.privacy.record()
            payload["privacy"] = {k: record[k] for k in ("epsilon", "delta", "noise_multiplier", "sample_rate",
                                                         "steps", "max_grad_norm")}
        return Message("weights", self.name, payload)

    @_answer
    def evaluate(self, weights: dict, split: str) -> Message:
        """The global model's loss (and metrics) on this client's ``split``: numbers only."""
        import torch

        from loopml.evaluate.assemble import scores_metrics
        from loopml.train.trainer import predict_batches

        self.network.load_state_dict(weights)
        self.network.eval()
        data = self.tensors.get(split)
        if data is None:
            return Message("metrics", self.name, {"split": split, "rows": 0, "loss": None, "metrics": {}})
        outputs = predict_batches(self.network, data.inputs, self.config.training.eval_batch_size)
        with torch.inference_mode():
            loss = float(self.network.loss(outputs, data.target))
        metrics = scores_metrics(self.pre, outputs.numpy(), data.target.numpy(), full=split == "test")
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and np.isfinite(v)}
        return Message("metrics", self.name, {"split": split, "rows": len(data), "loss": loss, "metrics": scalars})


# -- simulated clients: one table partitioned by a column ------------------------------------------
def partition(frame: pd.DataFrame, column: str, clients: int) -> list[tuple[str, pd.DataFrame]]:
    """Non-IID parts of ``frame``: every value of ``column`` goes whole to one client, the largest
    values first, each to the client with the fewest rows so far (sizes balanced, values never shared)."""
    if column not in frame.columns:
        raise LoopmlError(f"partition column '{column}' not found{did_you_mean(column, frame.columns)}")
    counts = frame[column].astype(str).where(frame[column].notna(), "<missing>").value_counts()
    if clients < 2 or clients > len(counts):
        raise LoopmlError(f"--clients must be between 2 and the {len(counts)} distinct values of '{column}'; "
                          f"got {clients}")
    values = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    groups: list[list[str]] = [[] for _ in range(clients)]
    sizes = [0] * clients
    for value, n in values:
        i = min(range(clients), key=lambda j: (sizes[j], j))
        groups[i].append(value)
        sizes[i] += n
    keys = frame[column].astype(str).where(frame[column].notna(), "<missing>")
    return [(f"{column}:{'|'.join(g)}"[:120], frame[keys.isin(g)].reset_index(drop=True)) for g in groups]
