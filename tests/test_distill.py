"""`loopml compress --distill`: a student network trained on a teacher's soft targets, as an ordinary bundle.

Tiny teachers (a few hundred rows, 2-3 epochs) trained from CSV files, so their split records point at
real rows. Every text row carries a unique token ``rN`` (its row id), so the test can tell which rows
reached the student's training.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

import loopml
from loopml.cli import main
from loopml.compress import distill as distill_module
from loopml.compress.distill import distill
from loopml.compress.tradeoff import FIELDS
from loopml.config import DistillConfig
from loopml.models.heads import CategoryHead
from loopml.train.soft_targets import combine, training_loss

ROUNDS = {1: 5, 64: 2}


def _text_frame(n: int = 300, seed: int = 1, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    good, bad, filler = ["good", "great", "fine"], ["bad", "poor", "awful"], ["item", "the", "was", "very", "it"]
    rows = []
    for i in range(n):
        pos = rng.random() < 0.5
        words = list(rng.choice(good if pos else bad, size=2)) + list(rng.choice(filler, size=rng.integers(1, 4)))
        rng.shuffle(words)
        rows.append({"note": " ".join(words) + f" r{start + i}", "label": "pos" if pos else "neg"})
    return pd.DataFrame(rows)


def _tabular_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    df = pd.DataFrame(x, columns=["a", "b", "c"])
    df["label"] = np.where(x[:, 0] - x[:, 1] > 0, "up", np.where(x[:, 2] > 0, "left", "down"))
    return df


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    out = {}
    small_bag = {"note": {"type": "text", "encoder": {"type": "bag", "ngram_buckets": 1000}}}
    for name, frame, features in (("text", _text_frame(200), small_bag), ("tabular", _tabular_frame(160), {})):
        csv = root / f"{name}.csv"
        frame.to_csv(csv, index=False)
        model = loopml.Model(target="label", features=features, training={"epochs": 2, "seed": 0}).fit(
            str(csv), progress=False, cache_dir=False)
        out[name] = (model.save(root / name), frame)
    return root, out


def _row_ids(texts) -> set[int]:
    return {int(m.group(1)) for t in texts for m in [re.search(r"\br(\d+)$", str(t))] if m}


def test_soft_target_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    outputs = torch.randn(4, 3)
    teacher_logits = torch.randn(4, 3)
    teacher_log_p = F.log_softmax(teacher_logits, dim=1)
    hard = torch.tensor([2, 0, 1, 1])
    labelled = torch.tensor([True, True, False, True])
    target = combine(hard, labelled, teacher_log_p)

    class Net(torch.nn.Module):  # the head's loss: plain cross-entropy
        head = CategoryHead(1, 3)

        def loss(self, out, y):
            return F.cross_entropy(out, y)

    t, alpha = 2.0, 0.3
    got = training_loss(Net(), DistillConfig(temperature=t, alpha=alpha))(outputs, target)
    # by hand: CE over the labelled rows; T^2 * KL(p_teacher,T || p_student,T) averaged over all rows
    o, z = outputs.double().numpy(), teacher_logits.double().numpy()

    def softmax(a):
        e = np.exp(a - a.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    rows = [0, 1, 3]
    ce = np.mean([-np.log(softmax(o)[r, hard[r].item()]) for r in rows])
    p, q = softmax(z / t), softmax(o / t)
    kl = np.mean((p * (np.log(p) - np.log(q))).sum(1))
    assert float(got) == pytest.approx(alpha * ce + (1 - alpha) * t * t * kl, rel=1e-5)
    # a plain 1-D target is ordinary training
    assert float(training_loss(Net(), DistillConfig())(outputs, hard)) == pytest.approx(float(F.cross_entropy(outputs, hard)))


def test_text_teacher_to_bag_student_with_unlabelled_rows(teachers, tmp_path, monkeypatch, capsys):
    _, built = teachers
    folder, frame = built["text"]
    teacher = loopml.load(folder)
    unlabelled = _text_frame(60, seed=7, start=10_000).drop(columns=["label"])
    path = tmp_path / "more.csv"
    unlabelled.to_csv(path, index=False)
    seen: list[pd.DataFrame] = []
    real = distill_module.teacher_scores
    monkeypatch.setattr(distill_module, "teacher_scores", lambda t, f, target: seen.append(f) or real(t, f, target))
    result = distill(teacher, folder, {"folder": folder.name}, "bag", tmp_path / "student", unlabelled=str(path),
                     rounds=ROUNDS, training={"epochs": 2})
    student = loopml.load(result.path)
    # an ordinary network bundle: the bag encoder, distillation in its resolved config
    assert student.learner.registered_name == "network" and student.network is not None
    assert student.config.features["note"].encoder.type == "bag"
    # the bag reads TF-IDF-weighted word and char n-grams (a bag of word tokens distils 3 points lower on ag_news)
    assert student.config.features["note"].tokenizer == "tfidf"
    assert student.network.encoders[0].weighted
    assert student.config.training.distill.temperature == 2.0 and student.config.training.distill.alpha == 0.5
    # the teacher labelled its own training rows and the unlabelled ones, never a validation or test row
    from loopml.compress.quantize import original_splits

    splits = original_splits(teacher, None, None, None)
    trained = _row_ids(seen[0]["note"])
    assert trained == _row_ids(splits["train"]["note"]) | set(range(10_000, 10_060))
    assert not trained & (_row_ids(splits["validation"]["note"]) | _row_ids(splits["test"]["note"]))
    assert student.info["manifest"]["distillation"]["unlabelled_rows"] == 60
    # measured on the teacher's own test rows; the table in compress.json and the report
    table = json.loads((result.path / "compress.json").read_text())
    assert table["split"] == "test" and table["test_rows"] == len(splits["test"])
    assert [r["model"].split(" ")[0] for r in table["rows"]] == ["teacher", "student"]
    for row in table["rows"]:
        assert all(field in row for field in FIELDS) and row["p99_ms_batch1"] >= row["p50_ms_batch1"] > 0
    assert "Compression trade-off" in (result.path / "report.html").read_text()
    assert student.metrics["test"]["accuracy"] == pytest.approx(table["rows"][1]["value"])
    # it reads the teacher's split record: the same rows again, from the teacher's file
    again = original_splits(student, None, None, None)
    assert _row_ids(again["test"]["note"]) == _row_ids(splits["test"]["note"])
    assert list(student.predict(frame.head(3))) == list(student.predict(frame.head(3)))


def test_cli_tabular_mlp_student_registers_with_lineage(teachers, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _, built = teachers
    folder, frame = built["tabular"]
    store = f"sqlite:///{tmp_path / 'r.db'}"
    code = main(["compress", str(folder), "--distill", "--student", "mlp", "--alpha", "0.2", "-o", str(tmp_path / "s"),
                 "--register", "tab", "--store", store, "--artifacts", str(tmp_path / "art")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "student (mlp, distilled)" in out and "registered tab:1" in out
    student = loopml.load(tmp_path / "s")
    assert student.config.training.distill.alpha == 0.2
    assert set(student.predict(frame.head(20))) <= {"up", "left", "down"}
    from loopml.registry import Store

    version = Store(store, str(tmp_path / "art")).resolve("tab:1")
    assert version["lineage"]["distilled_from"] == {"folder": folder.name}


def test_bad_student_and_misfit_configs_exit_2_and_write_nothing(teachers, tmp_path, capsys):
    _, built = teachers
    folder, _ = built["text"]
    out = tmp_path / "s"
    assert main(["compress", str(folder), "--distill", "--student", "bagg", "-o", str(out)]) == 2
    assert "did you mean 'bag'" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text("target: note\ntraining: {epochs: 1}\n")
    number = tmp_path / "number.yaml"
    number.write_text("target: {column: label, type: number}\n")
    trees = tmp_path / "trees.yaml"
    trees.write_text("learner: lightgbm\n")
    for config, says in ((other, "not the teacher's target"), (number, "does not fit the teacher's binary target"),
                         (trees, "cannot be distilled into")):
        assert main(["compress", str(folder), "--distill", "--student", str(config), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1
    assert main(["compress", str(folder), "--distill", "--student", "bag", "--unlabelled", str(tmp_path / "no.csv"),
                 "-o", str(out)]) == 2
    capsys.readouterr()
    for temperature in ("inf", "1e200"):  # T^2 of an infinite temperature is a NaN loss: refused, not an internal error
        assert main(["compress", str(folder), "--distill", "--student", "bag", "--temperature", temperature,
                     "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--temperature must be positive and at most 1000" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="less than or equal to 1000"):
        DistillConfig(temperature=float("inf"))
    assert not out.exists() and not list(Path(tmp_path).glob(".s*"))


def test_regression_and_binary_soft_terms():
    from loopml.models.heads import BinaryHead, RegressionHead

    outputs = torch.tensor([0.5, -1.0, 2.0])
    hard, teacher = torch.tensor([1.0, 0.0, 1.5]), torch.tensor([0.0, -0.5, 1.0])
    labelled = torch.tensor([True, False, True])
    number = torch.nn.Module()
    number.head = RegressionHead(1, 1)
    number.loss = number.head.loss
    got = training_loss(number, DistillConfig(alpha=0.25))(outputs, combine(hard, labelled, teacher))
    hand = 0.25 * np.mean([(0.5 - 1.0) ** 2, (2.0 - 1.5) ** 2]) + 0.75 * np.mean([0.25, 0.25, 1.0])
    assert float(got) == pytest.approx(hand)
    binary = torch.nn.Module()
    binary.head = BinaryHead(1, 1)
    binary.loss = binary.head.loss
    hard01 = torch.tensor([1.0, 0.0, 1.0])
    got = training_loss(binary, DistillConfig(alpha=0.0, temperature=1.0))(outputs, combine(hard01, labelled, teacher))
    p, q = torch.sigmoid(teacher).double().numpy(), torch.sigmoid(outputs).double().numpy()
    kl = np.mean(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)))
    assert float(got) == pytest.approx(kl, rel=1e-5)
