"""target.synthesize: CVAE minority rows fitted on the training split only, never in validation/test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

import loopml
from loopml.cli import main
from loopml.config import Config, SynthesizeConfig
from loopml.errors import LoopmlError
from loopml.prepare import prepare
from loopml.train import synthesize
from loopml.train.run import train

FAST = {"epochs": 3}


def imbalanced(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """~8% 'rare' rows that differ from the rest in a number, a category and a flag; some missing values."""
    rng = np.random.default_rng(seed)
    rare = rng.random(n) < 0.08
    df = pd.DataFrame({
        "a": np.where(rare, rng.normal(5, 1, n), rng.normal(0, 1, n)),
        "b": rng.integers(0, 10, n),
        "c": np.where(rare, rng.choice(["x", "y"], n, p=[0.9, 0.1]), rng.choice(["x", "y", "z"], n)),
        "d": np.where(rare, rng.choice(["yes", "no"], n, p=[0.8, 0.2]), rng.choice(["yes", "no"], n, p=[0.2, 0.8])),
        "label": np.where(rare, "rare", "common"),
    })
    df.loc[::13, "a"] = np.nan
    return df


def _config(ratio: float = 0.5, **target) -> Config:
    return Config.model_validate({"target": {"column": "label", "synthesize": {"ratio": ratio, "epochs": 5}, **target},
                                  "training": {"seed": 0, **FAST}})


def test_cvae_sees_only_training_rows_and_validation_test_are_unchanged(monkeypatch):
    df = imbalanced()
    config = _config()
    prepared = prepare(config, df, cache_dir=False)
    frames = {name: prepared.frames[name].copy() for name in ("train", "validation", "test")}
    held_out = {name: prepared.splits[name].target.clone() for name in ("validation", "test")}
    seen = []
    real_fit = synthesize.fit

    def spy(frame, y, *args):
        seen.append((frame.copy(), y.copy()))
        return real_fit(frame, y, *args)

    monkeypatch.setattr(synthesize, "fit", spy)
    result = train(config, prepared)
    assert len(seen) == 1
    frame, y = seen[0]
    # exactly the training rows (values of the continuous column identify rows), none of validation/test
    train_a = frames["train"]["a"].to_numpy()
    np.testing.assert_array_equal(frame["a"].to_numpy(), train_a)
    assert (y == (frames["train"]["label"] == "rare").to_numpy()).all()
    for name in ("validation", "test"):
        assert not set(frames[name]["a"].dropna()) & set(frame["a"].dropna())
        pd.testing.assert_frame_equal(prepared.frames[name], frames[name])
        assert (prepared.splits[name].target == held_out[name]).all()
    sizes = result.evaluation["data"]["sizes"]
    assert sizes == {name: len(frames[name]) for name in frames}
    record = result.info["training"]["synthesized"]
    assert result.evaluation["data"]["train_rows_after_sampling"] == len(frames["train"]) + record["rows"]


def test_counts_reach_the_ratio_and_are_recorded_in_the_run(tmp_path):
    df = imbalanced()
    store = f"sqlite:///{tmp_path / 'r.db'}"
    model = loopml.Model({"target": {"column": "label", "synthesize": {"ratio": 0.5, "epochs": 5}},
                          "training": {"seed": 0, **FAST}}).fit(df, progress=False, cache_dir=False, track="s",
                                                                 store=store)
    record = model.info["training"]["synthesized"]
    n_train = model.evaluation["data"]["sizes"]["train"]
    balance = model.evaluation["data"]["class_balance"]["train"]
    n_rare, n_common = balance["rare"], balance["common"]
    assert n_rare + n_common == n_train
    assert record["per_class"] == {"rare": int(0.5 * n_common) - n_rare}
    assert record["rows"] == int(0.5 * n_common) - n_rare > 0
    run = model._store.get_run(model.run_id)
    assert run["metrics"]["train"]["synthesized_rows"] == record["rows"]


def test_conditional_samples_are_the_asked_class_and_plausible():
    df = imbalanced(1500, seed=1)
    rng = np.random.default_rng(2)
    y = (df.label == "rare").to_numpy().astype(np.int64)
    # zero-inflated, like adult's capital-gain: mostly 0 for the common class, mostly not for the rare one
    df["g"] = np.where(rng.random(len(df)) < np.where(y == 1, 0.3, 0.9), 0.0, rng.lognormal(8, 1, len(df)).round())
    kinds = {"a": "number", "b": "number", "c": "category", "d": "binary", "g": "number"}
    synth = synthesize.fit(df[list(kinds)], y, kinds, 2, SynthesizeConfig(epochs=60, seed=0))
    for label in (0, 1):
        real = df[y == label]
        fake = synth.sample(label, 2000)
        a = pd.to_numeric(fake["a"])
        assert abs(a.mean() - real["a"].mean()) < 0.5, (label, a.mean(), real["a"].mean())
        assert a.min() >= df["a"].min() and a.max() <= df["a"].max()
        assert abs(a.isna().mean() - real["a"].isna().mean()) < 0.06
        assert set(fake["b"].dropna()) <= set(range(10)) and (fake["b"] == fake["b"].round()).all()
        assert set(fake["c"]) <= {"x", "y", "z"} and set(fake["d"]) <= {"yes", "no"}
        for col, value in (("c", "x"), ("d", "yes")):
            assert abs((fake[col] == value).mean() - (real[col] == value).mean()) < 0.12, (label, col)
        g = pd.to_numeric(fake["g"])
        assert abs((g == 0).mean() - (real["g"] == 0).mean()) < 0.1, (label, (g == 0).mean())
        assert (g[g != 0] >= df["g"][df["g"] != 0].min()).all()
    # the condition decides the class: the rare class's samples look rare, not common
    assert pd.to_numeric(synth.sample(1, 500)["a"]).mean() > 3.5 > pd.to_numeric(synth.sample(0, 500)["a"]).mean()


def test_deterministic_with_a_seed():
    df = imbalanced()
    kinds = {"a": "number", "b": "number", "c": "category", "d": "binary"}
    y = (df.label == "rare").to_numpy().astype(np.int64)

    def rows(seed: int) -> pd.DataFrame:
        return synthesize.fit(df[list(kinds)], y, kinds, 2, SynthesizeConfig(epochs=3, seed=seed)).sample(1, 50)

    pd.testing.assert_frame_equal(rows(3), rows(3))
    assert not rows(3).equals(rows(4))
    first = loopml.Model(_config().model_dump()).fit(df, progress=False, cache_dir=False, track=False)
    second = loopml.Model(_config().model_dump()).fit(df, progress=False, cache_dir=False, track=False)
    assert first.metrics["test"]["accuracy"] == second.metrics["test"]["accuracy"]
    assert first.info["training"]["synthesized"]["final_loss"] == second.info["training"]["synthesized"]["final_loss"]


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(LoopmlError, match="target.synthesize does not combine with target.sampling"):
        loopml.Model({"target": {"column": "label", "synthesize": "cvae", "sampling": "smote"}})
    with pytest.raises(LoopmlError, match="ctgan"):
        loopml.Model({"target": {"column": "label", "synthesize": {"method": "ctgan"}}})
    with pytest.raises(LoopmlError, match="ratio"):
        loopml.Model({"target": {"column": "label", "synthesize": {"ratio": 2}}})
    with pytest.raises(LoopmlError, match="target.synthesize is for classification"):
        loopml.Model({"target": {"column": "a", "synthesize": "cvae"}}).fit(imbalanced(), progress=False, track=False)


@pytest.mark.parametrize("case", ["text", "sampling"])
def test_cli_refuses_in_one_line_with_exit_2(tmp_path, capsys, case):
    df = imbalanced(120)
    target: dict = {"column": "label", "synthesize": {"ratio": 0.5}}
    if case == "text":
        words = np.array(["spam offer now", "hello friend", "meeting at noon", "free prize win"])
        df["note"] = words[np.arange(len(df)) % 4] + " " + df.index.astype(str)
        config = {"target": target, "features": {"note": {"type": "text"}}}
        expected = "target.synthesize needs tabular features; column 'note' is text"
    else:
        config = {"target": {**target, "sampling": "oversample"}}
        expected = "target.synthesize does not combine with target.sampling"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    df.to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "m"
    code = main(["train", "--data", str(tmp_path / "d.csv"), "--config", str(tmp_path / "c.yaml"), "-o", str(out),
                 "--no-track"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert expected in err and err.count("\n") == 0 and "Traceback" not in err
    assert not out.exists()


def test_tree_learner_reads_the_synthetic_rows_in_its_own_view():
    df = imbalanced()
    model = loopml.Model({"target": {"column": "label", "synthesize": {"ratio": 1.0, "epochs": 3}},
                          "learner": {"type": "lightgbm", "n_estimators": 5}, "training": {"seed": 0}}).fit(
        df, progress=False, cache_dir=False, track=False)
    data = model.evaluation["data"]
    n_common = data["class_balance"]["train"]["common"]
    assert data["train_rows_after_sampling"] == 2 * n_common
    assert model.info["training"]["synthesized"]["rows"] == n_common - data["class_balance"]["train"]["rare"]
    assert len(model.predict(df.drop(columns="label").head(5))) == 5
