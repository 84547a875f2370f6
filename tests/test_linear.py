"""The sparse view (TF-IDF + one-hot + standardised numbers) and the linear learners."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from loopml.config import feature_config
from loopml.errors import LoopmlError
from loopml.features.pipeline import Preprocessor
from loopml.features.sparse_view import sparse_columns
from loopml.features.target import Target
from loopml.features.views import fit_view, make_view
from loopml.learners import LEARNERS, Budget, FitData, Split, Task

TOPICS = {
    "sport": ["goal", "match", "team", "league", "coach", "striker"],
    "money": ["bank", "shares", "market", "profit", "stocks", "rates"],
    "tech": ["software", "chip", "robot", "laptop", "network", "code"],
}
FILLER = ["the", "a", "today", "new", "report", "says", "after", "week"]


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    topics = rng.choice(list(TOPICS), size=n)
    texts = [" ".join(rng.choice(TOPICS[t], 3).tolist() + rng.choice(FILLER, 4).tolist()) for t in topics]
    size = rng.normal(size=n)
    size[::17] = np.nan
    return pd.DataFrame({
        "text": texts,
        "size": size,
        "city": rng.choice(["paris", "rome", "oslo"], size=n),
        "flag": rng.choice(["yes", "no"], size=n),
        "topic": topics,
        "spam": (topics == "money").astype(int),
        "value": np.nan_to_num(size) * 0.5 + (topics == "tech") * 2.0 + rng.normal(scale=0.1, size=n),
    })


def _prepared(df: pd.DataFrame, target: str, kind: str) -> Preprocessor:
    configs = {c: feature_config(t, {"type": t}) for c, t in
               [("text", "text"), ("size", "number"), ("city", "category"), ("flag", "binary")]}
    pre = Preprocessor.create(configs, Target(target, kind))
    pre.fit(df)
    fit_view(pre, "sparse", df)
    return pre


def _fit(kind: str, model: str = "svm", n: int = 240):
    target = {"binary": "spam", "category": "topic", "number": "value"}[kind]
    df = _frame(n)
    train, val, test = df.iloc[: n // 2], df.iloc[n // 2: 3 * n // 4], df.iloc[3 * n // 4:]
    pre = _prepared(train, target, kind)
    split = {name: Split(make_view(pre, "sparse", part), pre.transform_target(part).numpy())
             for name, part in [("train", train), ("val", val), ("test", test)]}
    task = Task(kind, {"binary": 2, "category": 3, "number": 0}[kind])
    cls = LEARNERS.get("linear")
    learner = cls(cls.Params(model=model), task).fit(FitData(split["train"], split["val"]), Budget())
    return pre, learner, split, test, task


@pytest.mark.parametrize("kind,model", [("binary", "svm"), ("binary", "logistic"), ("category", "svm"),
                                        ("category", "logistic"), ("number", "svm")])
def test_learns_each_kind(kind, model):
    _, learner, split, _, _ = _fit(kind, model)
    scores = learner.predict_scores(split["test"].x)
    y = split["test"].y
    if kind == "binary":
        assert scores.shape == (len(y),) and ((scores > 0) == (y > 0.5)).mean() > 0.95
    elif kind == "category":
        assert scores.shape == (len(y), 3) and (scores.argmax(1) == y).mean() > 0.95
    else:
        assert scores.shape == (len(y),) and np.corrcoef(scores, y)[0, 1] > 0.95
    assert learner.info["seconds"] >= 0 and learner.info["model"] == ("ridge" if kind == "number" else model)
    if model == "svm" and kind != "number":
        assert learner.calibration["a"] != 1.0  # Platt scaling was fitted on the validation split


def test_view_blocks_and_columns():
    pre = _prepared(_frame(120), "spam", "binary")
    view = make_view(pre, "sparse", _frame(30, seed=1))
    names = sparse_columns(pre)
    assert view.x.dtype == np.float32 and view.x.shape == (30, len(names))
    assert [b[0] for b in view.blocks] == ["text", "size", "city", "flag"]
    assert view.blocks[-1][2] == view.x.shape[1]
    blocks = {name: (lo, hi) for name, lo, hi in view.blocks}
    assert blocks["size"][1] - blocks["size"][0] == 2  # the value and its missing indicator
    assert blocks["city"][1] - blocks["city"][0] == 4  # unknown + 3 cities
    lo, hi = blocks["city"]
    assert np.allclose(view.x[:, lo:hi].sum(axis=1), 1.0)  # one-hot
    size = _frame(30, seed=1)["size"].to_numpy()
    assert np.all(view.x[np.isnan(size), blocks["size"][0]].toarray() == 0.0)
    lo, hi = blocks["text"]
    norms = np.sqrt(view.x[:, lo:hi].multiply(view.x[:, lo:hi]).sum(axis=1))
    assert np.allclose(norms, np.sqrt(2.0), atol=1e-5)  # word and char halves each l2-normalised


def test_json_round_trip_rebuilds_the_identical_matrix():
    df = _frame(120)
    pre = _prepared(df, "topic", "category")
    train_view = make_view(pre, "sparse", df).x  # from the counts kept by the fit
    state = pre.features["text"].state["sparse"]
    assert state["word"]["terms"] and len(state["word"]["terms"]) == len(state["word"]["idf"])
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    new = _frame(40, seed=3)
    a, b = make_view(pre, "sparse", new).x, make_view(again, "sparse", new).x
    assert (a != b).nnz == 0 and a.shape == b.shape
    assert (train_view != make_view(again, "sparse", df).x).nnz == 0  # counted afresh after the round trip
    # one row at a time (a server) gives the rows of the batch
    one = make_view(again, "sparse", new.iloc[[5]]).x
    assert (one != a[5]).nnz == 0


def test_unseen_words_empty_and_missing_text():
    pre = _prepared(_frame(120), "spam", "binary")
    rows = pd.DataFrame({"text": ["zzqx wvvk", "", None, float("nan"), "   "], "size": [1.0] * 5,
                         "city": ["paris"] * 5, "flag": ["yes"] * 5, "spam": [0] * 5})
    view = make_view(pre, "sparse", rows)
    lo, hi = dict((n, (a, b)) for n, a, b in view.blocks)["text"]
    text = view.x[:, lo:hi].toarray()
    assert np.all(np.isfinite(text)) and np.all(text[1:] == 0.0)
    assert text[0, : len(pre.features["text"].state["sparse"]["word"]["terms"])].sum() == 0.0  # no word known


def test_tiny_and_empty_training_text_still_fits():
    df = pd.DataFrame({"text": ["", "", None], "size": [1.0, 2.0, 3.0], "city": ["a", "b", "a"],
                       "flag": ["y", "n", "y"], "spam": [0, 1, 0]})
    pre = _prepared(df, "spam", "binary")
    view = make_view(pre, "sparse", df)
    assert dict((n, b - a) for n, a, b in view.blocks)["text"] == 0


def test_image_column_is_refused_by_name():
    pre = Preprocessor.create({"pic": feature_config("image", {"type": "image"})}, Target("y", "binary"))
    with pytest.raises(LoopmlError, match="'pic'"):
        fit_view(pre, "sparse", pd.DataFrame({"pic": ["a.png"], "y": [1]}))


def test_class_weights_and_budget_and_reset():
    _, learner, split, _, _ = _fit("binary", "logistic")
    cls = LEARNERS.get("linear")
    weighted = cls(cls.Params(model="logistic", max_iter=50), Task("binary", 2, class_weights=(1.0, 5.0)))
    weighted.fit(FitData(split["train"], split["val"]), Budget(0.001))
    assert weighted.info["max_iter"] == 10  # a tiny budget caps the iterations
    assert weighted.predict_scores(split["test"].x).mean() > learner.predict_scores(split["test"].x).mean()
    weighted.fit(FitData(split["train"], split["val"]), Budget())
    assert weighted.info["max_iter"] == 50  # a new fit starts from nothing: nothing kept from the last


def test_contributions_sum_to_the_scores():
    for kind in ("binary", "category"):
        _, learner, split, _, _ = _fit(kind)
        x = split["test"].x.rows(np.arange(4))
        contrib = learner.contributions(x)
        scores = learner.predict_scores(x)
        assert contrib.shape == (4, x.x.shape[1] + 1)
        top = scores if kind == "binary" else scores.max(axis=1)
        assert np.allclose(contrib.sum(axis=1), top)


def test_view_width_mismatch_and_one_class_are_errors():
    _, learner, split, _, _ = _fit("binary")
    with pytest.raises(LoopmlError, match="columns"):
        learner.predict_scores(split["test"].x.x[:, :5])
    cls = LEARNERS.get("linear")
    one = Split(split["train"].x, np.zeros(len(split["train"])))
    with pytest.raises(LoopmlError, match="one class"):
        cls(cls.Params(), Task("binary", 2)).fit(FitData(one, split["val"]), Budget())


_RELOAD = """
import json, sys
from pathlib import Path
import numpy as np, pandas as pd
from loopml.features.pipeline import Preprocessor
from loopml.features.views import make_view
from loopml.learners import LEARNERS, Task
cls = LEARNERS.get('linear')
for arg in sys.argv[1:]:
    folder, kind, n_classes = arg.split(',')
    folder = Path(folder)
    pre = Preprocessor.from_dict(json.loads((folder / 'preprocessing.json').read_text()))
    rows = pd.read_json(folder / 'rows.json', orient='records', dtype=False)
    learner = cls.load(folder / 'model', cls.Params(), Task(kind, int(n_classes)))
    np.save(folder / 'scores.npy', learner.predict_scores(make_view(pre, 'sparse', rows)))
