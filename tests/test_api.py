import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import make_tabular

import loopml
from loopml import bundle


@pytest.fixture(scope="module")
def trained():
    """One fit for the module: its tests only read the model (predict, evaluate, save to their own folder)."""
    return loopml.Model(target="label", training={"epochs": 5}).fit(make_tabular(), progress=False, cache_dir=False)


def test_predict_and_predict_proba(trained, tabular):
    labels = trained.predict(tabular.head(20))
    proba = trained.predict_proba(tabular.head(20))
    assert set(labels) <= {"pos", "neg"} and list(proba.columns) == ["neg", "pos"]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert list(labels) == list(np.where(proba["pos"] > 0.5, "pos", "neg"))
    frame = trained.predictions(tabular.head(3))
    assert list(frame.columns) == ["label_prediction", "label_probability_neg", "label_probability_pos"]


def test_evaluate_matches_the_metric_definitions(trained, tabular):
    metrics = trained.evaluate(tabular)
    predicted = trained.predict(tabular)
    assert metrics["accuracy"] == pytest.approx(float((predicted == tabular["label"]).mean()))
    assert {"roc_auc", "f1_macro", "balanced_accuracy", "log_loss", "confusion_matrix", "per_class"} <= set(metrics)
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == len(tabular)


def test_save_load_in_a_fresh_process_is_bit_identical(trained, tabular, tmp_path):
    path = trained.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == [
        "config.yaml", "evaluation.json", "history.json", "manifest.json", "metrics.json", "model.safetensors",
        "preprocessing.json", "reference.json", "schema.json",
    ]
    data = tmp_path / "rows.csv"
    tabular.to_csv(data, index=False)
    script = (
        "import sys, json, loopml; m = loopml.load(sys.argv[1]); "
        "print(json.dumps(m.predict_proba(sys.argv[2]).to_numpy().tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path), str(data)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    here = trained.predict_proba(pd.read_csv(data)).to_numpy()
    assert np.array_equal(np.array(json.loads(out.stdout)), here)


def test_unseen_category_maps_to_unknown(trained, tabular):
    rows = tabular.head(2).copy()
    rows["color"] = ["purple", None]
    assert len(trained.predict(rows)) == 2


def test_missing_input_column_is_a_clear_error(trained, tabular):
    with pytest.raises(loopml.LoopmlError, match="missing column.*x2"):
        trained.predict(tabular.drop(columns=["x2"]))


def test_failed_save_leaves_nothing_behind(trained, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle, "save_file", broken)
    with pytest.raises(OSError):
        trained.save(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_saved_files_follow_the_umask_so_another_user_can_serve_them(trained, tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        path = trained.save(tmp_path / "model")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.rglob("*") if p.is_file()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


def test_a_save_killed_earlier_leaves_no_hidden_folder_behind_the_next_one(trained, tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".model.tmp-{dead.pid}" / "x").mkdir(parents=True)  # what a kill -9 mid-save leaves
    (tmp_path / f".model.tmp-{os.getppid()}").mkdir()  # a live writer's: not ours to remove
    trained.save(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".model.tmp-{os.getppid()}", "model"]


def test_tampered_weights_are_refused(trained, tmp_path):
    path = trained.save(tmp_path / "model")
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(loopml.LoopmlError, match="modified"):
        loopml.load(path)


@pytest.mark.parametrize("encoder", ["bag", "bilstm", "transformer"])
def test_text_encoders_train_save_and_reload(tabular, tmp_path, encoder):
    m = loopml.Model(target="label", exclude=["x1", "x2", "color", "flag"],
                     features={"note": {"type": "text", "encoder": encoder}}, training={"epochs": 8})
    m.fit(tabular, progress=False)
    assert m.metrics["test"]["accuracy"] >= 0.9  # the words give the label away
    again = loopml.load(m.save(tmp_path / encoder))
    assert np.array_equal(again.predict_proba(tabular).to_numpy(), m.predict_proba(tabular).to_numpy())


@pytest.mark.parametrize("tokenizer", ["word", "bpe", "wordpiece"])
def test_tokenizers(tabular, tokenizer):
    m = loopml.Model(target="label", features={"note": {"type": "text", "tokenizer": tokenizer, "max_length": 12}},
                     training={"epochs": 2}).fit(tabular, progress=False)
    feature = m.preprocessor.features["note"]
    assert feature.state["max_length"] == 12
    assert m.preprocessor.transform(tabular.head(4))["note"].shape == (4, 12)


def test_regression(tabular):
    df = tabular.assign(target=tabular["x1"] * 3 + 10).drop(columns=["label"])
    m = loopml.Model(target="target", training={"epochs": 40}).fit(df, progress=False)
    assert m.schema.target_kind == "number" and m.metrics["test"]["r2"] > 0.9
    assert m.predict(df.head(5)).dtype.kind == "f"
    with pytest.raises(loopml.LoopmlError, match="classifiers"):
        m.predict_proba(df.head(5))


def test_class_weights_and_multiclass(tabular):
    df = tabular.assign(label=np.where(tabular["x1"] > 0.5, "high", np.where(tabular["x1"] < -0.5, "low", "mid")))
    m = loopml.Model({"target": {"column": "label", "class_weights": "auto"}, "training": {"epochs": 20}})
    m.fit(df, progress=False)
    assert m.schema.target_kind == "category" and len(m.preprocessor.target.classes) == 3
    weights = m.network.head.class_weights.tolist()  # classes sorted: high, low, mid (the most frequent)
    assert df["label"].value_counts().idxmax() == "mid" and min(weights) == weights[2] and weights[0] > 1.0
    assert m.metrics["test"]["accuracy"] > 0.8


def test_predict_from_records(trained, tabular):
    records = tabular.drop(columns=["label"]).head(3).to_dict(orient="records")
    assert list(trained.predict(records)) == list(trained.predict(tabular.head(3)))
    assert len(trained.predict(records[0])) == 1
    with pytest.raises(loopml.LoopmlError, match="records"):
        trained.predict([1, 2])
