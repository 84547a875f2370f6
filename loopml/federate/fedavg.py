"""The server of federated training: FedAvg (McMahan et al., 2017) and FedProx (Li et al., 2020).

``federate`` runs the whole protocol over a pool of clients (in this process, or Ray actors):
schemas -> one merged schema; statistics -> the fitted preprocessing (federate/stats.py); then
rounds of local training by each client's ordinary Trainer, averaged weighted by training rows.
The global model with the lowest validation loss (row-weighted over the clients) is kept. The
result is an ordinary ``loopml.Model``: save, predict, serve, report and register work on it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from loopml.config import Config
from loopml.errors import LoopmlError
from loopml.federate.clients import Channel, Client, Message

ALGORITHMS = ("fedavg", "fedprox")
#: inferred types that clients may disagree on, and the one that holds them all
_WIDER = [({"number", "binary"}, "number"), ({"binary", "category"}, "category"), ({"text", "category"}, "text")]


@dataclass
class Settings:
    rounds: int
    algorithm: str = "fedavg"
    mu: float = 0.01
    local_epochs: int = 1
    progress: Callable[[str], None] | None = None
    #: called once every client has checked its data and encoded it (input errors come before it)
    on_start: Callable[[], None] | None = None
    #: each round's log (server-side), for tracking
    on_round: Callable[[dict], None] | None = None
    extra: dict = field(default_factory=dict)


def check_settings(settings: Settings) -> None:
    if settings.rounds < 1:
        raise LoopmlError(f"--rounds must be 1 or more; got {settings.rounds}")
    if settings.algorithm not in ALGORITHMS:
        raise LoopmlError(f"--algorithm must be one of {', '.join(ALGORITHMS)}; got '{settings.algorithm}'")
    if settings.local_epochs < 1:
        raise LoopmlError(f"--local-epochs must be 1 or more; got {settings.local_epochs}")
    if settings.algorithm == "fedprox" and not settings.mu > 0:
        raise LoopmlError(f"--mu must be above 0 for fedprox; got {settings.mu}")


def check_privacy(config: Config, settings: Settings) -> None:
    # DP-SGD's optimizer uses per-row gradients only: the proximal term would be silently dropped
    if config.training.privacy is not None and settings.algorithm == "fedprox":
        raise LoopmlError("training.privacy (DP-SGD) works with --algorithm fedavg only: FedProx's proximal term "
                          "is not a per-row loss")


def check_config(config: Config) -> None:
    """Settings that need pooled rows or another learner, refused before any client is asked."""
    if config.learner.type != "network":
        raise LoopmlError(f"federated training trains the network learner; the config names {config.learner.type}")
    if config.target.sampling != "none":
        raise LoopmlError("target.sampling resamples pooled training rows; federated training cannot (use "
                          "target.class_weights: auto)")
    if config.target.threshold == "auto":
        raise LoopmlError("target.threshold auto is tuned on pooled validation scores; set a number in federated "
                          "training")


# -- the pools: who runs the clients ---------------------------------------------------------------
class LocalPool:
    """Every client in this process, one after another (simulation)."""

    def __init__(self, clients: list[Client], channel: Channel) -> None:
        self.clients, self.channel = clients, channel

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.clients]

    def ask(self, method: str, *args: Any) -> list[Message]:
        """Every client's answer to ``method(*args)``, each through the channel."""
        return [self.channel.deliver(getattr(c, method)(*args)) for c in self.clients]


