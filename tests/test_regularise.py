"""training.mixup, training.ema, training.channels_last and the image feature's tta (issue 19)."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

import loopml
from loopml.config import TrainingConfig, load_config
from loopml.features.image import AugmentConfig
from loopml.models import FeatureSlot, LoopModel
from loopml.models.image_encoders import ResNet
from loopml.train.callbacks import BestModel, Callback, Checkpoint, History
from loopml.train.ema import WeightAverage
from loopml.train.mixing import Mixer, make_mixer
from loopml.train.trainer import TensorData, Trainer

SIZE = 8


def _images(rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [rows, 3, 8, 8]: class 0 is bright on the left, class 1 on the right, class 2 dark; plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(rows) % 3
    x = torch.randint(40, 90, (rows, 3, SIZE, SIZE), generator=g).to(torch.uint8)
    x[y == 0, :, :, : SIZE // 2] = 220
    x[y == 1, :, :, SIZE // 2 :] = 220
    return x, y


def _network(seed: int = 0, tta: str = "none", augment=None, head: str = "category"):
    torch.manual_seed(seed)
    params = ResNet.Params(channels=[8, 16], dropout=0.0)
    slots = [FeatureSlot("img", params, {"channels": 3, "size": (SIZE, SIZE), "mean": [0.4] * 3, "std": [0.3] * 3,
                                         "augment": augment, "tta": tta})]
    return LoopModel(slots, load_config({"target": "y"}).combiner, head, 3 if head == "category" else 1)


def _data(rows: int, seed: int) -> TensorData:
    x, y = _images(rows, seed)
    return TensorData({"img": x}, y)


def _training(**settings) -> TrainingConfig:
    base = {"epochs": 3, "batch_size": 16, "device": "cpu", "scheduler": {"type": "none"},
            "early_stopping": {"patience": 0}, "optimizer": {"lr": 3e-3}}
    return load_config({"target": "y", "training": {**base, **settings}}).training


# -- mixup / cutmix -------------------------------------------------------------------------------------------
def test_mixup_batch_and_loss_weights_follow_the_draw():
    mixer = Mixer(load_config({"target": "y", "training": {"mixup": {"alpha": 0.4}}}).training.mixup, 7, ["img"])
    x, y = _images(12)
    draw = mixer.draw(12, epoch=1, step=3)
    assert draw.method == "mixup" and 0 < draw.lam < 1 and sorted(draw.perm.tolist()) == list(range(12))
    assert mixer.draw(12, 1, 3).perm.tolist() == draw.perm.tolist()  # (seed, epoch, step) decide it: resumable
    mixed, loss_of = mixer.batch({"img": x}, y, F.cross_entropy, epoch=1, step=3)
    expected = draw.lam * x.float() + (1 - draw.lam) * x[draw.perm].float()
    assert mixed["img"].dtype == torch.float32 and torch.allclose(mixed["img"], expected, atol=1e-4)
    assert float(mixed["img"].min()) >= 0 and float(mixed["img"].max()) <= 255
    outputs = torch.randn(12, 3)
    want = draw.lam * F.cross_entropy(outputs, y) + (1 - draw.lam) * F.cross_entropy(outputs, y[draw.perm])
    assert torch.allclose(loss_of(outputs), want)


def test_cutmix_pastes_a_box_and_weights_the_labels_by_the_kept_area():
    config = load_config({"target": "y", "training": {"mixup": {"alpha": 0, "cutmix_alpha": 1.0}}}).training.mixup
    mixer = Mixer(config, 3, ["img"])
    rows = 10
    x = torch.arange(rows, dtype=torch.uint8).view(rows, 1, 1, 1).expand(rows, 3, SIZE, SIZE).contiguous()
    y = torch.arange(rows) % 3
    for step in range(6):
        draw = mixer.draw(rows, 0, step)
        assert draw.method == "cutmix"
        mixed, loss_of = mixer.batch({"img": x}, y, F.cross_entropy, 0, step)
        got = mixed["img"]
        assert got.dtype == torch.uint8
        own = got == x
        partner = got == x[draw.perm]
        assert bool((own | partner).all())  # every pixel is the row's own or its partner's
        moved = draw.perm != torch.arange(rows)
        kept = own[moved].float().mean().item() if moved.any() else 1.0
        # the kept area is the same box for every row; the loss weights it exactly
        outputs = torch.randn(rows, 3)
        want = kept * F.cross_entropy(outputs, y) + (1 - kept) * F.cross_entropy(outputs, y[draw.perm])
        assert torch.allclose(loss_of(outputs), want, atol=1e-6)


def test_both_methods_and_the_probability():
    config = load_config({"target": "y", "training": {"mixup": {"alpha": 0.4, "cutmix_alpha": 1.0, "prob": 0.5}}})
    mixer = Mixer(config.training.mixup, 0, ["img"])
    draws = [mixer.draw(8, 0, step) for step in range(400)]
    mixed = [d for d in draws if d is not None]
    assert 160 < len(mixed) < 240
    cut = sum(d.method == "cutmix" for d in mixed)
    assert 0.35 < cut / len(mixed) < 0.65
    x, y = _images(8)
    step = next(i for i, d in enumerate(draws) if d is None)
    same, loss_of = mixer.batch({"img": x}, y, F.cross_entropy, 0, step)
    outputs = torch.randn(8, 3)
    assert same["img"] is x and torch.equal(loss_of(outputs), F.cross_entropy(outputs, y))


def test_mixup_uses_the_heads_loss_with_class_weights():
    network = _network()
    network.head.class_weights = torch.tensor([1.0, 3.0, 0.5])
    trainer = Trainer(network, _training(mixup={"alpha": 0.4}, epochs=1))
    x, y = _images(12)
    draw = trainer.mixer.draw(12, 0, 0)
    _, loss_of = trainer.mixer.batch({"img": x}, y, trainer.loss_fn, 0, 0)
    outputs = torch.randn(12, 3)
    w = network.head.class_weights
    want = draw.lam * F.cross_entropy(outputs, y, weight=w) + (1 - draw.lam) * F.cross_entropy(outputs, y[draw.perm], weight=w)
    assert torch.allclose(loss_of(outputs), want)


def test_mixup_on_a_binary_head_mixes_the_0_1_targets_losses():
    network = _network(head="binary")
    network.head.class_weights = torch.tensor([1.0, 4.0])
    trainer = Trainer(network, _training(mixup={"alpha": 0.4}, epochs=1))
    x, y = _images(12)
    y = (y == 0).float()
    draw = trainer.mixer.draw(12, 0, 2)
    _, loss_of = trainer.mixer.batch({"img": x}, y, trainer.loss_fn, 0, 2)
    outputs = torch.randn(12)
    want = draw.lam * network.head.loss(outputs, y) + (1 - draw.lam) * network.head.loss(outputs, y[draw.perm])
    assert torch.allclose(loss_of(outputs), want)
    assert not torch.allclose(loss_of(outputs), network.head.loss(outputs, y))


def test_mixup_combines_with_label_smoothing():
    if "label_smoothing" not in TrainingConfig.model_fields:
        pytest.fail("training.label_smoothing is not in the config yet")
    network = _network()
    trainer = Trainer(network, _training(mixup={"alpha": 0.4}, label_smoothing=0.1, epochs=1))
    x, y = _images(12)
    draw = trainer.mixer.draw(12, 0, 0)
    _, loss_of = trainer.mixer.batch({"img": x}, y, trainer.loss_fn, 0, 0)
    outputs = torch.randn(12, 3)
    want = draw.lam * F.cross_entropy(outputs, y, label_smoothing=0.1) \
        + (1 - draw.lam) * F.cross_entropy(outputs, y[draw.perm], label_smoothing=0.1)
    assert torch.allclose(loss_of(outputs), want)


def test_a_trainer_with_mixup_trains_and_its_metrics_use_the_unmixed_labels():
    trainer = Trainer(_network(), _training(mixup={"alpha": 0.4, "cutmix_alpha": 1.0}, epochs=2),
                      [History(), BestModel("loss")], metric_fn=lambda out, y: {"rows": float(len(y))})
    history = trainer.fit(_data(48, 0), _data(24, 1))
    assert len(history) == 2 and all(np.isfinite(h["train_loss"]) for h in history)
    assert history[0]["train_rows"] == 48


def test_mixup_is_refused_for_regression_and_non_image_inputs():
    with pytest.raises(loopml.LoopmlError, match="this target is a number"):
        make_mixer(_network(head="number"), _training(mixup={"alpha": 0.2}))
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"pixels": [rng.integers(0, 255, (SIZE, SIZE)).astype(np.uint8) for _ in range(60)],
                          "age": rng.normal(size=60), "label": ["a", "b", "c"] * 20})
    with pytest.raises(loopml.LoopmlError, match=r"column 'age' is a number input"):
        loopml.Model(target="label", training={"epochs": 1, "mixup": {"alpha": 0.2}}).fit(frame, progress=False)
    frame["score"] = rng.normal(size=60)
    with pytest.raises(loopml.LoopmlError, match="this target is a number"):
        loopml.Model(target="score", exclude=["age", "label"], training={"epochs": 1, "mixup": {"alpha": 0.2}}).fit(
            frame, progress=False)
    with pytest.raises(loopml.LoopmlError, match="does not combine with training.mixup"):
        load_config({"target": "y", "training": {"mixup": {"alpha": 0.2}, "privacy": {"target_epsilon": 5}}})
    with pytest.raises(loopml.LoopmlError, match="this target is a number"):
        load_config({"target": {"column": "y", "type": "number"}, "training": {"mixup": {"alpha": 0.2}}})
    with pytest.raises(loopml.LoopmlError, match="needs alpha > 0"):
        load_config({"target": "y", "training": {"mixup": {"alpha": 0}}})


# -- the weight average -----------------------------------------------------------------------------------------
class _Recorder(Callback):
    """The network's parameters after every optimizer step and its full weights at every epoch end."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.ends: list[dict] = []

    def on_batch_end(self, trainer, step, loss):
        self.steps.append({k: v.detach().clone() for k, v in trainer.model.named_parameters()})

    def on_epoch_end(self, trainer, logs):
        self.ends.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


