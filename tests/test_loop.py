"""The loop: drift flags, the gate, retraining from feedback, and the commands."""

import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.cli import main
from loopml.loop.drift import window_drift
from loopml.loop.feedback_rows import usable_feedback
from loopml.loop.monitor import monitor
from loopml.loop.policy import load_policy
from loopml.loop.retrain import retrain, should_retrain
from loopml.registry import Store

# holdout newest: these tests' feedback draws were chosen with the newest 30% held back; the small candidate network
# learns the new codes from 210 rows and its quality swings with which ones (0.73-0.92 on fresh rows, either holdout)
POLICY = {"trigger": {"min_feedback": 100}, "data": {"holdout_fraction": 0.3, "min_holdout": 30, "feedback_weight": 3,
                   "holdout": "newest"},
          "gate": {"metric": "accuracy", "margin": 0.01, "max_test_regression": 0.01}, "train": {"training": {"epochs": 12}}}


RECODED = ("K1", "K2", "K3")  # an upstream system starts sending codes instead of names


def make(n: int, seed: int, codes: tuple | None = None) -> pd.DataFrame:
    """``kind`` drives the label; ``codes``: an upstream system renames its values (the model must relearn)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    kind = rng.choice(["alpha", "beta", "gamma"], size=n)
    score = a - 0.7 * b + np.where(kind == "alpha", 2.5, np.where(kind == "beta", -2.5, 0.0))
    df = pd.DataFrame({"a": a, "b": b, "kind": kind, "label": np.where(score + rng.normal(scale=0.4, size=n) > 0, "pos", "neg")})
    if codes:
        df["kind"] = df["kind"].map(dict(zip(("alpha", "beta", "gamma"), codes, strict=True)))
    return df


@pytest.fixture
def champion(recoded_champion):
    return recoded_champion


def _store(tmp_path, champion_dir, url: str | None = None) -> Store:
    """A store (a SQLite file in ``tmp_path`` unless ``url``) with ``champion_dir`` as clf:1 in production."""
    store = Store(url or f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    store.register("clf", path=champion_dir)
    store.promote("clf", 1)
    return store


def _feed(store: Store, frame: pd.DataFrame) -> list[int]:
    """Each row as feedback on its inputs; the feedback ids."""
    ids = []
    for row in frame.to_dict("records"):
        label = row.pop("label")
        ids.append(store.add_feedback("clf", label, inputs=row))
    return ids


def test_drift_flags_shifted_windows_and_not_unshifted_ones(champion):
    model, _ = champion
    false_alarms = sum(window_drift(w := make(300, 100 + s).drop(columns=["label"]), list(model.predict(w)),
                                    model.reference)["drift"] for s in range(10))
    hits = sum(window_drift(w := make(300, 200 + s, codes=RECODED).drop(columns=["label"]), list(model.predict(w)),
                            model.reference)["drift"] for s in range(10))
    assert false_alarms == 0 and hits == 10
    shifted = make(300, 1).assign(a=lambda d: d.a + 2.0).drop(columns=["label"])
    result = window_drift(shifted, list(model.predict(shifted)), model.reference)
    assert result["columns"]["a"]["level"] == "drift" and result["columns"]["a"]["ks_p"] < 1e-6
    assert result["columns"]["b"]["level"] == "ok"


def test_the_gate_rejects_candidates_trained_on_shuffled_labels(champion, tmp_path):
    """10 seeded trials: feedback whose labels are shuffled never gets a candidate promoted."""
    _, champion_dir = champion
    policy = load_policy(POLICY)
    promoted = []
    for seed in range(10):
        store = _store(tmp_path / f"trial{seed}", champion_dir)
        noisy = make(200, 1000 + seed)
        noisy["label"] = np.random.default_rng(seed).permutation(noisy["label"].to_numpy())
        _feed(store, noisy)
        decision = retrain(store, "clf", policy, reason=f"noise trial {seed}")
        promoted.append(decision["promoted"])
        assert store.resolve("clf@production")["version"] == 1
        assert store.list_gate_decisions("clf")[-1]["promoted"] is False
    assert promoted == [False] * 10


def test_real_feedback_retrains_promotes_and_records_lineage(champion, tmp_path):
    model, champion_dir = champion
    store = _store(tmp_path, champion_dir)
    policy = load_policy(POLICY)
    assert should_retrain(store, "clf", policy)[0] is False
    shifted = make(300, 7, codes=RECODED)
    _feed(store, shifted)
    fire, why = should_retrain(store, "clf", policy)
    assert fire and "300 new feedback" in why
    decision = retrain(store, "clf", policy, reason=why)
    assert decision["promoted"], decision["reason"]
    assert store.resolve("clf@production")["version"] == 2
    v2 = store.get_version("clf", 2)
    assert v2["parent_version"] == 1 and len(v2["lineage"]["feedback_ids"]) == 210 and len(v2["lineage"]["held_back_ids"]) == 90
    assert v2["lineage"]["feedback_from"] <= v2["lineage"]["feedback_to"]
    numbers = store.list_gate_decisions("clf")[-1]["numbers"]
    assert numbers["candidate_window"] > numbers["champion_window"] + 0.1 and numbers["mcnemar_p"] < 0.05
    fresh = make(500, 8, codes=RECODED)
    assert loopml.load("clf@production", store=store._url).evaluate(fresh)["accuracy"] > model.evaluate(fresh)["accuracy"] + 0.1
    assert should_retrain(store, "clf", policy)[0] is False  # the decision consumed that feedback
    assert store.rollback("clf")["to_version"] == 1


def test_feedback_is_deduplicated_latest_label_wins(champion):
    model, _ = champion
    rows = [{"id": 1, "inputs": {"a": 1, "b": 0, "kind": "alpha"}, "label": "neg", "created_at": 1.0},
            {"id": 2, "inputs": {"a": 2, "b": 0, "kind": "alpha"}, "label": "pos", "created_at": 2.0},
            {"id": 3, "inputs": {"a": 1, "b": 0, "kind": "alpha"}, "label": "pos", "created_at": 3.0}]
    frame, skipped = usable_feedback(rows, model)
    assert frame["a"].tolist() == [2, 1] and frame["label"].tolist() == ["pos", "pos"] and not skipped


def test_monitor_and_retrain_commands(champion, tmp_path, capsys):
    _, champion_dir = champion
    store = _store(tmp_path, champion_dir)
    rows = make(200, 3, codes=RECODED)
    model = loopml.load("clf:1", store=store._url)
    store.log_predictions([{"id": f"{i:032x}", "model_name": "clf", "model_version": 1, "created_at": 1000.0 + i,
                            "inputs": r, "outputs": {"prediction": p, "probabilities": None}, "latency_ms": 1.0}
                           for i, (r, p) in enumerate(zip(rows.drop(columns=["label"]).to_dict("records"),
                                                          model.predict(rows), strict=True))])
    result = monitor(store, "clf")
    assert result["drift"] and "kind" in result["drifted"] and store.list_drift_windows("clf")[0]["drift"]
    assert main(["monitor", "clf", "--store", store._url, "--report", str(tmp_path / "drift.html")]) == 0
    out = capsys.readouterr().out
    assert "drift: YES" in out and "kind" in out
    assert 'id="window"' in (tmp_path / "drift.html").read_text()
    assert main(["retrain", "clf", "--store", store._url, "--if-triggered"]) == 0
    assert "no retrain" in capsys.readouterr().out
    assert main(["retrain", "clf", "--store", store._url, "--policy", str(tmp_path / "missing.yaml")]) == 2


def test_warm_start_keeps_the_champions_preprocessing_and_weights(champion, tmp_path):
    model, champion_dir = champion
    data = make(400, 5)
    cfg = model.config.model_dump(mode="json")
    cfg["training"] = {**cfg["training"], "epochs": 1, "optimizer": {"type": "sgd", "lr": 1e-9, "weight_decay": 0.0}}
    tuned = loopml.Model(cfg).fit(data, warm_start=model, progress=False, cache_dir=False)
    assert tuned.preprocessor.to_dict()["features"] == model.preprocessor.to_dict()["features"]
    assert np.allclose(tuned.predict_proba(data).to_numpy(), model.predict_proba(data).to_numpy(), atol=1e-4)
    store = _store(tmp_path, champion_dir)
    _feed(store, make(150, 9).assign(a=lambda d: d.a + 0.5))
    decision = retrain(store, "clf", load_policy({**POLICY, "start": "warm"}), reason="warm test")
    assert decision["candidate_version"] == 2 and store.get_version("clf", 2)["lineage"]["start"] == "warm"
    bad = {**cfg, "combiner": {"type": "concat", "layers": [8]}}
    with pytest.raises(loopml.errors.LoopmlError, match="same model architecture"):
        loopml.Model(bad).fit(data, warm_start=model, progress=False, cache_dir=False)


def test_labels_that_arrive_while_a_retrain_trains_count_towards_the_next_trigger(champion, tmp_path, monkeypatch):
    _, champion_dir = champion
    store = _store(tmp_path, champion_dir)
    policy = load_policy(POLICY | {"trigger": {"min_feedback": 40}})
    _feed(store, make(300, 7, codes=RECODED))
    real_fit = loopml.Model.fit

    def fit_while_labels_arrive(self, *args, **kwargs):
        out = real_fit(self, *args, **kwargs)
        _feed(store, make(40, 9, codes=RECODED))  # labelled during the training: this retrain never read them
        return out

    monkeypatch.setattr(loopml.Model, "fit", fit_while_labels_arrive)
    retrain(store, "clf", policy, reason="first")
    monkeypatch.setattr(loopml.Model, "fit", real_fit)
    fire, why = should_retrain(store, "clf", policy)
    assert fire and "40 new feedback" in why


def test_one_huge_text_does_not_make_a_text_column_drift():
    """Each text weighs one row in the word histogram: two 1 MB requests among 200 normal ones are no drift, a
    window of other words is."""
    from loopml.loop.drift import column_drift, column_reference

    rng = np.random.default_rng(0)
    common = [f"w{i}" for i in range(60)]
    normal = pd.Series([" ".join(rng.choice(common, 12)) for _ in range(600)])
    ref = column_reference(normal, "text")
    window = pd.Series([" ".join(rng.choice(common, 12)) for _ in range(200)])
    huge = " ".join(f"z{i}" for i in range(150_000))  # about 1 MB of words training never saw
    assert column_drift(pd.concat([window, pd.Series([huge, huge])], ignore_index=True), ref)["level"] == "ok"
    other = pd.Series([" ".join(rng.choice([f"v{i}" for i in range(60)], 12)) for _ in range(200)])
    assert column_drift(other, ref)["level"] != "ok"
