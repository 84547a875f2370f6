"""`loopml export`: ONNX / TorchScript parity with loopml's scores per feature-type family, preprocessing.json,
and the standalone predict_onnx.py run where loopml cannot be imported."""

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.cli import main
from loopml.compress.export import FORMATS, export_model, network_outputs
from loopml.errors import LoopmlError

ROWS = 200
TOL = 1e-5


def table(n: int, seed: int) -> pd.DataFrame:
    """Every family the networks read: number, category, binary, date (and timestamp), text; gaps in each."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    color = rng.choice(["red", "green", "blue", "teal"], size=n)
    flag = rng.choice(["yes", "no"], size=n)
    day = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, size=n), unit="D")
    at = day + pd.to_timedelta(rng.integers(0, 86_400, size=n), unit="s")
    score = x + (color == "red") - (flag == "no") + rng.normal(scale=0.5, size=n)
    words = np.where(score > 0.3, "great fine good", "poor bad awful")
    df = pd.DataFrame({
        "x": x, "size": rng.exponential(size=n) * 100, "color": color, "flag": flag,
        "day": day.strftime("%Y-%m-%d"), "at": at.strftime("%Y-%m-%dT%H:%M:%S+01:00"),
        "note": [f"{w} item {i % 7}" for i, w in enumerate(words)],
        "label": np.where(score > 0.3, "pos", "neg"), "amount": score * 10 + 50,
        "grade": np.where(score > 1, "a", np.where(score > -0.5, "b", "c")),
    })
    for col, step in (("x", 11), ("color", 13), ("flag", 17), ("day", 19), ("note", 23), ("size", 29)):
        df.loc[df.index[::step], col] = None
    return df


#: name -> (target, features, text tokenizer): together every family, every target decoding
MODELS = {
    "binary": ("label", ["x", "color", "flag", "day", "note"], "word"),
    "number": ("amount", ["x", "size", "color", "note"], "bpe"),
    "category": ("grade", ["x", "flag", "at", "color"], "word"),
    "tfidf": ("label", ["x", "color", "note"], "tfidf"),  # (term id, weight) pairs the example counts itself
}


def predict_rows() -> pd.DataFrame:
    """Rows to predict: missing values in every column, an unseen category, unseen words, a bad binary value."""
    df = table(ROWS, 7)
    df.loc[0, "color"] = "ultraviolet"
    df.loc[1, "note"] = "zzz never seen words"
    df.loc[2, ["x", "color", "flag", "day", "note", "size", "at"]] = None
    df.loc[3, "flag"] = "maybe"  # loopml predict refuses it unless --coerce; the example reads it as missing
    return df


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    table(320, 0).to_csv(root / "train.csv", index=False)
    predict_rows().to_csv(root / "rows.csv", index=False)
    return root


@pytest.fixture(scope="module")
def models(root):
    out = {}
    for name, (target, columns, tokenizer) in MODELS.items():
        data = pd.read_csv(root / "train.csv")[[*columns, target]]
        features = {"note": {"type": "text", "tokenizer": tokenizer}, "day": {"type": "date"}, "at": {"type": "date"},
                    "flag": {"type": "binary"}}
        model = loopml.Model(target=target, training={"epochs": 2, "batch_size": 64},
                             features={k: v for k, v in features.items() if k in columns})
        out[name] = model.fit(data, progress=False, cache_dir=False)
    return out


@pytest.fixture(scope="module")
def exports(models, root):
    return {(name, fmt): export_model(model, root / f"{name}-{fmt}", fmt)
            for name, model in models.items() for fmt in FORMATS}


def _standalone(folder, script: str = "predict_onnx.py"):
    name = f"standalone_{folder.name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, folder / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_families_are_covered(models):
    types = {f.config.type for m in models.values() for f in m.preprocessor.features.values()}
    assert types == {"number", "category", "binary", "date", "text"}
    assert models["category"].preprocessor.features["at"].state["has_time"]


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", list(MODELS))
def test_network_matches_predict_scores(models, exports, root, name, fmt):
    model, export = models[name], exports[name, fmt]
    assert export.max_diff < TOL
    x = model.inputs(model._read_inputs(root / "rows.csv", coerce=True))
    expected = np.asarray(model.learner.predict_scores(x))
    got = network_outputs(export.folder / FORMATS[fmt], fmt, tuple(x[c] for c in model.preprocessor.features))
    assert got.shape[0] == ROWS and np.abs(got.reshape(expected.shape) - expected).max() < TOL


@pytest.mark.parametrize("name", list(MODELS))
def test_standalone_inputs_equal_loopml_tensors_per_column(models, exports, root, name):
    model, folder = models[name], exports[name, "onnx"].folder
    script = _standalone(folder)
    spec = json.loads((folder / "preprocessing.json").read_text())
    feed = script.inputs(spec, script.read_csv(str(root / "rows.csv"), spec))
    df = model._read_inputs(root / "rows.csv", coerce=True)
    for entry, (col, tensor) in zip(spec["columns"], model.preprocessor.transform(df).items(), strict=True):
        assert entry["name"] == col
        mine = feed[entry["input"]]
        assert mine.dtype == tensor.numpy().dtype and mine.shape == tuple(tensor.shape), col
        np.testing.assert_allclose(mine, tensor.numpy(), atol=1e-6, err_msg=f"{name}: column {col} ({entry['type']})")


def _isolated_env() -> dict:
    """An interpreter setup with numpy/onnxruntime/tokenizers importable but no loopml: -S skips the
    site-packages .pth files (loopml's editable install), PYTHONPATH names site-packages itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    return env


ISOLATED = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); " \
           "leaked = {'loopml', 'torch', 'pandas'} & set(sys.modules); assert not leaked, leaked"