def test_ema_weights_are_the_hand_computed_average_and_are_what_validates_and_stays():
    decay = 0.8
    network = _network()
    start = {k: v.detach().clone() for k, v in network.named_parameters()}
    recorder = _Recorder()
    best = BestModel("loss")
    trainer = Trainer(network, _training(ema={"decay": decay}, epochs=2), [History(), best, recorder])
    val = _data(24, 1)
    history = trainer.fit(_data(48, 0), val)
    steps_per_epoch = len(recorder.steps) // 2
    for epoch, end in enumerate(recorder.ends):
        average = {k: v.clone() for k, v in start.items()}
        for n, weights in enumerate(recorder.steps[: (epoch + 1) * steps_per_epoch]):
            d = min(decay, (1 + n) / (10 + n))  # the warm-up
            average = {k: d * average[k] + (1 - d) * weights[k] for k in average}
        for name, value in average.items():  # the network at epoch end holds the average (validation used it)
            assert torch.allclose(end[name], value, atol=1e-6), name
        raw = recorder.steps[(epoch + 1) * steps_per_epoch - 1]
        assert any(not torch.allclose(end[k], raw[k]) for k in raw)  # not the training weights
    ema = next(cb for cb in trainer.callbacks if isinstance(cb, WeightAverage))
    for name, value in network.state_dict().items():  # buffers (batch-norm statistics) copied, not averaged
        if "running_mean" in name:
            assert torch.equal(ema.average[name], value)
    final = network.state_dict()
    chosen = recorder.ends[best.best_epoch]
    assert all(torch.equal(final[k], chosen[k]) for k in final)  # the saved weights: the best epoch's average
    network.eval()
    with torch.no_grad():
        loss = float(network.loss(network(val.inputs), val.target))
    assert loss == pytest.approx(history[best.best_epoch]["val_loss"], rel=1e-5)


