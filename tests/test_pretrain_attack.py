"""Attacks on ``loopml pretrain`` (mlm) and on models built from a local pretrained encoder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import loopml

TINY = ["--layers", "1", "--hidden", "32", "--vocab-size", "150", "--max-length", "12", "--batch-size", "32",
        "--epochs", "1", "--seed", "1", "--quiet"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _texts(n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    words = {0: ["rain", "storm", "snow"], 1: ["goal", "team", "coach"]}
    return pd.DataFrame([{"text": f"the {rng.choice(words[i % 2])} came {rng.choice(words[i % 2])}", "y": i % 2}
                         for i in range(n)])


@pytest.fixture(scope="module")
def enc_dir(tmp_path_factory):
    """One tiny pretrained encoder for the module (made through the real command, offline)."""
    root = tmp_path_factory.mktemp("enc")
    _texts()[["text"]].to_csv(root / "u.csv", index=False)
    out = subprocess.run([sys.executable, "-m", "loopml", "pretrain", "--data", "u.csv", "--column", "text",
                          "-o", "enc", *TINY], cwd=root, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, **OFFLINE})
    assert out.returncode == 0, out.stderr
    return root / "enc"


PREDICT = """
import json, sys
import loopml
out = {}
for path in sys.argv[2:]:
    out[path] = loopml.load(path).predict_proba(sys.argv[1]).to_numpy().tolist()
print(json.dumps(out))
"""


def test_model_from_local_encoder_survives_deleting_it(cli_here, enc_dir, tmp_path):
    """The bundle carries the encoder's config/tokenizer (and frozen weights): delete enc/, predictions equal."""
    enc = tmp_path / "enc"
    shutil.copytree(enc_dir, enc)
    data = tmp_path / "l.csv"
    _texts().to_csv(data, index=False)
    before = {}
    for mode in ("all", "frozen"):
        (tmp_path / f"{mode}.yaml").write_text(
            f"target: {{column: y}}\nfeatures:\n  text: {{type: text, encoder: {{type: pretrained, model: ./enc, "
            f"trainable: {mode}}}}}\ntraining: {{epochs: 1, seed: 0}}\n")
        out = cli_here(["train", "--data", str(data), "-c", f"{mode}.yaml", "-o", mode, "--no-track", "-q"],
                       tmp_path, env=OFFLINE)
        assert out.returncode == 0, out.stderr
        before[mode] = loopml.load(tmp_path / mode).predict_proba(data).to_numpy()
        bundled = json.loads((tmp_path / mode / "preprocessing.json").read_text())["features"]["text"]["state"]
        assert bundled["pretrained"]["bundled"] == "pretrained/0"
        held = {p.name for p in (tmp_path / mode / "pretrained" / "0").iterdir()}
        assert {"config.json", "tokenizer.json"} <= held
        assert ("model.safetensors" in held) == (mode == "frozen")  # fine-tuned weights live in the network's file
    shutil.rmtree(enc)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for mode in before:
        shutil.move(str(tmp_path / mode), str(moved / mode))
    out = subprocess.run([sys.executable, "-c", PREDICT, str(data), *(str(moved / m) for m in before)],
                         capture_output=True, text=True, timeout=120, env={**__import__("os").environ, **OFFLINE})
    assert out.returncode == 0, out.stderr
    after = json.loads(out.stdout.strip().splitlines()[-1])
    for mode in before:
        np.testing.assert_allclose(np.array(after[str(moved / mode)]), before[mode], rtol=0, atol=1e-6)


def _one_error(out, message: str) -> None:
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("content", ["text,other\n" + '"",1\n' * 20, "text,other\n" + ",1\n" * 20])
def test_empty_named_column_is_named_not_mistaken_for_a_table(cli_here, tmp_path, content):
    # it used to read as an all-missing table column: "--hidden does not apply to --method scarf"
    (tmp_path / "u.csv").write_text(content)
    out = cli_here(["pretrain", "--data", "u.csv", "--column", "text", "-o", "enc", *TINY], tmp_path, env=OFFLINE)
    _one_error(out, "column 'text' is empty")
    assert not (tmp_path / "enc").exists() and not (tmp_path / "enc.partial").exists()


