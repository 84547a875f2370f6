"""Everything after training works for a learner that is not the network: serve (native runner),
importance and per-row attributions, the report (learner, curves, leaderboard), cv and retrain."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.errors import LoopmlError
from loopml.learners import LEARNERS

pytestmark = pytest.mark.skipif("lightgbm" not in LEARNERS, reason="the lightgbm learner is not registered")

LGBM = {"type": "lightgbm", "n_estimators": 60}


def make(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "blue", "green"], size=n)
    score = 2 * x1 - 0.5 * x2 + np.where(color == "red", 1.0, 0.0) + rng.normal(scale=0.3, size=n)
    return pd.DataFrame({"x1": x1, "x2": x2, "color": color, "flag": rng.choice(["y", "n"], size=n),
                         "label": np.where(score > 0, "yes", "no")})


def _learner_params() -> dict:
    # only the settings this lightgbm learner has (a few rounds keep the tests fast)
    fields = LEARNERS.get("lightgbm").Params.model_fields
    return {k: v for k, v in LGBM.items() if k == "type" or k in fields}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lgbm")
    data = root / "train.csv"
    make(400, 0).to_csv(data, index=False)
    model = loopml.Model(target="label", learner=_learner_params()).fit(data, progress=False, cache_dir=False)
    return model, model.save(root / "model"), root


def test_a_lightgbm_model_is_no_network(trained):
    model, path, _ = trained
    loaded = loopml.load(path)
    assert model.network is None and loaded.network is None
    assert loaded.learner.registered_name == "lightgbm"
    frame = make(50, 1)
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))


def test_serving_a_lightgbm_model_answers_its_predictions(trained):
    """The native runner behind the real app: the same answers as ``Model.predictions``, bad input refused."""
    from fastapi.testclient import TestClient

    from loopml.serve.app import ServeSettings, create_app

    _, path, root = trained
    loaded = loopml.load(path)
    frame = make(40, 2).drop(columns=["label"])
    expected = loaded.predictions(frame)
    settings = ServeSettings(model=str(path), store=f"sqlite:///{root / 'serve.db'}", monitor_interval_s=0,
                             log_durability="none")
    with TestClient(create_app(settings)) as c:
        name = c.get("/v1/models").json()[0]["name"]
        assert c.get("/v1/models").json()[0]["backend"] == "native"
        r = c.post(f"/v1/models/{name}/predict", json=frame.to_dict(orient="records"))
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]
        assert [p["prediction"] for p in got] == expected["label_prediction"].tolist()
        for cls in ("no", "yes"):
            np.testing.assert_allclose([p["probabilities"][cls] for p in got], expected[f"label_probability_{cls}"],
                                       rtol=1e-6, atol=1e-9)
        bad = c.post(f"/v1/models/{name}/predict", json={"x1": 1.0, "x2": 0.0, "color": "red", "flag": "maybe"})
        assert bad.status_code == 422 and "flag" in bad.text
    with pytest.raises(LoopmlError, match="lightgbm learner does not convert to ONNX"):
        create_app(settings.model_copy(update={"backend": "onnx"}))


def test_runner_registry_and_finite_checks(trained):
    from loopml.serve.runner import RUNNERS, make_runner

    model, _, _ = trained
    assert {"torch", "onnx", "native"} <= set(RUNNERS.names())
    runner = make_runner(model, "auto", threads=1)
    assert runner.backend == "native"
    with pytest.raises(LoopmlError, match="record 0: x1: the value is out of range"):
        runner.predict([{"x1": float("inf"), "x2": 0.0, "color": "red", "flag": "y"}])
    with pytest.raises(LoopmlError, match="unknown serving backend 'tensorrt'"):
        make_runner(model, "tensorrt")
    missing = runner.predict([{"x1": None, "x2": None, "color": None, "flag": None}])  # NaN is the trees' missing
    assert missing[0]["prediction"] in ("yes", "no")


def test_importance_and_attributions_for_lightgbm(trained):
    model, path, _ = trained
    stored = [f["feature"] for f in model.evaluation["importance"]["features"]]
    assert stored[0] == "x1"
    loaded = loopml.load(path)
    frame = make(300, 3)
    imp = loaded.feature_importance(frame, repeats=3)
    assert imp["features"][0]["feature"] == "x1" and imp["features"][0]["mean"] > 0.1
    assert {f["feature"] for f in imp["features"]} == {"x1", "x2", "color", "flag"}
    rows = loaded.explain(frame, [0, 1, 2])
    scores = np.asarray(loaded.scores(frame.iloc[[0, 1, 2]]))
    for row, score in zip(rows, scores, strict=True):
        assert row["method"] == "contributions" and set(row["features"]) == {"x1", "x2", "color", "flag"}
        sign = 1.0 if row["prediction"] == "yes" else -1.0  # attributions point towards the predicted class
        assert sign * (sum(row["features"].values()) + row["bias"]) == pytest.approx(score, abs=1e-6)


def test_view_permutation_equals_permuting_the_raw_column(trained):
    """Shuffling a feature's view columns is the same as shuffling the raw column and recomputing the view."""
    from loopml.evaluate.explain import _feature_slots, _permuted, learner_inputs

    model, _, _ = trained
    frame = make(60, 4).drop(columns=["label"])
    view = learner_inputs(model.learner, model.preprocessor, frame)
    order = np.random.default_rng(0).permutation(len(frame))
    for column in ("x1", "color"):
        shuffled = frame.copy()
        shuffled[column] = frame[column].to_numpy()[order]
        expected = learner_inputs(model.learner, model.preprocessor, shuffled)
        got = _permuted(view, _feature_slots(view)[column], order)
        np.testing.assert_array_equal(got.x, expected.x)