"""


def test_fresh_process_load_is_bit_identical(tmp_path):
    expected, args = {}, []
    for kind in ("binary", "category", "number"):
        pre, learner, _, test, task = _fit(kind)
        folder = tmp_path / kind
        learner.save(folder / "model")
        assert sorted(p.name for p in (folder / "model").iterdir()) == ["linear.json", "linear.safetensors"]
        (folder / "preprocessing.json").write_text(json.dumps(pre.to_dict()))
        test.to_json(folder / "rows.json", orient="records")
        rows = pd.read_json(folder / "rows.json", orient="records", dtype=False)
        expected[kind] = learner.predict_scores(make_view(pre, "sparse", rows))
        args.append(f"{folder},{kind},{task.n_classes}")
    subprocess.run([sys.executable, "-c", _RELOAD, *args], check=True)
    for kind, scores in expected.items():
        got = np.load(tmp_path / kind / "scores.npy")
        assert got.dtype == np.float64 and np.array_equal(got, scores), kind


def test_text_block_is_sklearns_tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer

    df = _frame(120)
    pre = _prepared(df, "spam", "binary")
    new = _frame(20, seed=4)
    view = make_view(pre, "sparse", new)
    lo, hi = dict((n, (a, b)) for n, a, b in view.blocks)["text"]
    vecs = [TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)]
    for vec in vecs:
        vec.fit(df["text"])
    expected = np.hstack([vec.transform(new["text"]).toarray() for vec in vecs])
    assert expected.shape == (20, hi - lo)
    assert np.allclose(view.x[:, lo:hi].toarray(), expected, atol=1e-5)


@pytest.mark.parametrize("model", ["svm", "logistic"])
def test_a_class_absent_from_training_is_never_predicted(model):
    _, _, split, _, _ = _fit("category", model)
    cls = LEARNERS.get("linear")
    learner = cls(cls.Params(model=model), Task("category", 4)).fit(FitData(split["train"], split["val"]), Budget())
    scores = learner.predict_scores(split["test"].x)
    assert scores.shape[1] == 4 and not np.any(scores.argmax(1) == 3)
    assert (scores.argmax(1) == split["test"].y).mean() > 0.95