# -- weights --------------------------------------------------------------------------------------
def average(updates: list[Message]) -> dict[str, torch.Tensor]:
    """The row-weighted mean of the clients' weights (integer buffers: the first client's)."""
    total = sum(u.payload["rows"] for u in updates)
    first = updates[0].payload["weights"]
    out = {}
    for key, value in first.items():
        if value.is_floating_point():
            out[key] = sum(u.payload["weights"][key].double() * (u.payload["rows"] / total) for u in updates).to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def _weighted(messages: list[Message], value: Callable[[Message], float | None]) -> float | None:
    pairs = [(value(m), m.payload["rows"]) for m in messages if m.payload["rows"] and value(m) is not None]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def weighted_metrics(messages: list[Message]) -> dict:
    keys = sorted({k for m in messages for k in m.payload["metrics"]})
    out = {k: _weighted(messages, lambda m, k=k: m.payload["metrics"].get(k)) for k in keys}
    out["loss"] = _weighted(messages, lambda m: m.payload["loss"])
    return {k: v for k, v in out.items() if v is not None}


# -- the schema -----------------------------------------------------------------------------------
def merge_schemas(config: Config, answers: list[Message]):
    """One schema from the clients' (types, counts): the same columns everywhere, types reconciled."""
    from loopml.schema import ColumnInfo, Schema

    first = answers[0]
    names = list(first.payload["columns"])
    for a in answers[1:]:
        extra = [c for c in a.payload["columns"] if c not in first.payload["columns"]]
        lacking = [c for c in names if c not in a.payload["columns"]]
        if extra or lacking:
            col = (lacking or extra)[0]
            holder, other = (first.client, a.client) if lacking else (a.client, first.client)
            raise LoopmlError(f"client {other} has no column '{col}' (client {holder} has it); every client needs "
                              "the same columns, or exclude it in the config")
    columns = []
    for name in names:
        # a client without a single value of a column cannot say its type (an empty column reads as category)
        voters = [a for a in answers if a.payload["columns"][name]["missing"] < a.payload["columns"][name]["rows"]]
        types = {a.payload["columns"][name]["type"] for a in voters or answers}
        rows = sum(a.payload["columns"][name]["rows"] for a in answers)
        missing = sum(a.payload["columns"][name]["missing"] for a in answers)
        kind = _reconcile(name, types, voters or answers)
        stats = {"rows": rows, "missing": missing, "missing_pct": round(100.0 * missing / rows, 2) if rows else 0.0,
                 "samples": []}
        reason = "types of all clients" if len(types) == 1 else f"widest of the clients' types ({', '.join(sorted(types))})"
        columns.append(ColumnInfo(name, kind, reason, stats))
    kinds = {a.payload["target_kind"] for a in answers}
    target_kind = kinds.pop() if len(kinds) == 1 else _reconcile(config.target.column, kinds, answers)
    schema = Schema(config.target.column, target_kind, columns, {"rows": sum(a.payload["rows"] for a in answers)})
    schema.check_trainable()
    return schema


def _reconcile(name: str, types: set[str], answers: list[Message]) -> str:
    if len(types) == 1:
        return next(iter(types))
    for group, wider in _WIDER:
        if types <= group:
            return wider
    seen = ", ".join(f"{a.client}: {a.payload['columns'].get(name, {}).get('type', a.payload['target_kind'])}"
                     for a in answers)
    raise LoopmlError(f"column '{name}' has different types on the clients ({seen}); set its type in the config")


