"""``loopml pretrain`` (mlm): tokenizer + masked-LM pretraining -> a Hugging Face folder that
``encoder: {type: pretrained, model: ./enc}`` loads offline; resume; one-line input errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import loopml
from loopml.errors import LoopmlError
from loopml.models.pretrained import load_transformer, resolve_model
from loopml.pretrain import mlm

SMALL = ["--layers", "2", "--hidden", "32", "--vocab-size", "300", "--max-length", "16", "--batch-size", "16",
         "--seed", "3", "--quiet"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def sentences(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Tiny sentences whose topic (animals / money / sport / weather) decides the label."""
    rng = np.random.default_rng(seed)
    topics = {
        "animals": ["cat", "dog", "bird", "horse", "fish"], "money": ["bank", "shares", "market", "price", "tax"],
        "sport": ["match", "goal", "team", "coach", "league"], "weather": ["rain", "storm", "snow", "wind", "sun"],
    }
    verbs = ["sees", "likes", "reports", "follows", "fears"]
    rows = []
    for i in range(n):
        label = list(topics)[i % 4]
        a, b = rng.choice(topics[label], size=2, replace=False)
        rows.append({"text": f"the {a} {rng.choice(verbs)} the {b} today", "label": label, "number": i * 0.5})
    return pd.DataFrame(rows)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "unlabelled.csv"
    sentences().to_csv(path, index=False)
    return path


def test_pretrain_then_fine_tune_offline_round_trip(cli_here, data, tmp_path):
    out = cli_here(["pretrain", "--data", str(data), "--column", "text", "-o", "enc", "--epochs", "4", *SMALL],
                   tmp_path, env=OFFLINE)
    assert out.returncode == 0, out.stderr
    assert "method: mlm" in out.stderr  # chosen from the column
    enc = tmp_path / "enc"
    assert {"config.json", "model.safetensors", "tokenizer.json", "pretrain.json"} <= {p.name for p in enc.iterdir()}
    assert not (tmp_path / "enc.partial").exists()  # finished: the checkpoints are gone
    summary = json.loads((enc / "pretrain.json").read_text())
    history = summary["history"]
    assert len(history) == 4 and history[-1]["val_mlm_loss"] < history[0]["val_mlm_loss"]  # it learned something
    # what `pretrained` loads is the pretrained transformer, not a fresh one
    saved = load_file(str(enc / "model.safetensors"))
    loaded = load_transformer(str(enc))
    assert torch.equal(loaded.get_input_embeddings().weight, saved["bert.embeddings.word_embeddings.weight"])
    # a config naming ./enc fine-tunes it (relative to where the command runs), offline
    (tmp_path / "config.yaml").write_text(
        "target: {column: label}\nfeatures:\n  text: {type: text, encoder: {type: pretrained, model: ./enc, "
        "trainable: all, lr: 0.003}}\n  number: {type: skip}\ntraining: {epochs: 12, seed: 0}\n")
    out = cli_here(["train", "--data", str(data), "--config", "config.yaml", "-o", "model", "--no-track", "-q"],
                   tmp_path, env=OFFLINE)
    assert out.returncode == 0, out.stderr
    model = loopml.load(tmp_path / "model")
    assert model.metrics["test"]["accuracy"] >= 0.6  # 4 balanced classes: chance is 0.25
    # the bundle holds its own copy of enc/'s config and tokenizer (loopml/models/pretrained_files.py)
    copy = (tmp_path / "model" / "pretrained" / "0").resolve()
    assert model.preprocessor.features["text"].state["pretrained"]["model"] == str(copy)


def test_interrupted_pretraining_resumes_to_the_same_weights(cli_here, data, tmp_path, monkeypatch):
    # WordPiece training itself is not reproducible (huggingface/tokenizers#1794: hash-map order breaks
    # ties), so both runs get one tokenizer; a resumed run reuses the one saved in its checkpoint folder
    fixed = mlm.train_tokenizer(list(sentences()["text"]), 300).to_str()
    monkeypatch.setattr(mlm, "train_tokenizer", lambda texts, size: mlm.Tokenizer.from_str(fixed))
    args = ["pretrain", "--data", str(data), "--column", "text", "--epochs", "2", *SMALL]
    assert cli_here([*args, "-o", "whole"], tmp_path).returncode == 0
    monkeypatch.setattr(mlm, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every step
    real_step, calls = mlm._train_step, []

    def interrupted(*a, **k):
        if len(calls) == 15:  # mid-epoch 2 (13 steps an epoch)
            raise KeyboardInterrupt
        calls.append(1)
        return real_step(*a, **k)

    monkeypatch.setattr(mlm, "_train_step", interrupted)
    out = cli_here([*args, "-o", "cut"], tmp_path)
    assert out.returncode == 130 and "--resume" in out.stderr
    assert (tmp_path / "cut.partial" / "last.safetensors").is_file() and not (tmp_path / "cut").exists()
    monkeypatch.setattr(mlm, "_train_step", real_step)
    out = cli_here([*args, "-o", "cut", "--resume"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "resuming at step 15" in out.stderr
    whole, cut = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    assert json.loads((tmp_path / "cut" / "pretrain.json").read_text())["steps"] == 26


@pytest.mark.parametrize(("args", "message"), [
    (["--column", "txet"], "column 'txet' not found (did you mean 'text'?)"),
    (["--column", "number", "--method", "mlm"], "column 'number' is not text"),
    (["--column", "text", "--method", "bert"], "unknown --method 'bert'"),
    (["--column", "text", "--resume"], "nothing to resume"),
    (["--column", "text", "--hidden", "200"], "--hidden 200 must be a multiple of 3"),
])
def test_bad_input_is_one_line_exit_2(cli_here, data, tmp_path, args, message):
    out = cli_here(["pretrain", "--data", str(data), "-o", "enc", "--epochs", "1", *args], tmp_path)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "enc").exists() and not (tmp_path / "enc.partial").exists()


def test_output_inside_a_file_or_existing_folder_is_refused(cli_here, data, tmp_path):
    out = cli_here(["pretrain", "--data", str(data), "-o", f"{data}/enc"], tmp_path)
    assert out.returncode == 2 and "is inside the file" in out.stderr and out.stderr.count("\n") == 1
    (tmp_path / "taken").mkdir()
    out = cli_here(["pretrain", "--data", str(data), "-o", "taken", "--overwrite"], tmp_path)
    assert out.returncode == 2 and "not a folder `loopml pretrain` wrote" in out.stderr


def test_pretrained_reference_that_is_not_a_model_folder(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(LoopmlError, match="is a file"):
        resolve_model(str(tmp_path / "file.txt"))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(LoopmlError, match="a loopml model directory"):
        resolve_model(str(bundle))
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "config.json").write_text("{}")
    (linked / "model.safetensors").symlink_to(outside)
    with pytest.raises(LoopmlError, match="links outside"):
        resolve_model(str(linked))


def test_masking_follows_the_bert_rule():
    ids = torch.randint(5, 300, (64, 40))
    ids[:, 0], ids[:, -1] = mlm.CLS, mlm.SEP
    inputs, labels = mlm.mask_tokens(ids, 0.15, 300, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert 0.12 < chosen.float().mean() < 0.18 and not chosen[:, 0].any() and not chosen[:, -1].any()
    assert torch.equal(labels[chosen], ids[chosen])
    masked = (inputs[chosen] == mlm.MASK).float().mean()
    assert 0.74 < masked < 0.86 and torch.equal(inputs[~chosen], ids[~chosen])
