"""The table view and the boosted-tree learners (LightGBM, XGBoost, CatBoost) behind the Learner contract."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loopml.config import feature_config
from loopml.errors import LoopmlError
from loopml.features.pipeline import Preprocessor
from loopml.features.target import Target
from loopml.features.views import make_view
from loopml.learners import LEARNERS, Budget, FitData, Split, Task

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["lightgbm", "xgboost", "catboost"]
KINDS = ["binary", "category", "number"]
COLUMNS = {"x1": "number", "x2": "number", "color": "category", "flag": "binary"}


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.exponential(size=n)
    color = rng.choice(["red", "green", "blue", "grey"], size=n)
    flag = rng.choice(["yes", "no"], size=n)
    signal = 1.5 * x1 - x2 + (color == "red") * 1.5 - (color == "blue") + (flag == "yes") * 0.7
    df = pd.DataFrame({"x1": x1, "x2": x2, "color": color, "flag": flag})
    df["binary"] = np.where(signal + rng.normal(scale=0.3, size=n) > 0, "pos", "neg")
    df["category"] = np.digitize(signal, [-1.0, 0.5]).astype(str)
    df["number"] = 3.0 * signal + 10 + rng.normal(scale=0.3, size=n)
    df.loc[df.index[::11], "x1"] = np.nan  # missing numbers and categories are NaN codes in the view
    df.loc[df.index[::13], "color"] = None
    return df


def preprocessor(df: pd.DataFrame, kind: str) -> Preprocessor:
    pre = Preprocessor.create({c: feature_config(t) for c, t in COLUMNS.items()}, Target(kind, kind))
    pre.fit(df)
    return pre


def task(kind: str, **kw) -> Task:
    return Task(kind, {"binary": 2, "category": 3, "number": 0}[kind], **kw)


def params(name: str, **kw):
    cls = LEARNERS.get(name)
    return cls.Params(**{"n_estimators": 150, "learning_rate": 0.15, "early_stopping_rounds": 20, **kw})


@pytest.fixture(scope="module")
def data():
    df = frame(900)
    out = {}
    for kind in KINDS:
        train, val, test = df.iloc[:500], df.iloc[500:700], df.iloc[700:]
        pre = preprocessor(train, kind)
        split = {n: Split(make_view(pre, "table", d), pre.transform_target(d).numpy())
                 for n, d in (("train", train), ("val", val), ("test", test))}
        out[kind] = (pre, split)
    return out


@pytest.fixture(scope="module")
def fitted(data):
    models = {}
    for name in NAMES:
        for kind in KINDS:
            _, s = data[kind]
            learner = LEARNERS.get(name)(params(name), task(kind))
            models[name, kind] = learner.fit(FitData(s["train"], s["val"]), Budget())
    return models


def loss(kind: str, scores: np.ndarray, y: np.ndarray) -> float:
    if kind == "number":
        return float(np.mean((scores - y) ** 2))
    if kind == "binary":
        p = 1 / (1 + np.exp(-scores))
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    z = scores - scores.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(y)), y.astype(int)]))


def trivial(kind: str, train_y: np.ndarray, n: int) -> np.ndarray:
    """The best constant score from the training target: its mean / log prior."""
    if kind == "number":
        return np.full(n, train_y.mean())
    if kind == "binary":
        p = train_y.mean()
        return np.full(n, np.log(p / (1 - p)))
    prior = np.bincount(train_y.astype(int), minlength=3) / len(train_y)
    return np.tile(np.log(prior), (n, 1))


# -- the table view ------------------------------------------------------------------------------
def test_table_view_raw_numbers_codes_and_nan():
    df = frame(60)
    pre = preprocessor(df, "binary")
    view = make_view(pre, "table", df)
    assert view.columns == ["x1", "x2", "color", "flag"] and view.sources == view.columns
    vocab = pre.features["color"].state["vocab"]
    assert view.categorical == {2: len(vocab)}
    np.testing.assert_array_equal(view.x[:, 1], df["x2"].to_numpy())  # raw, no scaling
    assert np.isnan(view.x[::11, 0]).all()
    # a code is the index in the fitted vocabulary; missing follows the feature's policy (constant:
    # '<missing>' is a category of its own when frequent enough)
    assert [vocab[int(c)] for c in view.x[1:4, 2]] == df["color"].iloc[1:4].tolist()
    assert vocab[int(view.x[0, 2])] == "<missing>"
    np.testing.assert_array_equal(view.x[:, 3], (df["flag"] == "yes").to_numpy(dtype=float))
    unseen = make_view(pre, "table", df.head(3).assign(color=["purple", "red", None], flag=["maybe", None, "no"]))
    assert np.isnan(unseen.x[0, 2]) and vocab[int(unseen.x[1, 2])] == "red"
    assert np.isnan(unseen.x[:2, 3]).all() and unseen.x[2, 3] == 0.0


def test_table_view_refuses_text_and_uses_a_feature_hook():
    df = frame(40).assign(note=lambda d: ["some words here"] * len(d))
    pre = Preprocessor.create({"x1": feature_config("number"), "note": feature_config("text")}, Target("binary", "binary"))
    pre.fit(df)
    with pytest.raises(LoopmlError, match="column 'note' is text"):
        make_view(pre, "table", df)
    pre.features["note"].table_columns = lambda col: {"length": col.str.len().to_numpy(), "one": np.ones(len(col))}
    view = make_view(pre, "table", df)
    assert view.columns == ["x1", "note.length", "note.one"] and view.sources == ["x1", "note", "note"]
    assert view.x[0, 1] == len("some words here") and view.categorical == {}


# -- the learners ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_learner_beats_trivial_baseline(fitted, data, name, kind):
    learner = fitted[name, kind]
    _, s = data[kind]
    scores = learner.predict_scores(s["test"].x)
    assert scores.shape == ((len(s["test"]), 3) if kind == "category" else (len(s["test"]),))
    baseline = loss(kind, trivial(kind, s["train"].y, len(s["test"])), s["test"].y)
    assert loss(kind, scores, s["test"].y) < 0.6 * baseline
    assert learner.info["best_iteration"] <= learner.info["iterations"] == len(learner.history)
    assert {"iteration", "train_loss", "val_loss"} <= set(learner.history[0])
    assert learner.info["stop_reason"] in {"early_stopping", "max_iterations"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_contributions_sum_to_raw_scores(fitted, data, name, kind):
    learner = fitted[name, kind]
    x = data[kind][1]["test"].x
    contrib = learner.contributions(x)
    width = len(x.columns) + 1
    assert contrib.shape == ((len(x), width, 3) if kind == "category" else (len(x), width))
    np.testing.assert_allclose(contrib.sum(axis=1), learner.predict_scores(x), rtol=1e-5, atol=1e-5)


def test_save_load_in_a_fresh_process_is_bit_identical(fitted, data, tmp_path):
    expected = {}
    for (name, kind), learner in fitted.items():
        folder = tmp_path / f"{name}-{kind}"
        learner.save(folder)
        assert not [p for p in folder.iterdir() if p.suffix in {".pkl", ".pickle", ".joblib"}]
        np.save(folder / "x.npy", data[kind][1]["test"].x.x)
        expected[folder.name] = learner.predict_scores(data[kind][1]["test"].x)
    script = f"""
