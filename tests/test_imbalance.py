"""Class imbalance: resampling the training split and the tuned decision threshold."""

import numpy as np
import pandas as pd
import pytest
import torch

import loopml
from loopml.errors import LoopmlError
from loopml.evaluate.threshold import threshold_curve, tune_threshold
from loopml.train.sampling import resample
from loopml.train.trainer import TensorData


def _skewed(n_major=200, n_minor=20):
    g = torch.Generator().manual_seed(0)
    n = n_major + n_minor
    return TensorData(
        {"num": torch.randn(n, 3, generator=g), "cat": torch.randint(1, 5, (n,), generator=g),
         "text": torch.randint(1, 50, (n, 6), generator=g)},
        torch.cat([torch.zeros(n_major), torch.ones(n_minor)]),
    )


def test_random_over_and_undersampling_work_on_any_feature_type():
    data = _skewed()
    over = resample(data, "oversample", 1.0, 0, {"num": "number", "cat": "category", "text": "text"})
    assert np.bincount(over.target.long().numpy()).tolist() == [200, 200]
    assert over.inputs["text"].shape == (400, 6) and over.inputs["text"].dtype == torch.int64
    half = resample(data, "oversample", 0.5, 0, {"num": "number", "cat": "category", "text": "text"})
    assert np.bincount(half.target.long().numpy()).tolist() == [200, 100]
    under = resample(data, "undersample", 1.0, 0, {"num": "number", "cat": "category", "text": "text"})
    assert np.bincount(under.target.long().numpy()).tolist() == [20, 20]
    # rows stay whole: every resampled row is one of the originals
    originals = {tuple(r.tolist()) for r in data.inputs["num"]}
    assert all(tuple(r.tolist()) in originals for r in under.inputs["num"])


def test_smote_makes_new_rows_and_keeps_categories_valid():
    data = _skewed()
    tabular = TensorData({k: v for k, v in data.inputs.items() if k != "text"}, data.target)
    out = resample(tabular, "smote", 1.0, 0, {"num": "number", "cat": "category"})
    assert np.bincount(out.target.long().numpy()).tolist() == [200, 200]
    originals = {tuple(r.tolist()) for r in data.inputs["num"]}
    assert sum(tuple(r.tolist()) not in originals for r in out.inputs["num"]) == 180  # interpolated, not copied
    assert out.inputs["cat"].dtype == torch.int64 and set(out.inputs["cat"].tolist()) <= set(range(1, 5))
    with pytest.raises(LoopmlError, match="column 'text' is text"):
        resample(data, "smote", 1.0, 0, {"num": "number", "cat": "category", "text": "text"})


def test_threshold_curve_and_tuning():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.35, 0.3, 0.6, 0.9])
    t, f1 = threshold_curve(y, p, "f1")
    assert f1[np.searchsorted(t, 0.5)] == pytest.approx(0.8)  # 2 of 3 positives, no false positive
    assert tune_threshold(y, p, "f1") == pytest.approx(0.3)  # all 3 positives, one false positive: F1 6/7
    assert tune_threshold(y, p, "precision") >= 0.36


def _imbalanced(seed=0, n=1200):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    logit = 2.5 * x[:, 0] + x[:, 1] - 3.2
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": np.where(y, "rare", "common")})


def test_auto_threshold_is_tuned_saved_and_used_at_predict(tmp_path):
    df = _imbalanced()
    model = loopml.Model({"target": {"column": "y", "threshold": "auto"}, "training": {"epochs": 20}}).fit(df, progress=False)
    threshold = model.preprocessor.target.state["threshold"]
    assert 0 < threshold < 0.5  # a rare positive class: the F1-optimal threshold is below 0.5
    assert model.metrics["test"]["threshold"] == threshold
    proba = model.predict_proba(df)["rare"].to_numpy()
    expected = np.where(proba >= threshold, "rare", "common")
    assert (model.predict(df) == expected).all()
    model.save(tmp_path / "m")
    again = loopml.load(tmp_path / "m")
    assert again.preprocessor.target.state["threshold"] == threshold
    assert (again.predict(df) == expected).all()


def test_class_weights_and_oversampling_raise_minority_recall():
    df = _imbalanced()
    recalls = {}
    for name, extra in {"plain": {}, "weights": {"class_weights": "auto"}, "oversample": {"sampling": "oversample"},
                        "smote": {"sampling": "smote"}}.items():
        model = loopml.Model({"target": {"column": "y", **extra}, "training": {"epochs": 20}}).fit(df, progress=False)
        recalls[name] = model.metrics["test"]["per_class"]["rare"]["recall"]
    assert recalls["weights"] > recalls["plain"] + 0.1
    assert recalls["oversample"] > recalls["plain"] + 0.1
    assert recalls["smote"] > recalls["plain"] + 0.1


def test_bad_threshold_and_sampling_settings_are_config_errors():
    with pytest.raises(LoopmlError, match="threshold must be between 0 and 1"):
        loopml.Model({"target": {"column": "y", "threshold": 1.5}})
    with pytest.raises(LoopmlError, match="target.sampling"):
        loopml.Model({"target": {"column": "y", "sampling": "smot"}})


def test_imbalance_settings_on_the_wrong_task_are_errors(tabular):
    with pytest.raises(LoopmlError, match="target.sampling is for classification"):
        loopml.Model({"target": {"column": "x1", "sampling": "oversample"}}).fit(tabular, progress=False)
    with pytest.raises(LoopmlError, match="target.threshold is for binary"):
        loopml.Model({"target": {"column": "color", "threshold": "auto"}}).fit(tabular, progress=False)
