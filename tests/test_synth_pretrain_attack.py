"""Attacks on target.synthesize and training.init_from that once broke (each test failed before its fix)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import loopml


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    x1, x2 = rng.normal(size=n), rng.integers(0, 5, size=n)  # x2: few values, so bin edges move with the rows
    color = rng.choice(["red", "green", "blue", "teal"], size=n)
    label = np.where(1.5 * x1 + (color == "red") + rng.normal(scale=0.5, size=n) > 0.8, "pos", "neg")
    df = pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": label})
    df.to_csv(tmp_path / "labelled.csv", index=False)
    unlabelled = df.drop(columns="label").sample(frac=1.0, random_state=1).iloc[:150]
    unlabelled.to_csv(tmp_path / "unlabelled.csv", index=False)
    (tmp_path / "cfg.yaml").write_text("target: label\ncombiner: {layers: [16]}\n")
    return tmp_path


def test_a_model_trained_with_init_from_loads_and_predicts_as_trained(table, cli_here):
    # the saved preprocessing.json was the one fitted on the labelled rows, not the pretraining's the
    # weights were fitted on: loading failed ("weights do not fit"), or embedding rows were silently swapped
    result = cli_here(["pretrain", "--method", "scarf", "-d", "unlabelled.csv", "-c", "cfg.yaml", "-o", "enc",
                       "--epochs", "2", "-q", "--seed", "3"], table)
    assert result.returncode == 0, result.stderr
    config = {"target": "label", "combiner": {"layers": [16]},
              "training": {"epochs": 2, "init_from": str(table / "enc")}}
    model = loopml.Model(config).fit(table / "labelled.csv")
    saved = json.loads((table / "enc" / "preprocessing.json").read_text())["features"]
    assert model.preprocessor.features["color"].state["vocab"] == saved["color"]["state"]["vocab"]
    model.save(table / "model")
    again = loopml.load(table / "model")
    assert again.preprocessor.features["color"].state == saved["color"]["state"]
    df = pd.read_csv(table / "labelled.csv").head(20)
    pd.testing.assert_frame_equal(again.predict_proba(df), model.predict_proba(df))


@pytest.fixture
def teacher(table):
    config = {"target": {"column": "label", "synthesize": {"ratio": 1.0, "epochs": 1}}, "learner": {"type": "lightgbm"}}
    return loopml.Model(config).fit(table / "labelled.csv")


def test_a_teacher_trained_with_synthesis_distils_without_it(teacher, table):
    # the student inherited target.synthesize: "210 soft targets for 608 training rows" at fit time
    from loopml.compress.distill import student_config

    assert teacher.info["training"]["synthesized"]["rows"] > 0
    assert student_config("mlp", teacher).target.synthesize is None
    (table / "student.yaml").write_text("target: {column: label, synthesize: {epochs: 1}}\n")
    with pytest.raises(loopml.LoopmlError,
                       match="target.synthesize does not combine with distillation"):
        student_config(str(table / "student.yaml"), teacher)


def test_a_teacher_trained_with_sampling_distils_into_the_default_student(table):
    from loopml.compress.distill import student_config

    config = {"target": {"column": "label", "sampling": "oversample"}, "learner": {"type": "lightgbm"}}
    model = loopml.Model(config).fit(table / "labelled.csv")
    assert student_config("mlp", model).target.sampling == "none"