import json, sys
from pathlib import Path
import numpy as np
from loopml.features.views import TableView
from loopml.learners import LEARNERS, Task
root = Path({str(tmp_path)!r})
for folder in sorted(p for p in root.iterdir() if p.is_dir()):
    name, kind = folder.name.split("-")
    meta = json.loads((folder / "learner.json").read_text())
    cat = {{int(i): n for i, n in meta["categorical"].items()}}
    cls = LEARNERS.get(name)
    learner = cls.load(folder, cls.Params(), Task(kind, meta["n_classes"]))
    x = TableView(np.load(folder / "x.npy"), meta["columns"], cat, meta["columns"])
    np.save(folder / "loaded.npy", learner.predict_scores(x))
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=120)
    for folder, scores in expected.items():
        np.testing.assert_array_equal(np.load(tmp_path / folder / "loaded.npy"), scores)
        meta = json.loads((tmp_path / folder / "learner.json").read_text())
        assert meta["history"] and meta["info"]["best_iteration"] >= 1


@pytest.mark.parametrize("name", NAMES)
def test_unseen_and_missing_category_at_predict(fitted, data, name):
    pre, s = data["binary"]
    learner = fitted[name, "binary"]
    rows = frame(4, seed=5).assign(color=["purple", None, "red", "  "], flag=["no", "yes", "perhaps", None])
    scores = learner.predict_scores(make_view(pre, "table", rows))
    assert scores.shape == (4,) and np.isfinite(scores).all()