def test_a_column_given_twice_is_pretrained_once(cli_here, tmp_path):
    _texts(40)[["text"]].to_csv(tmp_path / "u.csv", index=False)
    out = cli_here(["pretrain", "--data", "u.csv", "--column", "text", "--column", "text", "-o", "enc", *TINY],
                   tmp_path, env=OFFLINE)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "enc" / "pretrain.json").read_text())
    assert summary["columns"] == ["text"] and summary["texts"] == 40


def test_resume_on_other_data_is_refused_and_keeps_the_checkpoint(cli_here, tmp_path, monkeypatch):
    from loopml.pretrain import mlm

    _texts(120)[["text"]].to_csv(tmp_path / "a.csv", index=False)
    _texts(80)[["text"]].to_csv(tmp_path / "b.csv", index=False)
    monkeypatch.setattr(mlm, "CHECKPOINT_SECONDS", 0.0)
    real_step, calls = mlm._train_step, []

    def interrupted(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real_step(*a, **k)

    monkeypatch.setattr(mlm, "_train_step", interrupted)
    args = ["pretrain", "--column", "text", "-o", "enc", *TINY[:-3], "--epochs", "3", "--batch-size", "16", "-q"]
    assert cli_here([*args, "--data", "a.csv"], tmp_path, env=OFFLINE).returncode == 130
    monkeypatch.setattr(mlm, "_train_step", real_step)
    out = cli_here([*args, "--data", "b.csv", "--resume"], tmp_path, env=OFFLINE)
    _one_error(out, "--resume needs the interrupted run's data: it had 120 texts, this has 80")
    assert (tmp_path / "enc.partial" / "last.safetensors").is_file() and not (tmp_path / "enc").exists()
    out = cli_here([*args, "--data", "a.csv", "--resume"], tmp_path, env=OFFLINE)
    assert out.returncode == 0 and "resuming at step 2" in out.stderr, out.stderr


def test_bundle_never_copies_a_file_linked_from_outside_the_encoder(tmp_path):
    from loopml.errors import LoopmlError
    from loopml.models.pretrained_files import bundle_pretrained, use_bundled

    enc, secret, bundle = tmp_path / "enc", tmp_path / "secret.txt", tmp_path / "bundle"
    enc.mkdir()
    bundle.mkdir()
    secret.write_text("password")
    (enc / "config.json").write_text("{}")
    (enc / "vocab.txt").symlink_to(secret)
    doc = json.dumps({"features": {"t": {"state": {"pretrained": {"model": str(enc), "output": "ids"}}}}})
    with pytest.raises(LoopmlError, match="vocab.txt links outside"):
        bundle_pretrained(doc, bundle)
    (enc / "vocab.txt").unlink()
    bundle = tmp_path / "bundle2"  # write_bundle throws a failed attempt's folder away
    bundle.mkdir()
    rewritten = json.loads(bundle_pretrained(doc, bundle))
    assert sorted(p.name for p in (bundle / "pretrained" / "0").iterdir()) == ["config.json"]
    # a bundled reference may not point outside the bundle it is loaded from
    rewritten["features"]["t"]["state"]["pretrained"]["bundled"] = "../enc"
    with pytest.raises(LoopmlError, match="does not hold"):
        use_bundled(rewritten, bundle)


def test_a_bundled_copy_without_weights_still_lends_its_tokenizer(enc_dir, tmp_path):
    """A trainable teacher's bundle keeps config + tokenizer only: distillation's teacher-tokens reads it."""
    from loopml.errors import LoopmlError
    from loopml.features.text import TextFeature, borrowed_tokenizer
    from loopml.models.pretrained import load_transformer

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(enc_dir / name, copy / name)
    tok = borrowed_tokenizer(str(copy))
    assert tok.encode("the rain came").ids == borrowed_tokenizer(str(enc_dir)).encode("the rain came").ids
    assert TextFeature.tensor_key(type("C", (), {"encoder": None, "pretrained_tokenizer": str(copy)})()) is not None
    with pytest.raises(LoopmlError, match="no safetensors weights"):  # running it as a pretrained model still needs them
        load_transformer(str(copy))
    assert load_transformer(str(copy), weights=False).config.hidden_size == 32
