"""Federated training (issue 18): only statistics and weights leave a client, the federated fit of the
preprocessing equals fitting on the pooled rows, FedAvg of identical clients is local training, FedProx
pulls towards the global weights, the CLI's bad input is one line (exit 2), and the result is an
ordinary model (saved, loaded, predicted, registered). Tiny fixed-seed tables, clients in-process;
one small Ray run."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd
import pytest
import torch

import loopml
from loopml.config import load_config
from loopml.errors import LoopmlError
from loopml.federate.clients import Channel, Client, Message, partition
from loopml.federate.fedavg import LocalPool, Settings, average, federate

ROUNDS = 2


def table(seed: int, n: int = 240) -> pd.DataFrame:
    """Numbers (a continuous one with unique values, a small integer one), a category, a binary column,
    a unique id per row (category: never to leave its client) and a learnable binary target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n) * 7.3 + 1.234567
    k = rng.integers(0, 30, size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    flag = rng.choice(["yes", "no"], size=n)
    score = x / 7 + (color == "red") - (k > 20) + rng.normal(scale=0.4, size=n)
    return pd.DataFrame({"x": x, "k": k, "color": color, "flag": flag,
                         "uid": [f"id-{seed}-{i:05d}-{rng.integers(1e9)}" for i in range(n)],
                         "y": np.where(score > 0.2, "pos", "neg")})


def small_config(**training) -> dict:
    return {"target": {"column": "y"}, "features": {"uid": {"type": "category"}},
            "training": {"epochs": 1, "batch_size": 64, **training}}


def run(frames: dict[str, pd.DataFrame], tap=None, rounds: int = ROUNDS, test=None, **settings):
    cfg = load_config(small_config())
    clients = [Client(name, frame, cfg.model_dump(mode="json"), has_test=test is not None)
               for name, frame in frames.items()]
    model = federate(cfg, LocalPool(clients, Channel(tap)), Settings(rounds, **settings), test=test)
    return model, clients


def _leaves(value, out: list) -> list:
    """Every key and scalar in a (nested) payload."""
    if isinstance(value, dict):
        for k, v in value.items():
            out.append(k)
            _leaves(v, out)
    elif isinstance(value, list | tuple):
        for v in value:
            _leaves(v, out)
    else:
        out.append(value)
    return out


def test_only_statistics_and_weights_leave_a_client():
    frames = {"a": table(1), "b": table(2)}
    messages: list[Message] = []
    model, _ = run(frames, messages.append)
    kinds = {m.kind for m in messages}
    assert kinds == {"schema", "summary", "histograms", "ready", "weights", "metrics"}
    state = model.network.state_dict()
    raw_numbers = {float(v) for f in frames.values() for v in f["x"]}
    raw_texts = {v for f in frames.values() for v in f["uid"]}
    sizes = {name: len(f) for name, f in frames.items()}
    for m in messages:
        if m.kind == "weights":  # weights: the network's own tensors, a row count as a number, the loss
            assert set(m.payload) == {"weights", "rows", "train_loss"}
            assert {k: tuple(v.shape) for k, v in m.payload["weights"].items()} == \
                   {k: tuple(v.shape) for k, v in state.items()}
            assert isinstance(m.payload["rows"], int) and 0 < m.payload["rows"] <= sizes[m.client]
            continue
        leaves = _leaves(m.payload, [])
        assert not any(isinstance(v, torch.Tensor | np.ndarray | pd.Series | pd.DataFrame) for v in leaves), m.kind
        floats = {float(v) for v in leaves if isinstance(v, float)}
        assert not floats & raw_numbers, f"a raw value of x left client {m.client} in a {m.kind} message"
        assert not {v for v in leaves if isinstance(v, str)} & raw_texts, f"a row id left in a {m.kind} message"
        if "rows" in m.payload:
            assert isinstance(m.payload["rows"], int)
    assert len([m for m in messages if m.kind == "weights"]) == ROUNDS * len(frames)


def test_the_channel_refuses_anything_but_its_payloads():
    channel = Channel()
    with pytest.raises(LoopmlError, match="unexpected message"):
        channel.deliver(Message("weights", "a", {"weights": {}, "rows": 3, "frame": table(0)}))
    with pytest.raises(LoopmlError, match="unexpected message"):
        channel.deliver(Message("rows", "a", {}))


def test_federated_preprocessing_equals_the_pooled_fit():
    from loopml.features.pipeline import Preprocessor

    model, clients = run({"a": table(3), "b": table(4), "c": table(5, 150)}, rounds=1)
    pooled_rows = pd.concat([c.parts["train"] for c in clients], ignore_index=True)
    pooled = Preprocessor.from_dict(model.preprocessor.to_dict())  # the same configs, fitted on pooled rows
    pooled.fit(pooled_rows)
    fed = model.preprocessor
    for col in ("k", "color", "flag", "y"):  # integer, category, binary, target: exact
        state = fed.target.state if col == "y" else fed.features[col].state
        expected = pooled.target.state if col == "y" else pooled.features[col].state
        assert state.keys() == expected.keys(), col
        for key, value in expected.items():
            numeric = isinstance(value, float) or (isinstance(value, list) and all(isinstance(v, float) for v in value))
            assert state[key] == (pytest.approx(value, rel=1e-12) if numeric else value), (col, key)
    assert fed.features["uid"].state["vocab"] == []  # every id is seen once: none left its client
    x, px = fed.features["x"].state, pooled.features["x"].state
    assert (x["method"], x["indicator"]) == (px["method"], px["indicator"])
    assert x["center"] == pytest.approx(px["center"], rel=1e-9) and x["scale"] == pytest.approx(px["scale"], rel=1e-9)
    width = (max(px["edges"]) - min(px["edges"])) / 2048
    assert len(x["edges"]) == len(px["edges"])
    assert np.abs(np.array(x["edges"]) - np.array(px["edges"])).max() <= 2 * width + 0.01  # bounds rounded out


def test_fedavg_of_identical_clients_is_local_training():
    from loopml.learners.network import build_network
    from loopml.train.callbacks import History
    from loopml.train.trainer import Trainer

    frame = table(6)
    model, clients = run({"a": frame, "b": frame.copy()}, rounds=1, local_epochs=2)
    cfg = load_config(small_config())
    torch.manual_seed(cfg.training.seed)
    network = build_network(model.preprocessor, cfg)  # the server's initial weights
    torch.manual_seed(cfg.training.seed)  # as a client seeds its round
    Trainer(network, cfg.training.model_copy(update={"epochs": 2}), [History()]).fit(
        clients[0].tensors["train"], clients[0].tensors["validation"])
    for key, value in network.state_dict().items():
        assert torch.allclose(model.network.state_dict()[key], value, atol=1e-6), key


def test_average_is_weighted_by_rows():
    updates = [Message("weights", "a", {"weights": {"w": torch.tensor([1.0, 2.0])}, "rows": 1, "train_loss": 0.0}),
               Message("weights", "b", {"weights": {"w": torch.tensor([5.0, 6.0])}, "rows": 3, "train_loss": 0.0})]
    assert average(updates)["w"].tolist() == [4.0, 5.0]


def test_fedprox_keeps_the_update_near_the_global_weights():
    model, clients = run({"a": table(7), "b": table(8)}, rounds=1)
    start = {k: v.clone() for k, v in model.network.state_dict().items()}

    def distance(mu: float) -> float:
        new = clients[0].train(start, 1, 3, mu).payload["weights"]
        return math.sqrt(sum(float(((new[k] - start[k]) ** 2).sum()) for k in start if start[k].is_floating_point()))

    assert distance(5.0) < 0.7 * distance(0.0)


@pytest.fixture
def files(tmp_path):
    table(10).to_csv(tmp_path / "a.csv", index=False)
    table(11).to_csv(tmp_path / "b.csv", index=False)
    table(12).drop(columns=["y"]).to_csv(tmp_path / "c.csv", index=False)
    pd.concat([table(13), table(14)]).to_csv(tmp_path / "all.csv", index=False)
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["-d", "a.csv", "-d", "c.csv"], "error: client c.csv: target column 'y' not found"),
    (["-d", "a.csv", "-d", "b.csv", "--rounds", "0"], "error: --rounds must be 1 or more; got 0"),
    (["-d", "all.csv", "--partition-by", "colour"], "error: partition column 'colour' not found (did you mean 'color'?)"),
    (["-d", "all.csv", "--partition-by", "flag", "--clients", "3"], "error: --clients must be between 2 and the 2"),
    (["-d", "a.csv"], "error: federated training needs 2 or more clients"),
    (["-d", "a.csv", "-d", "b.csv", "--mu", "0.1"], "error: --mu is for --algorithm fedprox"),
])
def test_bad_input_is_one_line_and_exit_2(files, cli_here, args, message):
    done = cli_here(["federate", "-t", "y", *args], files)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(message), done.stderr
    assert "Traceback" not in done.stderr
    assert loopml.registry.Store().list_runs() == []  # refused before a run exists


