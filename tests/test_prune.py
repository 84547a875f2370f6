"""`loopml compress --prune`: magnitude and structured pruning, a short fine-tune, a bundle usable everywhere.

Tiny models trained from files (so their split records point at real rows), 2 epochs; the latency
rounds are kept tiny where the library is called directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import loopml
from loopml.cli import main
from loopml.compress.prune import compress_pruned, prune_model, weight_counts
from loopml.compress.quantize import original_splits
from loopml.compress.tradeoff import FIELDS
from loopml.learners.network import SHAPES
from loopml.registry import Store

ROUNDS = {1: 10, 64: 3}


def _mlp_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    df = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    df["colour"] = rng.choice(["red", "green", "blue"], n)
    df["label"] = np.where(x[:, 0] - x[:, 1] + 0.5 * x[:, 2] + (df["colour"] == "red") > 0, "pos", "neg")
    return df


def _image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for kind in ("bright", "dark"):
        (root / kind).mkdir(parents=True)
        for i in range(40):
            pixels = rng.integers(60, 120, size=(16, 16, 3)).astype(np.uint8)
            y, x = rng.integers(0, 8, size=2)
            pixels[y : y + 8, x : x + 8] = 240 if kind == "bright" else 5
            Image.fromarray(pixels).save(root / kind / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    csv = root / "mlp.csv"
    _mlp_frame().to_csv(csv, index=False)
    mlp = loopml.Model(target="label", training={"epochs": 2, "seed": 0},
                       combiner={"type": "concat", "layers": [64, 64], "norm": "layer"}).fit(
        str(csv), progress=False, cache_dir=False)
    images = _image_folder(root / "images")
    cnn = loopml.Model(target="label", training={"epochs": 2, "seed": 0},
                       features={"image": {"type": "image", "encoder": {"type": "resnet", "channels": [8, 16]}}}).fit(
        images, progress=False, cache_dir=False)
    air = loopml.Model(target="label", training={"epochs": 2, "seed": 0},
                       features={"image": {"type": "image", "encoder": {"type": "airnet", "channels": [8, 16]}}}).fit(
        images, progress=False, cache_dir=False)
    return {"mlp": (mlp.save(root / "mlp"), _mlp_frame()), "resnet": (cnn.save(root / "resnet"), images),
            "airnet": (air.save(root / "airnet"), images)}


def _rows(built, kind):
    folder, data = built[kind]
    return data if kind == "mlp" else _image_rows(data)


@pytest.mark.parametrize("kind", ["mlp", "resnet", "airnet"])
def test_structured_pruning_shrinks_the_network_and_loads_back_predicting_the_same(models, kind, tmp_path):
    if kind == "mlp":
        check_structured(models[kind][0], kind, _rows(models, kind), tmp_path)
        return
    # The CNN case runs in a fresh interpreter: twice, on 2-core AVX2 EPYC CI machines, the whole suite
    # died with SIGABRT in this test after ~650 others (silently: pytest had fd 2) while it passed alone,
    # and it never failed on AVX-512 Xeons. Here, a crash is this test's failure, with the child's stderr.
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
              "from test_prune import check_structured, _image_rows; "
              "check_structured(Path(sys.argv[2]), sys.argv[5], _image_rows(Path(sys.argv[3])), Path(sys.argv[4]))")
    folder, images = models[kind]
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script, str(Path(__file__).parent), str(folder),
                           str(images), str(tmp_path), kind], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-4000:]}"


def _image_rows(images: Path) -> pd.DataFrame:
    from loopml.data.read import read_table

    return read_table(images)


def check_structured(folder: Path, kind: str, rows: pd.DataFrame, tmp_path: Path) -> None:
    original = loopml.load(folder)
    frames = original_splits(original, None, None, None)
    pruned, facts = prune_model(original, frames, 0.5, structured=True, epochs=1)
    before, after = weight_counts(original.network)["parameters"], weight_counts(pruned.network)["parameters"]
    assert after < 0.6 * before and facts["pruned"]["parameters"] == after and facts["resized_layers"] >= 2
    assert weight_counts(original.network)["parameters"] == before  # the original is left as it was
    if kind == "resnet":  # conv channels really went: the first conv has half its filters
        assert pruned.network.encoders[0].body[0][0].out_channels == 4
    elif kind == "airnet":  # the fitted whitening keeps its filters; the blocks' convs lose half theirs
        stem, block = pruned.network.encoders[0].body[0], pruned.network.encoders[0].body[1]
        assert stem.weight.shape[0] == 24 and block.conv1.in_channels == 24 and block.conv1.out_channels == 4
    else:
        assert pruned.network.combiner.mlp[0].out_features == 32 and pruned.network.combiner.mlp[1].normalized_shape == (32,)
    expected = pruned.predict_proba(rows).to_numpy()
    again = loopml.load(pruned.save(tmp_path / "pruned"))
    shapes = json.loads((tmp_path / "pruned" / SHAPES).read_text())
    assert shapes == pruned.learner.shapes and all(isinstance(v, dict) for v in shapes.values())
    assert not any(p.suffix in (".pkl", ".pt", ".pth") for p in (tmp_path / "pruned").iterdir())
    assert weight_counts(again.network)["parameters"] == after
    np.testing.assert_allclose(again.predict_proba(rows).to_numpy(), expected, rtol=0, atol=1e-6)
    assert (again.predict(rows) == pruned.predict(rows)).all()


def test_magnitude_pruning_reaches_the_sparsity_no_masks_stay_and_the_table_says_no_size_gain(models, tmp_path):
    folder, frame = models["mlp"]
    original = loopml.load(folder)
    result = compress_pruned(original, folder, {"folder": folder.name}, 0.6, tmp_path / "m", epochs=1, rounds=ROUNDS)
    loaded = loopml.load(result.path)
    assert weight_counts(loaded.network)["sparsity"] >= 0.6
    assert not any(k.endswith(("_orig", "_mask")) for k in loaded.network.state_dict())
    assert not any(m._forward_pre_hooks for m in loaded.network.modules())
    assert not (result.path / SHAPES).exists()  # same architecture: nothing to record
    table = json.loads((result.path / "compress.json").read_text())
    assert table["pruning"]["kind"] == "magnitude" and table["pruning"]["pruned"]["sparsity"] >= 0.6
    original_row, compressed_row = table["rows"]
    assert compressed_row["model"] == "compressed (prune-magnitude-0.6, torch fp32)"
    assert compressed_row["network_bytes"] >= 0.95 * original_row["network_bytes"]  # stored dense: no smaller
    for row in table["rows"]:
        assert all(field in row for field in FIELDS)
    assert table["facts"]["fine_tune"]["epochs_run"] == 1 and table["split"] == "test"
    assert "sparsity" in (result.path / "report.html").read_text()
    assert loaded.metrics["test"]["accuracy"] == pytest.approx(compressed_row["value"])
    assert len(loaded.predict(frame)) == len(frame)


def test_structured_then_quantized_registers_with_lineage_and_serves(models, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from loopml.serve.app import ServeSettings, create_app

    folder, frame = models["mlp"]
    url, art = f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "art")
    store = Store(url, art)
    store.register("mlp", path=folder)
    code = main(["compress", "mlp:1", "--prune", "0.5", "--structured", "--fine-tune-epochs", "3", "--quantize",
                 "dynamic-int8", "-o", str(tmp_path / "pq"), "--register", "mlp", "--store", url, "--artifacts", art])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "compressed (prune-structured-0.5+dynamic-int8, onnxruntime)" in out and "registered mlp:2 (parent version 1)" in out
    assert "parameters:" in out and "fine-tuned 3 epoch(s)" in out
    v2 = store.get_version("mlp", 2)
    assert v2["lineage"]["method"] == "prune-structured-0.5+dynamic-int8" and v2["lineage"]["learner"] == "onnx_network"
    compressed = loopml.load("mlp:2", store=url)
    assert compressed.learner.registered_name == "onnx_network"
    facts = compressed.info["manifest"]["compression"]
    assert facts["pruned"]["parameters"] < 0.6 * facts["original"]["parameters"] and facts["quantization"]["method"] == \
        "dynamic-int8"
    assert compressed.metrics["test"]["accuracy"] >= loopml.load(folder).metrics["test"]["accuracy"] - 0.1
    records = frame.drop(columns=["label"]).head(4).to_dict(orient="records")
    app = create_app(ServeSettings(model=str(tmp_path / "pq"), backend="onnx", store=url, artifacts=art,
                                   log_durability="none"))
    with TestClient(app) as client:
        response = client.post("/v1/models/pq/predict", json=records)
        assert response.status_code == 200, response.text
        assert [p["prediction"] for p in response.json()["predictions"]] == list(compressed.predict(frame.head(4)))


def test_bad_fractions_and_a_tree_model_are_one_line_errors_and_nothing_is_written(models, tmp_path, capsys):
    folder, _ = models["mlp"]
    before = sorted(p.name for p in folder.parent.iterdir())
    for value in ("1.5", "0", "1", "-0.2"):
        assert main(["compress", str(folder), "--prune", value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--prune must be a fraction between 0 and 1" in err, err
    assert main(["compress", str(folder), "--structured"]) == 2
    assert "pass --quantize" in capsys.readouterr().err
    assert main(["compress", str(folder), "--quantize", "dynamic-int8", "--structured"]) == 2
    assert "--structured goes with --prune" in capsys.readouterr().err
    assert main(["compress", str(folder), "--prune", "0.5", "--quantize", "int7"]) == 2
    assert "unknown --quantize value" in capsys.readouterr().err
    assert sorted(p.name for p in folder.parent.iterdir()) == before
    csv = tmp_path / "d.csv"
    _mlp_frame(120).to_csv(csv, index=False)
    tree = loopml.Model(target="label", learner={"type": "lightgbm", "n_estimators": 5}).fit(
        str(csv), progress=False, cache_dir=False).save(tmp_path / "tree")
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert main(["compress", str(tree), "--prune", "0.5", "--structured"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pruning needs a network; this is a lightgbm model; supported:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == listing and not list(tmp_path.glob(".*tmp*"))
