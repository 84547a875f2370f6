"""Contrastive pretraining (SCARF for tables, SimCLR for images) -> training.init_from round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import stop_after_first_checkpoint
from PIL import Image
from safetensors.torch import load_file

from loopml.config import load_config
from loopml.prepare import prepare
from loopml.pretrain.contrastive import Backbone, nt_xent
from loopml.train.callbacks import Callback
from loopml.train.run import RunOptions, train
from loopml.train.trainer import default_callbacks


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    n = 240
    x1, x2 = rng.normal(size=n), rng.exponential(size=n)
    color = rng.choice(["red", "green", "blue", "teal"], size=n)
    label = np.where(1.5 * x1 - x2 + (color == "red") + rng.normal(scale=0.5, size=n) > 0, "pos", "neg")
    df = pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": label})
    df.to_csv(tmp_path / "labelled.csv", index=False)
    unlabelled = df.drop(columns="label").iloc[:200].copy()
    unlabelled.loc[:9, "color"] = "mauve"  # a category only the unlabelled rows have: its embedding row must come along
    unlabelled.to_csv(tmp_path / "unlabelled.csv", index=False)
    (tmp_path / "cfg.yaml").write_text("target: label\ncombiner: {layers: [16]}\n")
    return tmp_path


@pytest.fixture
def images(tmp_path):
    tmp_path = tmp_path / "pictures"  # beside the table fixture's files, not over them
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for kind, value in (("bright", 230), ("dark", 20)):
        (root / kind).mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(60, 120, size=(12, 12, 3)).astype(np.uint8)
            y, x = rng.integers(0, 6, size=2)
            pixels[y : y + 6, x : x + 6] = value
            Image.fromarray(pixels).save(root / kind / f"{i}.png")
    (tmp_path / "cfg.yaml").write_text(
        "target: label\nfeatures: {image: {type: image, encoder: {type: cnn, channels: [8, 16]}}}\n")
    return tmp_path


class FirstWeights(Callback):
    """The network's weights when training begins (after any initial weights were loaded)."""

    seen: dict = {}

    def on_train_begin(self, trainer) -> None:
        FirstWeights.seen = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _capturing(*args):
    return [*default_callbacks(*args), FirstWeights()]


def _fine_tune(config: dict, data):
    cfg = load_config(config)
    prepared = prepare(cfg, data, cache_dir=False)
    return train(cfg, prepared, RunOptions(progress=False, make_callbacks=_capturing)), prepared


def _pretrain(cli, cwd, *args):
    result = cli(["pretrain", *args, "-q", "--seed", "3"], cwd)
    assert result.returncode == 0, result.stderr
    return result


def test_nt_xent_prefers_matching_views():
    a = torch.randn(8, 4)
    assert nt_xent(a, a + 0.01 * torch.randn(8, 4), 0.5) < nt_xent(a, torch.randn(8, 4), 0.5)


def test_scarf_round_trip_starts_from_the_pretrained_weights(table, cli_here):
    _pretrain(cli_here, table, "--method", "scarf", "-d", "unlabelled.csv", "-c", "cfg.yaml", "-o", "enc",
              "--epochs", "2", "--batch-size", "64")
    summary = json.loads((table / "enc" / "pretrain.json").read_text())
    assert summary["method"] == "scarf" and summary["columns"] == ["x1", "x2", "color"] and summary["combiner"]
    assert len(summary["history"]) == 2 and all(np.isfinite(h["val_loss"]) for h in summary["history"])
    pretrained = load_file(str(table / "enc" / "encoder.safetensors"))
    assert any(k.startswith("combiner.") for k in pretrained) and any(k.startswith("encoders.2.") for k in pretrained)

    config = {"target": "label", "combiner": {"layers": [16]}, "training": {"epochs": 8, "init_from": str(table / "enc")}}
    result, prepared = _fine_tune(config, table / "labelled.csv")
    first = FirstWeights.seen
    for key, tensor in pretrained.items():
        assert torch.equal(first[key], tensor), key
    vocab = prepared.preprocessor.features["color"].state
    assert "mauve" in json.dumps(vocab)  # the pretraining's fitted state, not one refitted on the labelled rows
    assert result.metrics["test"]["accuracy"] > 0.6

    _fine_tune({**config, "training": {"epochs": 1}}, table / "labelled.csv")
    assert not torch.equal(FirstWeights.seen["combiner.mlp.0.weight"], pretrained["combiner.mlp.0.weight"])


