"""Attacks on ``loopml federate`` (issue 18) that once got through: a column without values on one
client, the same --data file twice, --partition-by the target, and single-row values leaving a client
through a binary column or a category with ``min_frequency: 1``. Tiny fixed-seed tables, in-process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.config import load_config
from loopml.errors import LoopmlError
from loopml.federate.clients import Channel, Client, Message
from loopml.federate.fedavg import LocalPool, Settings, federate

SECRET = "SECRET-7781-unique"


def table(seed: int, n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n) * 3.1 + 0.5
    color = rng.choice(["red", "green", "blue"], size=n)
    score = x / 3 + (color == "red") + rng.normal(scale=0.4, size=n)
    return pd.DataFrame({"x": x, "color": color, "note": "none", "y": np.where(score > 0.3, "pos", "neg")})


def federated(frames: dict[str, pd.DataFrame], features: dict | None = None, tap=None, test=None,
              settings: Settings | None = None):
    cfg = load_config({"target": {"column": "y"}, "features": features or {},
                       "training": {"epochs": 1, "batch_size": 64}})
    clients = [Client(name, frame, cfg.model_dump(mode="json"), has_test=test is not None)
               for name, frame in frames.items()]
    return federate(cfg, LocalPool(clients, Channel(tap)), settings or Settings(1), test=test)


def _strings(value, out: set) -> set:
    if isinstance(value, dict):
        for k, v in value.items():
            _strings(k, out)
            _strings(v, out)
    elif isinstance(value, list | tuple):
        for v in value:
            _strings(v, out)
    elif isinstance(value, str):
        out.add(value)
    return out


def test_a_column_without_values_on_one_client_does_not_vote_on_its_type():
    empty = table(2).assign(x=np.nan)  # an empty column infers as category on its own
    model = federated({"a": table(1), "b": empty})
    assert {c.name: c.type for c in model.schema.columns}["x"] == "number"
    assert set(model.predict(empty)) <= {"pos", "neg"}


def test_a_single_rows_value_never_leaves_through_a_binary_or_min_frequency_1():
    b = table(4)
    b.loc[7, "note"] = SECRET  # 'note': two distinct values on b, so binary; one of them is one row's
    b.loc[9, "color"] = SECRET + "-color"
    messages: list[Message] = []
    federated({"a": table(3), "b": b}, {"color": {"type": "category", "min_frequency": 1}}, messages.append)
    sent = set().union(*(_strings(m.payload, set()) for m in messages))
    assert not {s for s in sent if SECRET in s}, "a single row's value left its client"
    assert {"red", "green", "blue"} <= sent  # the common values still do


def test_a_test_table_without_a_clients_column_is_refused_before_any_round():
    started: list = []
    settings = Settings(1, on_start=lambda: started.append(1), on_round=started.append)
    with pytest.raises(LoopmlError, match="^the test table has no column 'color' \\(the clients have it\\)$"):
        federated({"a": table(5), "b": table(6)}, test=table(7).drop(columns=["color"]), settings=settings)
    assert started == []  # no run was started, no round trained


@pytest.fixture
def files(tmp_path):
    table(10).to_csv(tmp_path / "a.csv", index=False)
    table(11).to_csv(tmp_path / "b.csv", index=False)
    (tmp_path / "sub").mkdir()
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["-d", "a.csv", "-d", "b.csv", "-d", "sub/../a.csv"], "error: --data sub/../a.csv is given twice (as a.csv)"),
    (["-d", "a.csv", "--partition-by", "y", "--clients", "2"], "error: --partition-by names the target 'y'"),
    (["-d", "a.csv", "-d", "b.csv", "--test", "sub/../b.csv"], "error: --test sub/../b.csv is also a client's --data"),
])
def test_bad_input_is_one_line_and_exit_2(files, cli_here, args, message):
    done = cli_here(["federate", "-t", "y", "--rounds", "1", *args], files)
    assert done.returncode == 2, done.stdout
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(message), done.stderr
    assert loopml.registry.Store().list_runs() == []
    assert not (files / "models").exists() or not any((files / "models").iterdir())


def test_retrain_of_a_federated_champion_says_why_it_has_no_rows():
    from types import SimpleNamespace

    from loopml.loop.training_data import champion_splits

    champion = SimpleNamespace(info={"data_source": None, "splits": None,
                                     "training": {"federated": {"algorithm": "fedavg"}}})
    with pytest.raises(LoopmlError, match="^the champion was trained federated: its training rows stay with"):
        champion_splits(None, "fed", champion, None)


def test_a_client_too_small_to_hide_its_rows_sends_no_statistics():
    small = table(9, n=6)  # 3 training rows: their count, mean, M2 and M3 give the 3 values back
    messages: list[Message] = []
    with pytest.raises(LoopmlError, match="^client b: has 3 training rows; a client needs 10 or more"):
        federated({"a": table(8), "b": small}, tap=messages.append)
    assert not [m for m in messages if m.client == "b" and m.kind not in ("schema", "error")]


def test_a_column_only_some_clients_hold_can_be_excluded():
    a, b = table(12), table(13).assign(ward=[f"w{i % 3}" for i in range(120)])
    with pytest.raises(LoopmlError, match="client a has no column 'ward' .*or exclude it in the config$"):
        federated({"a": a, "b": b})
    for features in ({"ward": {"type": "skip"}}, None):
        cfg = load_config({"target": {"column": "y"}, "features": features or {}, "exclude": [] if features else
                           ["ward"], "training": {"epochs": 1, "batch_size": 64}})
        clients = [Client(n, f, cfg.model_dump(mode="json"), False) for n, f in (("a", a), ("b", b))]
        model = federate(cfg, LocalPool(clients, Channel()), Settings(1))
        assert "ward" not in model.preprocessor.features and set(model.predict(b)) <= {"pos", "neg"}