@pytest.mark.parametrize("name", list(MODELS))
def test_standalone_script_prints_loopml_predictions_without_loopml(models, exports, root, name):
    folder, env = exports[name, "onnx"].folder, _isolated_env()
    probe = subprocess.run([sys.executable, "-S", "-c", "import loopml"], cwd=folder, env=env, capture_output=True)
    assert probe.returncode != 0 and b"No module named 'loopml'" in probe.stderr
    run = subprocess.run([sys.executable, "-S", "-c", ISOLATED, "predict_onnx.py", str(root / "rows.csv")],
                         cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    printed = run.stdout.splitlines()
    expected = models[name].predict(root / "rows.csv", coerce=True)
    assert len(printed) == ROWS
    if name == "number":
        np.testing.assert_allclose([float(p) for p in printed], expected.astype(float), rtol=1e-5)
    else:
        assert printed == [str(v) for v in expected]
    flagged = "flag" in MODELS[name][1]
    assert ("read as missing: flag (1)" in run.stderr) == flagged, run.stderr


def test_torchscript_export_carries_its_own_script(exports, models, root, capsys):
    folder = exports["binary", "torchscript"].folder
    assert (folder / "model.pt").is_file() and not (folder / "model.onnx").exists()
    _standalone(folder, "predict_torchscript.py").main([str(root / "rows.csv")])  # in process: torch is loaded already
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(v) for v in models["binary"].predict(root / "rows.csv", coerce=True)]


def test_preprocessing_json_is_plain_and_complete(exports):
    spec = json.loads((exports["binary", "onnx"].folder / "preprocessing.json").read_text())
    by_name = {c["name"]: c for c in spec["columns"]}
    assert {"fill", "center", "scale", "method"} <= set(by_name["x"])
    assert by_name["color"]["index"] and by_name["color"]["unknown_id"] == 0
    assert set(by_name["flag"]["values"]) == {"yes", "no"} and by_name["flag"]["positive"] == "yes"
    assert by_name["note"]["tokenizer"] == "tokenizer_4.json" and "day" in by_name
    assert spec["target"]["classes"] == ["neg", "pos"] and spec["network"] == {"file": "model.onnx", "format": "onnx"}
    number = json.loads((exports["number", "onnx"].folder / "preprocessing.json").read_text())["target"]
    assert number["kind"] == "number" and number["std"] > 0
    source = (exports["binary", "onnx"].folder / "predict_onnx.py").read_text()
    assert "import loopml" not in source and "import torch\n" not in source.split("def scores")[0]


# -- bad input ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(models, root):
    return models["binary"].save(root / "model")


@pytest.fixture(scope="module")
def tree_dir(root):
    data = pd.read_csv(root / "train.csv")[["x", "color", "label"]]
    model = loopml.Model(target="label", learner={"type": "lightgbm", "n_estimators": 5})
    return model.fit(data, progress=False, cache_dir=False).save(root / "trees")


def _cli(capsys, *args) -> tuple[int, str]:
    code = main(["export", *map(str, args)])
    return code, capsys.readouterr().err.strip()