def test_simclr_on_an_image_folder_round_trip(images, cli_here):
    result = _pretrain(cli_here, images, "--method", "simclr", "-d", "images", "-c", "cfg.yaml", "-o", "enc",
                       "--epochs", "2", "--batch-size", "16")
    assert "pretrained encoder saved to enc" in result.stdout
    summary = json.loads((images / "enc" / "pretrain.json").read_text())
    assert summary["columns"] == ["image"] and not summary["combiner"] and summary["augment"]["image"]["flip"]
    pretrained = load_file(str(images / "enc" / "encoder.safetensors"))
    assert not any(k.startswith("combiner.") for k in pretrained)

    config = {"target": "label", "features": {"image": {"type": "image", "encoder": {"type": "cnn", "channels": [8, 16]}}},
              "training": {"epochs": 1, "init_from": str(images / "enc")}}
    _fine_tune(config, images / "images")
    for key, tensor in pretrained.items():
        assert torch.equal(FirstWeights.seen[key], tensor), key


def test_resume_after_an_interruption_ends_with_the_same_weights(table, cli_here, monkeypatch):
    args = ["--method", "scarf", "-d", "unlabelled.csv", "-c", "cfg.yaml", "--epochs", "3", "--batch-size", "64"]
    _pretrain(cli_here, table, *args, "-o", "whole")
    resume_normally = stop_after_first_checkpoint(monkeypatch)
    stopped = cli_here(["pretrain", *args, "-o", "cut", "-q", "--seed", "3"], table)
    assert stopped.returncode == 130 and (table / "cut.partial" / "last.safetensors").exists()
    resume_normally()
    _pretrain(cli_here, table, *args, "-o", "cut", "--resume")
    whole, cut = (load_file(str(table / d / "encoder.safetensors")) for d in ("whole", "cut"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    assert json.loads((table / "cut" / "pretrain.json").read_text())["resumed"] is True
    assert not (table / "cut.partial").exists()


def _one_line_error(result, pattern: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert pattern in lines[0], lines[0]


def test_bad_input_is_one_line(table, images, cli_here):
    _pretrain(cli_here, table, "--method", "scarf", "-d", "unlabelled.csv", "-c", "cfg.yaml", "-o", "enc",
              "--epochs", "1")
    train_args = ["train", "-d", "labelled.csv", "-o", "m", "--no-track"]

    def train_with(config: str):
        (table / "ft.yaml").write_text(config)
        return cli_here([*train_args, "-c", "ft.yaml"], table)

    _one_line_error(train_with("target: label\ntraining: {epochs: 1, init_from: enc}\n"),
                    "the combiner tensor 'combiner.mlp.0.")
    assert "there, [64" in train_with("target: label\ntraining: {epochs: 1, init_from: enc}\n").stderr
    _one_line_error(train_with("target: label\ncombiner: {layers: [16]}\ntraining: {epochs: 1, init_from: nowhere}\n"),
                    "training.init_from nowhere: not a folder `loopml pretrain")
    pd.read_csv(table / "labelled.csv").assign(extra=1.0).to_csv(table / "labelled.csv", index=False)
    _one_line_error(train_with("target: label\ncombiner: {layers: [16]}\ntraining: {epochs: 1, init_from: enc}\n"),
                    "input column 'extra' was not in the pretraining")
    _one_line_error(train_with("target: label\ncombiner: {layers: [16]}\nlearner: lightgbm\n"
                               "training: {epochs: 1, init_from: enc}\n"), "learner lightgbm has none")
    _one_line_error(cli_here(["pretrain", "--method", "scarf", "-d", "unlabelled.csv", "-o", "e2", "--corruption",
                              "1.5", "-q"], table), "--corruption must be between 0 and 1")
    _one_line_error(cli_here(["pretrain", "--method", "simclr", "-d", "unlabelled.csv", "-o", "e3", "-q"], table),
                    "no image column among x1, x2, color")
    _one_line_error(cli_here(["pretrain", "--method", "scarf", "-d", "images", "-o", "e4", "-q"], images),
                    "column 'image' is image: scarf pretrains table columns")
    _one_line_error(cli_here(["pretrain", "--method", "simclr", "-d", "images", "-o", "e5", "--corruption", "0.3",
                              "-q"], images), "--corruption does not apply to --method simclr")


def test_backbone_keys_match_the_network():
    from loopml.config import resolve_feature
    from loopml.features.base import FEATURE_TYPES
    from loopml.features.pipeline import Preprocessor
    from loopml.features.target import Target
    from loopml.learners.network import build_network

    cfg = load_config({"target": "y"})
    feature = FEATURE_TYPES.get("number")("a", resolve_feature(cfg, "number", None))
    feature.fit(pd.Series([1.0, 2.0, 3.0]))
    pre = Preprocessor({"a": feature}, Target("y", "number", {"mean": 0.0, "std": 1.0}))
    network = build_network(pre, cfg).state_dict()
    assert set(Backbone(pre.features, cfg, with_combiner=True).state_dict()) <= set(network)