def test_a_learner_without_attributions_is_a_clear_error(trained):
    from loopml.evaluate.explain import explain_any

    model, _, _ = trained
    learner = SimpleNamespace(view="table", params=None, registered_name="opaque", contributions=lambda x: None,
                              predict_scores=model.learner.predict_scores)
    stub = SimpleNamespace(network=None, learner=learner, preprocessor=model.preprocessor)
    with pytest.raises(LoopmlError, match="the opaque learner gives no per-row attributions"):
        explain_any(stub, make(5, 5))


def test_report_shows_the_learner_its_curve_and_a_leaderboard(trained, tmp_path):
    _, path, _ = trained
    loaded = loopml.load(path)
    loaded.info["leaderboard"] = [
        {"learner": "lightgbm", "params": {"num_leaves": 31}, "val_score": 0.31, "fit_seconds": 0.4,
         "predict_seconds_per_row": 2e-6},
        {"learner": "xgboost", "params": {"max_depth": 6}, "val_score": 0.33, "fit_seconds": 0.6,
         "predict_seconds_per_row": 3e-6}]
    out = loaded.report(tmp_path / "r.html")
    text = out.read_text()
    assert 'id="learner"' in text and "<b>lightgbm</b>" in text and 'id="leaderboard"' in text
    assert "xgboost" in text and "predict_seconds_per_row" in text
    assert (tmp_path / "r-figures" / "learner_curve.png").is_file()  # validation loss per boosting round
    assert 'id="importance"' in text


def test_cv_with_lightgbm():
    from loopml.cv import cross_validate

    result = cross_validate({"target": "label", "learner": _learner_params()}, make(300, 6), folds=3)
    assert result["learner"] == "lightgbm" and len(result["folds"]) == 3
    assert result["mean"]["accuracy"] > 0.8 and all(f["epochs"] for f in result["folds"])


def test_retrain_keeps_the_champions_learner(trained, tmp_path):
    from loopml.loop.policy import load_policy
    from loopml.loop.retrain import retrain
    from loopml.registry import Store

    _, path, _ = trained
    store = Store(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    store.register("clf", path=path)
    store.promote("clf", 1)
    for row in make(120, 7).to_dict("records"):
        label = row.pop("label")
        store.add_feedback("clf", label, inputs=row)
    policy = load_policy({"start": "warm", "data": {"min_holdout": 20}, "gate": {"margin": 0.0}})
    decision = retrain(store, "clf", policy, reason="test")
    version = store.get_version("clf", decision["candidate_version"])
    candidate = loopml.load(store.resolve(f"clf:{decision['candidate_version']}")["path"])
    assert candidate.learner.registered_name == "lightgbm" and candidate.network is None
    assert version["lineage"]["learner"] == "lightgbm" and version["lineage"]["start"] == "scratch"


def test_an_automl_champion_retrains_with_its_choice():
    from loopml.loop.policy import load_policy
    from loopml.loop.retrain import candidate_config

    config = loopml.Model(target="label").config
    dumped = {**config.model_dump(mode="json"), "learner": {"type": "automl"}, "automl": {"time_budget": 30.0}}
    board = [{"learner": "lightgbm", "params": {"type": "lightgbm"}, "val_score": 0.3}]
    automl = SimpleNamespace(config=SimpleNamespace(model_dump=lambda mode=None: dumped),
                             learner=SimpleNamespace(info={"leaderboard": board}), info={})
    out, note = candidate_config(automl, load_policy(None))
    assert out["learner"] == {"type": "lightgbm"} and out["automl"]["time_budget"] is None and "lightgbm" in note
    plain = SimpleNamespace(config=config, learner=None, info={})
    assert candidate_config(plain, load_policy(None))[0]["learner"]["type"] == "network"
    if "automl" in LEARNERS:
        with pytest.raises(LoopmlError, match="needs a time budget"):
            candidate_config(plain, load_policy({"learner": "automl"}))


def test_a_multi_view_learner_serves_ranks_and_explains():
    """A bagged learner reads a dict of views: the runner, importance and attributions follow it."""
    from loopml.serve.runner import make_runner

    model = loopml.Model(target="label", learner={"type": "bagged", "member": _learner_params(), "folds": 2}).fit(
        make(300, 8), progress=False, cache_dir=False)
    frame = make(60, 9)
    runner = make_runner(model, "torch", threads=1)
    answers = runner.predict(frame.drop(columns=["label"]).to_dict(orient="records"))
    assert runner.backend == "native" and [a["prediction"] for a in answers] == list(model.predict(frame))
    assert model.evaluation["importance"]["features"][0]["feature"] == "x1"
    rows = model.explain(frame, [0, 1])
    assert rows[0]["method"] == "contributions" and max(rows[0]["features"], key=lambda c: abs(rows[0]["features"][c])) == "x1"
