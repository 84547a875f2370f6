"""``start: warm`` for LightGBM: boosting continues from the champion's trees on its preprocessing."""

import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.loop.policy import load_policy
from loopml.loop.retrain import retrain
from loopml.registry import Store

pytest.importorskip("lightgbm")

LEARNER = {"type": "lightgbm", "n_estimators": 40, "learning_rate": 0.2, "early_stopping_rounds": 0}
POLICY = {"start": "warm", "trigger": {"min_feedback": 50}, "data": {"feedback_weight": 2, "min_holdout": 20},
          "gate": {"metric": "r2", "margin": 0.0, "max_test_regression": 1.0}}


def make(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(shift, 1.0, n), rng.normal(size=n)
    kind = rng.choice(["x", "y", "z"], size=n)
    return pd.DataFrame({"a": a, "b": b, "kind": kind,
                         "y": 3 * a + b + np.where(kind == "x", 2.0, 0.0) + rng.normal(0, 0.1, n)})


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm_lgbm")
    make(300, 0).to_csv(root / "train.csv", index=False)  # from a file: a retrain re-reads the champion's rows
    model = loopml.Model(target="y", learner=LEARNER, training={"seed": 0}).fit(root / "train.csv", progress=False,
                                                                                 cache_dir=False)
    return model, model.save(root / "v1")


def test_warm_fit_keeps_the_champions_trees_and_preprocessing_and_saves_as_text(champion, tmp_path):
    model, _ = champion
    shifted = make(200, 1, shift=2.0)  # other a values: refitted preprocessing would standardise them differently
    warm = loopml.Model(model.config).fit(shifted, warm_start=model, progress=False, cache_dir=False)
    assert warm.preprocessor.to_dict() == model.preprocessor.to_dict()
    x = warm.inputs(shifted).x
    rounds = model.learner.model.current_iteration()
    first = warm.learner.model.predict(x, raw_score=True, num_iteration=rounds)
    assert np.allclose(first, model.learner.model.predict(x, raw_score=True))  # the champion's trees come first
    assert warm.learner.model.current_iteration() == rounds + 40 == warm.learner.info["rounds"]
    assert warm.learner.info["warm_start_rounds"] == rounds
    assert warm.evaluate(shifted)["r2"] > model.evaluate(shifted)["r2"] + 0.05  # the new rounds learned the shift
    path = warm.save(tmp_path / "warm")
    assert (path / "learner" / "lightgbm.txt").read_text().startswith("tree") if (path / "learner").is_dir() else True
    assert not list(path.rglob("*.pkl")) and not list(path.rglob("*.pickle"))
    loaded = loopml.load(path)
    assert np.allclose(loaded.predict(shifted), warm.predict(shifted))


def test_warm_start_refuses_another_learner(champion):
    model, _ = champion
    cfg = model.config.model_dump(mode="json")
    cfg["learner"] = {"type": "network"}
    with pytest.raises(loopml.LoopmlError, match="warm start is for network and lightgbm models"):
        loopml.Model(cfg).fit(make(100, 2), warm_start=model, progress=False, cache_dir=False)


def test_two_warm_retrains_in_a_row_grow_the_booster_and_record_it(champion, tmp_path):
    model, path = champion
    store = Store(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    store.register("reg", path=path)
    store.promote("reg", 1)
    rounds = [model.learner.model.current_iteration()]
    for turn in range(2):
        for row in make(80, 10 + turn, shift=2.0).to_dict("records"):
            label = row.pop("y")
            store.add_feedback("reg", label, inputs=row)
        decision = retrain(store, "reg", load_policy(POLICY), reason=f"turn {turn}")
        version = decision["candidate_version"]
        lineage = store.get_version("reg", version)["lineage"]
        candidate = loopml.load(store.resolve(f"reg:{version}")["path"])
        assert lineage["start"] == "warm" and lineage["learner"] == "lightgbm"
        assert candidate.learner.model.current_iteration() == rounds[-1] + 40
        assert lineage["rounds"] == {"champion": rounds[-1], "total": rounds[-1] + 40}
        assert candidate.preprocessor.to_dict() == model.preprocessor.to_dict()
        assert np.isfinite(candidate.predict(make(20, 99))).all()
        rounds.append(candidate.learner.model.current_iteration())
        if not decision["promoted"]:
            store.promote("reg", version)
    assert rounds == [rounds[0], rounds[0] + 40, rounds[0] + 80]