# -- the protocol ---------------------------------------------------------------------------------
def federate(config: Config, pool: Any, settings: Settings, test: Any = None) -> Any:
    """Train one model over ``pool``'s clients; ``test``: a labelled table the server evaluates on."""
    from loopml.api import Model
    from loopml.config import resolve_feature
    from loopml.features.pipeline import Preprocessor
    from loopml.features.target import Target
    from loopml.federate import stats
    from loopml.learners.network import build_network

    check_settings(settings)
    check_config(config)
    check_privacy(config, settings)
    say = settings.progress or (lambda line: None)
    start = time.perf_counter()
    schemas = pool.ask("describe")
    schema = merge_schemas(config, schemas)
    if test is not None:  # before any training: a test table without the clients' columns fails at the end
        from loopml.data.read import read_table

        have = read_table(test, config.data).columns
        absent = [c.name for c in schema.inputs if c.name not in have]
        if absent:
            raise LoopmlError(f"the test table has no column '{absent[0]}' (the clients have it)")
    configs = {c.name: resolve_feature(config, c.type, config.features.get(c.name)) for c in schema.inputs}
    pre = Preprocessor.create(configs, Target(schema.target, schema.target_kind))
    stats.check_supported(pre)
    summaries = pool.ask("summarize", pre.to_dict())
    merged = stats.merge_summaries(pre, [s.payload["columns"] for s in summaries])
    if pre.target.kind == "binary" and len(merged[pre.target.column]["labels"]) > 2:
        pre.target.kind = schema.target_kind = "category"  # two classes per client, more across them
    grid = stats.grids(pre, merged)
    histograms = pool.ask("histograms", grid) if grid else [Message("histograms", n, {"columns": {}}) for n in pool.names]
    stats.fit_preprocessor(pre, merged, grid, [h.payload["columns"] for h in histograms],
                           config.target.positive_class, config.target.normalize)
    if pre.target.kind == "binary" and config.target.threshold != 0.5:
        pre.target.state["threshold"] = float(config.target.threshold)
    weights = _class_weights(config, pre, merged)
    ready = pool.ask("adopt", pre.to_dict(), weights)
    sizes = {m.client: m.payload["rows"] for m in ready}
    say(f"{len(sizes)} clients, training rows: " + ", ".join(f"{n} ({c})" for c, n in sizes.items()))
    if settings.on_start:
        settings.on_start()

    torch.manual_seed(config.training.seed)
    network = build_network(pre, config, weights)
    global_weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
    mu = settings.mu if settings.algorithm == "fedprox" else 0.0
    history: list[dict] = []
    spent: dict = {}
    best: tuple[float, int, dict] | None = None
    patience, waited = config.training.early_stopping.patience, 0
    stop_reason = "rounds done"
    for r in range(settings.rounds):
        t0 = time.perf_counter()
        updates = pool.ask("train", global_weights, r, settings.local_epochs, mu,
                           settings.rounds * settings.local_epochs)
        if "privacy" in updates[0].payload:
            spent = {u.client: u.payload["privacy"] for u in updates}
        global_weights = average(updates)
        val = pool.ask("evaluate", global_weights, "validation")
        val_metrics = weighted_metrics(val)
        logs = {"epoch": r, "train_loss": _weighted(updates, lambda m: m.payload["train_loss"]),
                "val_loss": val_metrics.get("loss"),
                **{f"val_{k}": v for k, v in val_metrics.items() if k != "loss"},
                "lr": config.training.optimizer.lr, "time": time.perf_counter() - t0,
                **({"epsilon": max(p["epsilon"] for p in spent.values())} if spent else {})}
        history.append(logs)
        if settings.on_round:
            settings.on_round(logs)
        say(f"round {r + 1}/{settings.rounds}: train loss {logs['train_loss']:.4f}, validation loss "
            f"{logs['val_loss']:.4f}" + (f", accuracy {logs['val_accuracy']:.4f}" if "val_accuracy" in logs else ""))
        if best is None or logs["val_loss"] < best[0] - config.training.early_stopping.min_delta:
            best, waited = (logs["val_loss"], r, {k: v.clone() for k, v in global_weights.items()}), 0
        else:
            waited += 1
            if patience and waited >= patience:
                stop_reason = f"no validation improvement in {patience} rounds"
                break
    network.load_state_dict(best[2])
    network.eval()
    held_out = pool.ask("evaluate", best[2], "test") if test is None else []
    model = _assemble(Model, config, schema, pre, network, weights, history, test, held_out,
                      pool.ask("evaluate", best[2], "validation"))
    seconds = time.perf_counter() - start
    model.info = {
        "data_source": None, "splits": None, "data_report": {},
        "data_fingerprint": hashlib.sha256("".join(sorted(s.payload["fingerprint"] for s in schemas)).encode())
        .hexdigest()[:16],
        "training": {"learner": "network", "monitor": "loss", "epochs_run": len(history), "best_epoch": best[1],
                     "stop_reason": stop_reason, "seconds": seconds, "resumed": False,
                     "federated": {"algorithm": settings.algorithm, "mu": mu, "rounds": settings.rounds,
                                   "rounds_run": len(history), "best_round": best[1] + 1,
                                   "local_epochs": settings.local_epochs, "clients": sizes,
                                   "test": "server" if test is not None else "clients (row-weighted mean)",
                                   **settings.extra}},
    }
    if spent:  # every client's own ε for its rows; the model's guarantee is the largest of them
        worst = max(spent.values(), key=lambda p: p["epsilon"])
        privacy = {**worst, "cumulative_epsilon": worst["epsilon"],
                   "target_epsilon": config.training.privacy.target_epsilon, "accountant":
                   config.training.privacy.accountant, "per_client": {c: p["epsilon"] for c, p in spent.items()}}
        model.info["training"]["privacy"] = privacy
        model.metrics["privacy"] = {k: v for k, v in privacy.items() if isinstance(v, int | float)}
    model.learner.info = dict(model.info["training"])
    return model