def test_cli_federate_makes_an_ordinary_registered_model(files, cli_here):
    import json

    (files / "cfg.yaml").write_text("features: {uid: {type: skip}}\ntraining: {epochs: 1, batch_size: 64}\n")
    done = cli_here(["federate", "-d", "all.csv", "--partition-by", "color", "--clients", "3", "-t", "y", "-c",
                     "cfg.yaml", "--rounds", "2", "--algorithm", "fedprox", "--test", "b.csv", "-o", "fed",
                     "--register", "fed"], files)
    assert done.returncode == 0, done.stderr
    assert "registered fed:1" in done.stdout
    model = loopml.load("fed:1")
    assert set(model.predict(files / "a.csv")) <= {"pos", "neg"}
    assert model.metrics["test"]["accuracy"] > 0.6
    assert set(model.reference["columns"]) == {"x", "k", "color", "flag"}  # drift reference: the server's test rows
    fed = json.loads((files / "fed" / "history.json").read_text())["federated"]
    assert (fed["algorithm"], fed["rounds"], len(fed["clients"])) == ("fedprox", 2, 3)
    runs = loopml.registry.Store().list_runs()
    assert len(runs) == 1 and runs[0]["params"]["federated"]["clients"] == 3
    assert (files / "fed" / "report.html").is_file()