def _fit_trainer(tmp_path, settings: dict, stop_after_first: bool = False, monkeypatch=None):
    from tests.conftest import stop_after_first_checkpoint

    network = _network(seed=5, augment=AugmentConfig(crop_padding=1, flip=True))
    callbacks = [History(), BestModel("loss"), Checkpoint(tmp_path)]
    trainer = Trainer(network, _training(**settings), callbacks)
    if stop_after_first:
        undo = stop_after_first_checkpoint(monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit(_data(48, 0), _data(24, 1))
        undo()
        return None
    return trainer, trainer.fit(_data(48, 0), _data(24, 1), resume_from=tmp_path)


def test_ema_and_mixup_resume_exactly(tmp_path, monkeypatch):
    settings = {"ema": {"decay": 0.9}, "mixup": {"alpha": 0.4, "cutmix_alpha": 1.0, "prob": 0.7}, "epochs": 3}
    torch.manual_seed(123)
    straight, straight_history = _fit_trainer(tmp_path / "a", settings)
    torch.manual_seed(123)
    _fit_trainer(tmp_path / "b", settings, stop_after_first=True, monkeypatch=monkeypatch)
    resumed, resumed_history = _fit_trainer(tmp_path / "b", settings)
    assert resumed.epoch == 3 and len(resumed_history) == 3
    assert [h["val_loss"] for h in resumed_history] == [h["val_loss"] for h in straight_history]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = (next(cb for cb in t.callbacks if isinstance(cb, WeightAverage)) for t in (straight, resumed))
    assert ema_a.updates == ema_b.updates and all(torch.equal(ema_a.average[k], ema_b.average[k]) for k in a)


# -- channels_last --------------------------------------------------------------------------------------------
def test_channels_last_trains_and_predicts_as_the_standard_layout():
    results = []
    for channels_last in (False, True):
        network = _network(seed=2)
        trainer = Trainer(network, _training(channels_last=channels_last, epochs=2), [History()])
        conv = network.encoders[0].body[0][0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        x = _data(16, 3).inputs
        if channels_last:
            assert not conv.is_contiguous()
            with torch.no_grad():
                assert network.encoders[0].input(x["img"]).is_contiguous(memory_format=torch.channels_last)
        trainer.fit(_data(48, 0), _data(24, 1))
        # after training the network is back in the standard layout: it predicts as it will once saved and loaded
        assert network.encoders[0].body[0][0].weight.is_contiguous()
        network.eval()
        with torch.no_grad():
            results.append((trainer.predict(x), {k: v.contiguous() for k, v in network.state_dict().items()}))
    (out_a, w_a), (out_b, w_b) = results
    assert torch.allclose(out_a, out_b, atol=1e-4)
    assert all(torch.allclose(w_a[k].float(), w_b[k].float(), atol=1e-4) for k in w_a)


def _image_folder(root, rows: int = 90):
    """The images as PNG files in one folder per class (what `loopml export` can replay: paths, not arrays)."""
    from PIL import Image

    x, y = _images(rows)
    for i, (image, label) in enumerate(zip(x, y.tolist(), strict=True)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / f"c{label}" / f"{i}.png")
    return root


def test_channels_last_model_saves_loads_and_exports(tmp_path, monkeypatch):
    from loopml.compress.export import export_model

    # precision and tta explicit: the image recipe (train/recipes.py) fills only what a config leaves unset
    training = {"epochs": 2, "channels_last": True, "ema": {"decay": 0.9}, "precision": "fp32"}
    frame = _image_folder(tmp_path / "images")
    model = loopml.Model(target="label", training=training,
                         features={"image": {"type": "image", "tta": "none", "encoder": {"type": "resnet", "channels": [8, 16]}}})
    model.fit(frame, progress=False, cache_dir=False)
    loaded = loopml.load(model.save(tmp_path / "m"))
    assert np.allclose(loaded.predict_proba(frame).to_numpy(), model.predict_proba(frame).to_numpy(), atol=1e-5)
    monkeypatch.chdir(frame)  # the export replays stored example rows: image paths relative to the data folder
    for fmt in ("onnx", "torchscript"):
        for which, source in (("trained", model), ("loaded", loaded)):
            done = export_model(source, tmp_path / f"{fmt}-{which}", fmt)
            assert done.max_diff < 1e-4, (fmt, which, done.max_diff)


# -- test-time augmentation -------------------------------------------------------------------------------------
def test_tta_flip_averages_the_mirror_in_eval_only():
    plain, flipped = _network(seed=4), _network(seed=4, tta="flip")
    flipped.load_state_dict(plain.state_dict())
    encoder_plain, encoder_flip = plain.encoders[0], flipped.encoders[0]
    x, _ = _images(6)
    plain.eval(), flipped.eval()
    with torch.no_grad():
        want = (encoder_plain(x) + encoder_plain(x.flip(-1))) / 2
        got = encoder_flip(x)
        assert torch.allclose(got, want, atol=1e-5)
        assert not torch.allclose(got, encoder_plain(x), atol=1e-3)  # the mirror does change the features
    plain.train(), flipped.train()
    torch.manual_seed(0)
    a = encoder_plain(x)
    torch.manual_seed(0)
    b = encoder_flip(x)
    assert torch.equal(a, b)  # training is untouched


def test_tta_flip_survives_onnx_and_torchscript_export(tmp_path, monkeypatch):
    from loopml.compress.export import export_model, network_outputs

    frame = _image_folder(tmp_path / "images")
    features = {"image": {"type": "image", "tta": "flip", "encoder": {"type": "resnet", "channels": [8, 16]}}}
    model = loopml.Model(target="label", training={"epochs": 2, "precision": "fp32"}, features=features).fit(
        frame, progress=False, cache_dir=False)
    assert model.learner.network.encoders[0].tta == "flip"
    loaded = loopml.load(model.save(tmp_path / "m"))
    assert loaded.learner.network.encoders[0].tta == "flip"
    monkeypatch.chdir(frame)
    x, _ = _images(8, seed=9)
    for fmt in ("onnx", "torchscript"):
        done = export_model(loaded, tmp_path / fmt, fmt)
        assert done.max_diff <= 1e-5, (fmt, done.max_diff)
        exported = network_outputs(done.folder / ("model.onnx" if fmt == "onnx" else "model.pt"), fmt, (x,))
        encoder = loaded.learner.network.encoders[0]
        encoder.tta = "none"
        try:
            without = loaded.learner.predict_scores({"image": x})
        finally:
            encoder.tta = "flip"
        assert np.abs(exported.reshape(without.shape) - without).max() > 1e-4  # the export really averages the mirror
