"""The loop as an attacker uses it: corrected labels across turns, odd monitor windows and report paths."""

import time
import uuid

import numpy as np
import pandas as pd
import pytest
from test_loop import _feed, _store

import loopml
from loopml.cli import main
from loopml.loop import retrain as retrain_module
from loopml.loop.policy import load_policy
from loopml.loop.retrain import retrain

POLICY = {"data": {"holdout_fraction": 0.3, "min_holdout": 10, "feedback_weight": 1},
          "train": {"training": {"epochs": 2}}}


def make(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n).round(4), rng.normal(size=n).round(4)
    kind = rng.choice(["x", "y", "z"], size=n)
    return pd.DataFrame({"a": a, "b": b, "kind": kind, "label": np.where(a - b > 0, "pos", "neg")})


@pytest.fixture(scope="module")
def champion_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack")
    data = root / "train.csv"
    make(300, 0).to_csv(data, index=False)
    model = loopml.Model(target="label", training={"epochs": 3}).fit(data, progress=False, cache_dir=False)
    return model.save(root / "champion")


def test_a_label_corrected_in_a_later_turn_replaces_the_one_an_earlier_turn_learned(champion_dir, tmp_path, monkeypatch):
    """'latest label wins' across turns: the champion learned X=pos, a user then says X=neg; the next
    candidate trains on X=neg only, and its split record no longer holds the old row."""
    store = _store(tmp_path, champion_dir)
    corrected = {"a": 7.0, "b": -7.0, "kind": "x"}
    old_id = store.add_feedback("clf", "pos", inputs=corrected)
    _feed(store, make(60, 1))
    monkeypatch.setattr(retrain_module, "gate", lambda *a, **k: (True, "forced", {}))
    assert retrain(store, "clf", load_policy(POLICY))["promoted"]
    assert old_id in store.get_version("clf", 2)["lineage"]["feedback_ids"]

    new_id = store.add_feedback("clf", "neg", inputs=corrected)
    _feed(store, make(60, 2))
    trained: list[pd.DataFrame] = []
    fit = loopml.Model.fit

    def spy(self, data, *args, **kwargs):
        trained.append(data)
        return fit(self, data, *args, **kwargs)

    monkeypatch.setattr(loopml.Model, "fit", spy)
    assert retrain(store, "clf", load_policy(POLICY))["promoted"]
    rows = trained[-1][(trained[-1]["a"] == 7.0) & (trained[-1]["b"] == -7.0)]
    assert rows["label"].tolist() == ["neg"], rows
    record = loopml.load("clf:3", store=store._url).info["splits"]
    fed = {i for part in record["train"] if "feedback" in part for i in part["feedback"]}
    assert new_id in fed and old_id not in fed
    # and the turn after rebuilds that record without complaint
    _feed(store, make(60, 3))
    assert retrain(store, "clf", load_policy(POLICY))["candidate_version"] == 4


