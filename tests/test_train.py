import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, needs_dataset
from safetensors.torch import load_file

import loopml
from loopml.api import build_network
from loopml.config import load_config
from loopml.prepare import prepare
from loopml.train import Callback, Trainer, default_callbacks


def _fit(df, **sections):
    return loopml.Model(target="label", **sections).fit(df, progress=False)


def test_same_seed_gives_identical_weights_and_history(tabular):
    a = _fit(tabular, training={"epochs": 4})
    b = _fit(tabular, training={"epochs": 4})
    for (name, p), (_, q) in zip(a.network.state_dict().items(), b.network.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    c = _fit(tabular, training={"epochs": 4, "seed": 7})
    assert [h["train_loss"] for h in c.history] != [h["train_loss"] for h in a.history]


def test_learns_the_synthetic_signal(tabular):
    m = _fit(tabular, training={"epochs": 30})
    assert m.metrics["test"]["accuracy"] >= 0.85
    assert len(m.history) <= 30 and {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(m.history[0])


@pytest.mark.parametrize(
    "optimizer,scheduler,check",
    [
        ({"type": "sgd", "lr": 0.1, "momentum": 0.9}, {"type": "step", "step_size": 2, "gamma": 0.5},
         lambda lrs: lrs[:4] == pytest.approx([0.1, 0.05, 0.05, 0.025])),
        ({"type": "adam", "lr": 0.01}, {"type": "cosine", "warmup_epochs": 2},
         lambda lrs: lrs[0] == pytest.approx(0.0055) and lrs[1] == pytest.approx(0.01) and lrs[-1] < lrs[2]),
        ({"type": "adamw", "lr": 0.01}, {"type": "none"}, lambda lrs: set(lrs) == {0.01}),
    ],
)
def test_optimizers_and_schedules(tabular, optimizer, scheduler, check):
    # lr is logged after the epoch's schedule step; the bag encoder has its own group, so log group 0
    m = _fit(tabular, training={"epochs": 6, "optimizer": optimizer, "scheduler": scheduler,
                                "early_stopping": {"patience": 0}})
    lrs = [h["lr"] for h in m.history]
    assert len(lrs) == 6 and check(lrs), lrs


def test_early_stopping_on_a_chosen_metric(tabular):
    m = _fit(tabular, training={"epochs": 40, "early_stopping": {"metric": "roc_auc", "patience": 3}})
    aucs = [h["val_roc_auc"] for h in m.history]
    assert m.info["training"]["best_epoch"] == int(np.argmax(aucs))
    assert len(aucs) < 40 and "early stopping" in m.info["training"]["stop_reason"]
    with pytest.raises(loopml.LoopmlError, match="did you mean 'roc_auc'"):
        _fit(tabular, training={"early_stopping": {"metric": "roc_aux"}})


def test_custom_callback_sees_every_epoch(tabular):
    class Recorder(Callback):
        def __init__(self):
            self.epochs, self.batches = [], 0

        def on_batch_end(self, trainer, step, loss):
            self.batches += 1

        def on_epoch_end(self, trainer, logs):
            self.epochs.append(logs["epoch"])

    config = load_config({"target": "label", "training": {"epochs": 3, "batch_size": 64}})
    prepared = prepare(config, tabular)
    recorder = Recorder()
    net = build_network(prepared.preprocessor, config)
    callbacks = default_callbacks("loss", 0, 0.0, None, progress=False) + [recorder]
    Trainer(net, config.training, callbacks).fit(prepared.splits["train"], prepared.splits["validation"])
    assert recorder.epochs == [0, 1, 2]
    assert recorder.batches == 3 * -(-len(prepared.splits["train"]) // 64)


def test_preprocessing_cache_hit_gives_the_same_tensors(tabular):
    config = load_config({"target": "label"})
    cold, warm = prepare(config, tabular), prepare(config, tabular)
    assert cold.report["cache"] == "miss" and warm.report["cache"] == "hit"
    for name in ("train", "validation", "test"):
        for col, t in cold.splits[name].inputs.items():
            assert torch.equal(t, warm.splits[name].inputs[col])
    # a different preprocessing setting is a different key; an encoder setting is not
    shorter = load_config({"target": "label", "defaults": {"text": {"max_length": 5}}})
    other_encoder = load_config({"target": "label", "defaults": {"text": {"encoder": "bilstm"}}})
    assert prepare(shorter, tabular).report["cache"] == "miss"
    assert prepare(other_encoder, tabular).report["cache"] == "hit"


@needs_dataset("adult")
def test_kill_9_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    from bench import realdata

    train, _ = realdata.adult()
    data = tmp_path / "adult.csv"
    train.sample(6000, random_state=0).to_csv(data, index=False)
    config = tmp_path / "cfg.yaml"
    config.write_text("target: income\ntraining: {epochs: 6, early_stopping: {patience: 0}}\n")
    env = {**os.environ, "LOOPML_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "loopml", "train", "--data", str(data), "--config", str(config), "-q"]

    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["-o", str(killed_out)], env=env, cwd=tmp_path)
    checkpoint = tmp_path / "killed.partial" / "last.safetensors"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed_out.exists()  # no half-written model

    done = subprocess.run(cmd + ["-o", str(killed_out), "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    history = json.loads((killed_out / "history.json").read_text())
    assert history["resumed"] is True and len(history["epochs"]) == 6
    assert not (tmp_path / "killed.partial").exists()

    straight = subprocess.run(cmd + ["-o", str(tmp_path / "straight")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    a = load_file(str(killed_out / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "straight" / "history.json").read_text())["epochs"]
    assert [e["train_loss"] for e in history["epochs"]] == [e["train_loss"] for e in ha]


def test_train_and_help_exist_as_commands():
    out = subprocess.run([sys.executable, "-m", "loopml", "train", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "--resume" in out.stdout