def test_tree_model_is_refused_and_nothing_written(tree_dir, tmp_path, capsys):
    code, err = _cli(capsys, tree_dir, "-o", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1
    assert "network models only" in err and "'lightgbm'" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_bad_format_names_the_supported_ones(saved, tmp_path, capsys):
    code, err = _cli(capsys, saved, "--format", "onnxx", "-o", tmp_path / "out")
    assert code == 2 and "onnx, torchscript" in err and "did you mean 'onnx'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_existing_folder_needs_force_and_force_replaces_only_an_export(saved, tmp_path, capsys):
    path = saved
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _cli(capsys, path, "-o", out)
    assert code == 2 and "--force" in err and (out / "keep.txt").read_text() == "mine"
    code, err = _cli(capsys, path, "-o", out, "--force")  # not an earlier export: never deleted
    assert code == 2 and "not an earlier loopml export" in err and (out / "keep.txt").exists()
    code, err = _cli(capsys, path, "-o", tmp_path / "fresh", "--format", "torchscript")
    assert code == 0 and (tmp_path / "fresh" / "model.pt").is_file()
    code, err = _cli(capsys, path, "-o", tmp_path / "fresh", "--force")
    assert code == 0 and (tmp_path / "fresh" / "model.onnx").is_file() and not (tmp_path / "fresh" / "model.pt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_failed_export_leaves_nothing(models, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise LoopmlError("tracing failed")

    monkeypatch.setattr("loopml.compress.export.trace_torchscript", broken)
    with pytest.raises(LoopmlError, match="tracing failed"):
        export_model(models["binary"], tmp_path / "out", "torchscript")
    assert not list(tmp_path.iterdir())


def test_torchscript_module_takes_any_batch(exports, models):
    model = models["category"]
    x = model.preprocessor.transform(table(5, 3))  # traced on 2 rows; 5 here
    out = network_outputs(exports["category", "torchscript"].folder / "model.pt", "torchscript",
                          tuple(x[c] for c in model.preprocessor.features))
    np.testing.assert_allclose(out, model.learner.predict_scores(x), atol=TOL)


def test_a_registered_version_exports_by_reference(saved, tmp_path, capsys):
    assert main(["models", "register", str(saved), "--name", "clf"]) == 0
    capsys.readouterr()
    assert main(["export", "clf:1", "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "model.onnx" in out and "predict_onnx.py" in out and "matches loopml's scores" in out
    assert main(["export", "clf@nope", "-o", str(tmp_path / "other")]) == 2 and not (tmp_path / "other").exists()


@pytest.mark.parametrize("mode, resize", [("RGB", "bilinear"), ("L", "bicubic")])
def test_image_columns_decode_in_the_example_as_loopml_does(models, exports, tmp_path, mode, resize):
    from types import SimpleNamespace

    from PIL import Image

    from loopml.compress.export import preprocessing_spec
    from loopml.config import feature_config
    from loopml.features.image import ImageFeature

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i, side in enumerate([12, 12, 20]):  # the third is resized to the training size (12x12)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).convert(mode).save(tmp_path / f"img/{i}.png")
    paths = [f"img/{i}.png" for i in range(3)]
    feature = ImageFeature("photo", feature_config("image", {"type": "image", "resize": resize}))
    column = pd.Series(paths, name="photo")
    column.attrs["base_dir"] = str(tmp_path)
    feature.fit(column)
    model = models["binary"]
    pre = model.preprocessor.copy()
    pre.features = {"photo": feature}
    spec, _, notes = preprocessing_spec(SimpleNamespace(preprocessor=pre, config=model.config))
    assert notes == [] and spec["columns"][0]["dtype"] == "uint8"
    script = _standalone(exports["binary", "onnx"].folder)
    script.media_root = tmp_path
    got = script.inputs(spec, {"photo": paths})["input_0"]
    expected = feature.transform(column).numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape == (3, 1 if mode == "L" else 3, 12, 12)
    assert np.array_equal(got, expected)
    with pytest.raises(SystemExit) as stop:
        script.inputs(spec, {"photo": ["img/absent.png"]})
    assert "cannot read image img/absent.png" in str(stop.value)


def test_audio_columns_are_named_as_outside_the_example(models, exports):
    from types import SimpleNamespace

    from loopml.compress.export import preprocessing_spec

    model = models["binary"]
    pre = model.preprocessor.copy()
    clip = SimpleNamespace(config=SimpleNamespace(type="audio"), state={})
    pre.features = {"clip": clip}
    spec, _, notes = preprocessing_spec(SimpleNamespace(preprocessor=pre, config=model.config))
    assert notes == ["column 'clip' (audio values: the network takes their decoded tensor)"]
    with pytest.raises(SystemExit) as stop:
        _standalone(exports["binary", "onnx"].folder).inputs(spec, {})
    assert "column 'clip' (audio) is not covered by this example" in str(stop.value)


@pytest.mark.parametrize("content, words", [
    (None, "cannot read"), (b"", "is empty"), (b"x,color\n", "no rows to predict"),
    (b"\xff\xfe\xb8junk\n1\n", "cannot read"),
])
def test_standalone_script_refuses_unreadable_files_in_one_line(exports, tmp_path, content, words):
    rows = tmp_path / "rows.csv"
    if content is not None:
        rows.write_bytes(content)
    folder = exports["binary", "onnx"].folder
    run = subprocess.run([sys.executable, "-S", "-c", ISOLATED, "predict_onnx.py", str(rows)], cwd=folder,
                         env=_isolated_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and words in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_example_rows_for_image_columns_need_no_files(tmp_path, monkeypatch):
    """Export and `serve --backend onnx` trace on model_example: stored worst-error paths are relative to the
    training data (gone, or another cwd), so image columns get seeded pixel arrays of the fitted size instead."""
    from types import SimpleNamespace

    from loopml.config import feature_config
    from loopml.features.image import ImageFeature
    from loopml.serve.onnx import model_example

    feature = ImageFeature("photo", feature_config("image", {"type": "image"}), {"size": [6, 5], "channels": 1})
    worst = [{"inputs": {"photo": "a/0.png"}}]
    model = SimpleNamespace(preprocessor=SimpleNamespace(features={"photo": feature}),
                            evaluation={"evaluations": {"test": {"worst_errors": worst}}})
    monkeypatch.chdir(tmp_path)  # no a/0.png here
    frame = model_example(model, 3)
    assert len(frame) == 3 and all(v.shape == (6, 5, 1) and v.dtype == np.uint8 for v in frame["photo"])
    assert feature.transform(frame["photo"]).shape == (3, 1, 6, 5)