@pytest.mark.parametrize("name", NAMES)
def test_time_budget_stops_training(name):
    df = frame(4000, seed=1)
    pre = preprocessor(df, "number")
    split = Split(make_view(pre, "table", df), pre.transform_target(df).numpy())
    # a tiny learning rate and no early stopping: only the budget can stop it before 100k rounds
    __import__(name)  # the library's first import (seconds) is not what this test measures
    learner = LEARNERS.get(name)(params(name, n_estimators=100_000, learning_rate=0.001, early_stopping_rounds=0),
                                 task("number"))
    started = time.monotonic()
    learner.fit(FitData(split, split), Budget(0.7))
    elapsed = time.monotonic() - started
    assert learner.info["stop_reason"] == "time_budget"
    assert 10 < learner.info["iterations"] == learner.info["best_iteration"] < 100_000  # no ES: all kept
    assert elapsed < 1.2, elapsed


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_model_and_class_weights_count(data, name):
    _, s = data["binary"]
    fit = FitData(s["train"], s["val"])

    def scores(**kw):
        return LEARNERS.get(name)(params(name), task("binary", **kw)).fit(fit, Budget()).predict_scores(s["test"].x)

    plain = scores()
    np.testing.assert_array_equal(plain, scores())
    # weighting the positive class 5x moves every row's score up on average
    assert scores(class_weights=(1.0, 5.0)).mean() > plain.mean() + 0.5


def test_other_columns_at_predict_are_refused(fitted, data):
    x = data["binary"][1]["test"].x
    renamed = type(x)(x.x, ["x1", "x2", "colour", "flag"], x.categorical, x.sources)
    with pytest.raises(LoopmlError, match="missing: color"):
        fitted["lightgbm", "binary"].predict_scores(renamed)


def test_refit_forgets_the_earlier_fit(data):
    _, s = data["binary"]
    learner = LEARNERS.get("lightgbm")(params("lightgbm"), task("binary"))
    learner.fit(FitData(s["train"], s["val"]), Budget())
    first = learner.predict_scores(s["test"].x)
    learner.fit(FitData(s["train"], s["val"]), Budget())
    np.testing.assert_array_equal(learner.predict_scores(s["test"].x), first)
    assert len(learner.history) == learner.info["iterations"]


@pytest.mark.parametrize("key", ["train_dir", "allow_writing_files", "output_model", "num_threads", "nthread",
                                 "seed", "objective", "loss_function", "device_type"])
def test_extra_cannot_set_files_threads_seeds_or_the_objective(key):
    from loopml.config import load_config
    from loopml.errors import LoopmlError

    with pytest.raises(LoopmlError, match="set by loopml itself"):
        load_config({"target": "y", "learner": {"type": "lightgbm", "extra": {key: "x"}}})


@pytest.mark.parametrize("name", ["lightgbm", "xgboost"])
def test_pairwise_features_learn_a_ratio_and_survive_save_load(name, tmp_path):
    from loopml.features.views import TableView
    from loopml.learners.trees import choose_pairs

    rng = np.random.default_rng(3)
    n = 1200
    x = np.column_stack([rng.uniform(1, 5, n), rng.uniform(1, 5, n), rng.normal(size=n), rng.integers(0, 3, n)])
    y = x[:, 0] / x[:, 1] + 0.05 * rng.normal(size=n)
    x[::17, 2] = np.nan
    views = [TableView(x[s], ["a", "b", "noise", "code"], {3: 3}, ["a", "b", "noise", "code"])
             for s in (slice(0, 800), slice(800, 1000), slice(1000, None))]
    splits = [Split(v, y[s]) for v, s in zip(views, (slice(0, 800), slice(800, 1000), slice(1000, None)), strict=True)]
    # the categorical column is never paired; the two that carry the target come first
    assert choose_pairs(splits[0], 2) == [(0, 1)]
    assert all(3 not in p for p in choose_pairs(splits[0], 3))
    errors = {}
    for k in (0, 2):
        learner = LEARNERS.get(name)(params(name, pairwise=k), task("number"))
        learner.fit(FitData(splits[0], splits[1]), Budget())
        scores = learner.predict_scores(views[2])
        errors[k] = float(np.nanmean((scores - splits[2].y) ** 2))
        contrib = learner.contributions(views[2])
        assert contrib.shape == (len(views[2]), 5)
        np.testing.assert_allclose(contrib.sum(axis=1), scores, rtol=1e-5, atol=1e-5)
    assert errors[2] < 0.8 * errors[0]
    learner.save(tmp_path)
    assert json.loads((tmp_path / "learner.json").read_text())["pairs"] == [[0, 1]]
    cls = LEARNERS.get(name)
    again = cls.load(tmp_path, cls.Params(pairwise=2), task("number"))
    np.testing.assert_array_equal(again.predict_scores(views[2]), learner.predict_scores(views[2]))
