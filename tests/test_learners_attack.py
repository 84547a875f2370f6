"""Attacks on the learners from a user's side: bad library parameters, extreme targets."""

import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.config import feature_config
from loopml.errors import LoopmlError
from loopml.features.pipeline import Preprocessor
from loopml.features.target import Target
from loopml.features.views import make_view
from loopml.learners import LEARNERS, Budget, FitData, Split, Task


def _fit_data(n: int = 120) -> FitData:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=n), "c": rng.choice(["a", "b"], size=n)})
    df["binary"] = np.where(df["x"] > 0, "p", "q")
    pre = Preprocessor.create({"x": feature_config("number"), "c": feature_config("category")},
                              Target("binary", "binary"))
    train, val = df.iloc[: int(0.8 * n)], df.iloc[int(0.8 * n):]
    pre.fit(train)
    return FitData(*(Split(make_view(pre, "table", d), pre.transform_target(d).numpy()) for d in (train, val)))


def _fit(name: str, extra: dict) -> None:
    cls = LEARNERS.get(name)
    params = cls.Params(n_estimators=5, extra=extra)
    cls(params, Task("binary", 2)).fit(_fit_data(), Budget())


@pytest.mark.parametrize("name, extra, message", [
    ("lightgbm", {"num_leafs": 8}, "unknown lightgbm parameter 'num_leafs' (did you mean 'num_leaf"),
    ("xgboost", {"max_dept": 3}, "unknown xgboost parameter 'max_dept' (did you mean 'max_depth'?)"),
    # an alias of a name loopml sets must not slip past the check on the canonical names
    ("lightgbm", {"application": "regression"}, "'application' (lightgbm's 'objective') is set by loopml"),
    ("lightgbm", {"random_state": 3}, "lightgbm's 'seed'"),
])
def test_extra_unknown_or_managed_names_are_refused(name, extra, message):
    with pytest.raises(LoopmlError) as info:
        _fit(name, extra)
    assert message in str(info.value)


@pytest.mark.parametrize("name, extra", [
    ("lightgbm", {"num_leaves": -5}), ("xgboost", {"eta": -1.0}), ("catboost", {"depth": 100}),
    ("catboost", {"dpth": 4}),
])
def test_extra_values_the_library_refuses_are_input_errors(name, extra):
    """A library error caused by ``extra`` is one line naming it (CLI exit 2), not an internal error."""
    with pytest.raises(LoopmlError, match=f"learner.extra .*{name} refused it") as info:
        _fit(name, extra)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, extra", [("lightgbm", {"extra_trees": True}), ("xgboost", {"scale_pos_weight": 2.0})])
def test_extra_known_names_still_train(name, extra):
    _fit(name, extra)


def test_regression_target_near_the_float32_limit_trains_and_reports(tmp_path):
    """Targets up to ±3.4e38 are accepted: the residuals and rounding must not overflow to inf."""
    rng = np.random.default_rng(0)
    n = 200
    x = rng.normal(size=(n, 2))
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": x[:, 0] * 1e30 + x[:, 1] * 3e37})
    model = loopml.Model(target="y", learner={"type": "lightgbm", "n_estimators": 30})
    model.fit(df)
    assert np.isfinite(model.metrics["test"]["r2"])
    model.report(tmp_path / "report.html")  # the residuals histogram: inf here before
    assert (tmp_path / "report.html").stat().st_size > 0


def test_class_weights_with_integer_class_keys_from_yaml(tmp_path):
    """``class_weights: {0: 1, 1: 5}`` in YAML has int keys: they name the classes 0 and 1."""
    from loopml.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("target: {column: y, class_weights: {0: 1, 1: 5}}\nlearner: lightgbm\n")
    assert load_config(path).target.class_weights == {"0": 1.0, "1": 5.0}
    path.write_text("target: {column: y, class_weights: {0: 1, 2: 5}}\n")
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=60), "y": rng.integers(0, 2, size=60)})
    with pytest.raises(LoopmlError, match="unknown class '2'"):
        loopml.Model(str(path)).fit(df)


def test_folder_layout_with_a_config_without_target_reads_label(tmp_path, capsys):
    """``train -d root/ -c cfg.yaml`` (no target in cfg) takes ``label`` as without a config, so the real
    problem is reported: a tree learner cannot take the image column."""
    from PIL import Image

    from loopml.cli import main

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "root" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray((rng.random((4, 4, 3)) * 255).astype("uint8")).save(tmp_path / "root" / name / f"{i}.png")
    (tmp_path / "c.yaml").write_text("learner: lightgbm\n")
    code = main(["train", "-d", str(tmp_path / "root"), "-c", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "m"),
                 "--no-track", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "column 'image' is image; learner lightgbm cannot take image columns" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("learner", [
    {"type": "bagged", "member": {"type": "lightgbm", "num_leafs": 3}},
    {"type": "ensemble", "members": [{"type": "lightgbm", "num_leafs": 3}]},
    {"type": "automl", "members": {"lightgbm": {"num_leafs": 3}}},
])
def test_unknown_keys_inside_member_sections_name_the_nearest(learner):
    from loopml.config import load_config

    with pytest.raises(LoopmlError, match=r"member lightgbm: unknown config key 'num_leafs' \(did you mean 'num_leaves'\?\)"):
        load_config({"target": {"column": "y"}, "learner": learner})


def test_automl_member_section_without_type_is_the_learner_it_names():
    from loopml.config import load_config

    config = load_config({"target": {"column": "y"}, "learner": {"type": "automl", "members": {"lightgbm": {"num_leaves": 7}}}})
    assert config.learner.members["lightgbm"]["type"] == "lightgbm"
    assert config.learner.members["lightgbm"]["num_leaves"] == 7


def test_binary_decode_of_huge_logits_is_exact_and_silent():
    """A linear model's logits can be ±thousands: the probabilities are 0/1 without an overflow warning."""
    import warnings

    target = Target("y", "binary", {"classes": ["a", "b"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels, proba = target.decode(np.array([[-2000.0], [0.0], [3000.0]]))
    assert labels.tolist() == ["a", "a", "b"] and proba.tolist() == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