def _class_weights(config: Config, pre: Any, merged: dict) -> list[float] | None:
    from loopml.errors import did_you_mean
    from loopml.federate.stats import class_counts

    setting = config.target.class_weights
    if setting is None or pre.target.kind == "number":
        return None
    classes = [str(c) for c in pre.target.classes]
    if setting == "auto":
        counts = np.asarray(class_counts(pre, merged), dtype=np.float64)
        return (counts.sum() / (len(classes) * np.maximum(counts, 1))).tolist()
    unknown = [k for k in setting if k not in classes]
    if unknown:
        raise LoopmlError(f"target.class_weights names unknown class '{unknown[0]}'{did_you_mean(unknown[0], classes)}")
    return [float(setting.get(c, 1.0)) for c in classes]


def _assemble(model_cls: type, config: Config, schema: Any, pre: Any, network: Any, weights: list[float] | None,
              history: list[dict], test: Any, held_out: list[Message], validation: list[Message]) -> Any:
    """The ordinary Model: the network learner with the averaged weights, metrics on the held-out data."""
    from loopml.learners import Context
    from loopml.learners.network import NetworkLearner
    from loopml.train.run import learner_task

    model = model_cls(config)
    model.schema, model.preprocessor, model.history = schema, pre, history
    learner = NetworkLearner(NetworkLearner.Params(), learner_task(config, pre, weights), Context(config, pre))
    learner.network, learner.history = network, history
    model.learner = learner
    sizes = {"validation": sum(m.payload["rows"] for m in validation)}
    model.metrics = {"validation": weighted_metrics(validation)}
    model.evaluation = {"federated": {"validation": {m.client: {"rows": m.payload["rows"], "loss": m.payload["loss"],
                                                                 **m.payload["metrics"]} for m in validation}}}
    if test is not None:
        ev = model.evaluation_of(test, "test")
        model.metrics["test"] = ev["metrics"]
        model.evaluation["evaluations"] = {"test": ev}
        sizes["test"] = ev["rows"]
        # drift monitoring's reference: the server's own rows (the clients' training rows never leave them)
        from loopml.data.read import read_table
        from loopml.loop.drift import reference

        frame = read_table(test, config.data)
        kinds = {col: f.config.type for col, f in pre.features.items()}
        model.reference = reference(frame, kinds, model.predict(frame), pre.target.classes or None)
        model.reference["source"] = "the server's test data"
    elif any(m.payload["rows"] for m in held_out):
        model.metrics["test"] = weighted_metrics(held_out)
        model.evaluation["federated"]["test"] = {m.client: {"rows": m.payload["rows"], "loss": m.payload["loss"],
                                                            **m.payload["metrics"]} for m in held_out}
        sizes["test"] = sum(m.payload["rows"] for m in held_out)
    model.evaluation["data"] = {"sizes": {k: v for k, v in sizes.items() if v is not None}}
    return model