@pytest.mark.parametrize("args", [["--last", "0"], ["--last", "-5"], ["--window", "0"], ["--window", "-5"]])
def test_monitor_refuses_empty_or_negative_windows(champion_dir, tmp_path, capsys, args):
    store = _store(tmp_path, champion_dir)
    assert main(["monitor", "clf", "--store", store._url, *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and ("--last" in err or "--window" in err), err
    assert store.list_drift_windows("clf") == []


def test_monitor_says_why_a_small_window_has_no_columns(champion_dir, tmp_path, capsys):
    store = _store(tmp_path, champion_dir)
    inputs = make(1, 5).drop(columns="label").to_dict("records")[0]
    store.log_predictions([{"id": uuid.uuid4().hex, "model_name": "clf", "model_version": 1, "created_at": time.time(),
                            "inputs": inputs, "outputs": {"prediction": "pos"}, "latency_ms": 1.0}])
    assert main(["monitor", "clf", "--store", store._url, "--last", "10"]) == 0
    assert "fewer than 50 rows" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["folder", "unwritable"])
def test_monitor_report_to_a_folder_or_an_unwritable_place_is_one_line(champion_dir, tmp_path, capsys, where):
    store = _store(tmp_path, champion_dir)
    target = tmp_path / "reports"
    if where == "folder":
        target.mkdir()
    else:  # its folder is a file: nothing can be created there, whoever runs the test (root included)
        target.write_text("not a folder")
        target = target / "drift.html"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["monitor", "clf", "--store", store._url, "--report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "internal error" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written beside it


def test_monitor_judges_a_version_only_on_its_own_predictions_and_feedback(champion_dir, tmp_path):
    """Right after a promotion the window still holds the old version's traffic: its inputs count for
    input drift, but its predictions and their feedback say nothing about the version now served."""
    from loopml.loop.monitor import monitor

    store = _store(tmp_path, champion_dir)
    store.register("clf", path=champion_dir)
    store.promote("clf", 2)
    frame = make(200, 6)
    now = time.time()
    rows = [{"id": uuid.uuid4().hex, "model_name": "clf", "model_version": 1, "created_at": now - 10 + i * 1e-3,
             "inputs": r, "outputs": {"prediction": "pos"}, "latency_ms": 1.0}
            for i, r in enumerate(frame.drop(columns="label").to_dict("records"))]
    store.log_predictions(rows)
    for row in rows[:100]:
        store.add_feedback("clf", "neg", prediction_id=row["id"], inputs=row["inputs"], outputs=row["outputs"],
                           model_version=1)
    result = monitor(store, "clf")
    assert result["version"] == 2 and result["rows"] == 200
    assert "predictions" not in result["drifted"] and "(predictions)" not in result["drifted"], result["drifted"]
    assert result["live"]["labelled"] == 0, result["live"]


def test_one_bad_feedback_label_does_not_make_every_row_encode_alone(champion_dir, monkeypatch):
    """One label that is not a class among thousands of rows: the bad row is found by halving the
    batch (a few dozen encodings), not by encoding every row on its own (50 s for 20,000 rows)."""
    from loopml.loop.feedback_rows import usable_feedback

    model = loopml.load(champion_dir)
    frame = make(4000, 7)
    feedback = [{"id": i, "created_at": float(i), "label": r.pop("label"), "inputs": r}
                for i, r in enumerate(frame.to_dict("records"))]
    feedback[1234]["label"] = "maybe"
    feedback[3000]["inputs"]["a"] = 1e300  # and one that only overflows once encoded
    calls = []
    transform = type(model.preprocessor).transform

    def counting(self, df, *args, **kwargs):
        calls.append(len(df))
        return transform(self, df, *args, **kwargs)

    monkeypatch.setattr(type(model.preprocessor), "transform", counting)
    rows, skipped = usable_feedback(feedback, model)
    assert len(rows) == 3998 and sum(skipped.values()) == 2, skipped
    assert 1234 not in set(rows["_feedback_id"]) and 3000 not in set(rows["_feedback_id"])
    assert len(calls) < 100, len(calls)


def test_watch_reports_an_unexpected_error_and_keeps_watching(champion_dir, tmp_path, monkeypatch, capsys):
    """An unattended `retrain --watch` outlives one failed turn, whatever failed (a locked database,
    a bug in a plugin): the failure is recorded, printed, and the next check still runs."""
    store = _store(tmp_path, champion_dir)
    _feed(store, make(5, 8))
    calls = []

    def flaky(store, name, policy, reason="manual", progress=False):
        calls.append(reason)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        raise KeyboardInterrupt  # ends the test's watcher

    monkeypatch.setattr(retrain_module, "retrain", flaky)
    policy = tmp_path / "p.yaml"
    policy.write_text("trigger: {min_feedback: 1}\n")
    assert main(["retrain", "clf", "--store", store._url, "--policy", str(policy), "--watch", "0.01"]) == 130
    assert len(calls) == 2
    assert "RuntimeError: database is locked" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["alias: [production", "aliass: production", "gate: {margni: 0.1}",
                                  "gate: {margin: -0.1}", "alias: ''", "- a\n- b\n", "train: 5",
                                  "train: {split: {column: null}}", "train: {target: a}"])
def test_a_bad_policy_is_one_line_exit_2_and_nothing_recorded(champion_dir, tmp_path, capsys, text):
    store = _store(tmp_path, champion_dir)
    policy = tmp_path / "p.yaml"
    policy.write_text(text)
    assert main(["retrain", "clf", "--store", store._url, "--policy", str(policy)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured
    assert [v["version"] for v in store.list_versions("clf")] == [1] and store.list_gate_decisions("clf") == []