def test_partition_gives_each_value_to_one_client():
    frame = pd.DataFrame({"g": list("aaaaabbbccd"), "y": range(11)})
    parts = partition(frame, "g", 3)
    assert [sorted(set(p["g"])) for _, p in parts] == [["a"], ["b"], ["c", "d"]]
    assert sum(len(p) for _, p in parts) == len(frame)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install loopml[ray])")
def test_clients_as_ray_actors_send_the_same_messages():
    from loopml.federate.ray_pool import RayPool
    from loopml.train.ray_train import ray_cluster

    cfg = load_config(small_config())
    specs = [(name, frame, cfg.model_dump(mode="json"), False) for name, frame in (("a", table(20)), ("b", table(21)))]
    kinds: list[str] = []
    with ray_cluster(None, num_cpus=2):
        model = federate(cfg, RayPool(specs, Channel(lambda m: kinds.append(m.kind))), Settings(1))
    assert kinds.count("weights") == 2 and model.metrics["test"]["accuracy"] > 0.5


def test_dp_per_client_spends_the_target_epsilon_over_all_rounds():
    pytest.importorskip("opacus")
    cfg = load_config({**small_config(), "training": {**small_config()["training"],
                                                     "privacy": {"target_epsilon": 3.0, "delta": 1e-3}}})
    clients = [Client(n, table(s), cfg.model_dump(mode="json"), has_test=False) for n, s in (("a", 30), ("b", 31))]
    model = federate(cfg, LocalPool(clients, Channel()), Settings(2))
    per_round = [h["epsilon"] for h in model.history]
    assert 0 < per_round[0] < per_round[1]  # one accountant per client over every round
    assert model.metrics["privacy"]["epsilon"] == pytest.approx(3.0, abs=0.05)  # noise set for both rounds
    assert set(model.info["training"]["privacy"]["per_client"]) == {"a", "b"}
    with pytest.raises(LoopmlError, match="fedavg only"):
        federate(cfg, LocalPool(clients, Channel()), Settings(2, algorithm="fedprox"))
