"""The device seam (loopml/train/device.py): placement, precision, checkpoints' RNG, compile's fallback.

No GPU here or in CI: CUDA-only paths are checked by what they refuse, and device placement of every
augmentation by running it on PyTorch's "meta" device, which any CPU-created tensor mixed in breaks
(a spy also records every torch call whose result is not on meta: some ops, such as ``gather``,
accept an index on another device there).
"""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import loopml
from loopml.cli import main
from loopml.config import load_config
from loopml.errors import LoopmlError
from loopml.models import audio_encoders as audio
from loopml.models import image_encoders as image
from loopml.models.encoders import TransformerText
from loopml.train.device import (
    CompiledForward,
    autocast,
    check_precision,
    grad_scaler,
    resolve_device,
    rng_state,
    set_rng_state,
    to_device,
)
from loopml.train.trainer import predict_batches

META = torch.device("meta")
Pair = collections.namedtuple("Pair", "left right")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# -- to_device ---------------------------------------------------------------------------------
def test_to_device_recurses_through_dicts_lists_tuples_and_modules():
    t = torch.ones(2, 3)
    moved = to_device({"a": t, "b": [t, (t, 3, "x")], "pair": Pair(t, None), "m": nn.Linear(2, 2)}, META)
    assert moved["a"].device == META and moved["a"].shape == (2, 3)
    assert isinstance(moved["b"], list) and isinstance(moved["b"][1], tuple)
    assert moved["b"][0].device == META and moved["b"][1][0].device == META
    assert moved["b"][1][1:] == (3, "x")  # non-tensors pass through
    assert isinstance(moved["pair"], Pair) and moved["pair"].left.device == META and moved["pair"].right is None
    assert all(p.device == META for p in moved["m"].parameters())
    assert t.device.type == "cpu"  # the source is not changed


def test_to_device_keeps_tensors_already_there_and_none_is_a_no_op():
    t = torch.arange(4)
    assert to_device(t, "cpu") is t
    batch = {"x": t}
    assert to_device(batch, None) is batch


# -- resolving and validating ------------------------------------------------------------------
def test_resolve_device_cpu_auto_and_errors(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")  # auto without CUDA is the CPU
    with pytest.raises(LoopmlError, match="CUDA is not available") as e:
        resolve_device("cuda:1")
    assert "\n" not in str(e.value)
    with pytest.raises(LoopmlError, match="did you mean 'cuda'"):
        resolve_device("cdua")


def test_config_validates_device_and_precision_with_did_you_mean():
    config = load_config({"target": "y", "training": {"device": "CUDA:0", "precision": "BF16"}})
    assert (config.training.device, config.training.precision, config.training.compile) == ("cuda:0", "bf16", False)
    with pytest.raises(LoopmlError, match=r"training\.device.*did you mean 'cuda'"):
        load_config({"target": "y", "training": {"device": "cdua"}})
    with pytest.raises(LoopmlError, match=r"training\.precision.*did you mean 'bf16'"):
        load_config({"target": "y", "training": {"precision": "bf61"}})
    # the spelling is checked at load, availability only when something runs: a GPU model loads anywhere
    assert load_config({"target": "y", "training": {"device": "cuda"}}).training.device == "cuda"


def test_fp16_on_the_cpu_is_one_line_and_bf16_is_allowed():
    with pytest.raises(LoopmlError, match="fp16 needs a GPU") as e:
        check_precision("fp16", torch.device("cpu"))
    assert "\n" not in str(e.value)
    check_precision("bf16", torch.device("cpu"))
    assert not grad_scaler(torch.device("cpu"), "bf16").is_enabled()


def test_fp16_training_on_the_cpu_refused(tabular):
    with pytest.raises(LoopmlError, match="fp16 needs a GPU"):
        loopml.Model(target="label", training={"epochs": 1, "device": "cpu", "precision": "fp16"}).fit(
            tabular[["x1", "label"]], progress=False, cache_dir=False)


def test_cuda_training_without_cuda_is_one_line(tabular, no_cuda):
    with pytest.raises(LoopmlError, match="device 'cuda' asked but CUDA is not available"):
        loopml.Model(target="label", training={"epochs": 1, "device": "cuda"}).fit(tabular, progress=False,
                                                                                 cache_dir=False)


def test_serve_device_cuda_without_cuda_exits_2_with_one_line(tmp_path, capsys, no_cuda):
    code = main(["serve", str(tmp_path / "no-such-model"), "--device", "cuda"])
    out = capsys.readouterr()
    message = (out.out + out.err).strip()
    assert code == 2
    assert message.startswith("error: device 'cuda' asked but CUDA is not available") and "\n" not in message
    assert main(["serve", str(tmp_path), "--device", "gpu"]) == 2
    out = capsys.readouterr()
    assert "device 'gpu' is not one of" in out.out + out.err


# -- precision ---------------------------------------------------------------------------------
def test_bf16_trains_on_the_cpu_and_predicts_float32_after_save_and_load(tabular, tmp_path):
    tabular = tabular[["x1", "x2", "color", "label"]]
    model = loopml.Model(target="label", training={"epochs": 3, "device": "cpu", "precision": "bf16"})
    model.fit(tabular, progress=False, cache_dir=False)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.network.parameters())
    assert np.isfinite([h["train_loss"] for h in model.history]).all()
    scores = model.scores(tabular)
    assert scores.dtype == np.float32
    assert (model.predict(tabular) == tabular["label"]).mean() > 0.7  # it learned in bf16
    fp32 = predict_batches(model.network, model.inputs(tabular), 4096).numpy()
    assert not np.array_equal(fp32, scores) and np.allclose(fp32, scores, atol=0.1)  # predicted in bf16, not fp32
    loaded = loopml.load(model.save(tmp_path / "bf16"))
    assert loaded.config.training.precision == "bf16"
    assert np.array_equal(loaded.scores(tabular), scores)  # the same bf16 inference after the round trip
    assert loaded.scores(tabular).dtype == np.float32


def test_bf16_differs_from_fp32_so_autocast_is_really_on():
    torch.manual_seed(0)
    layer, x = nn.Linear(64, 8), torch.randn(16, 64)
    with torch.inference_mode():
        plain = layer(x)
        with autocast(torch.device("cpu"), "bf16"):
            low = layer(x)
    assert low.dtype == torch.bfloat16 and not torch.equal(low.float(), plain)


def test_predict_batches_returns_float32_on_the_cpu_under_bf16():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, inputs):
            return self.linear(inputs["x"])

    out = predict_batches(Net(), {"x": torch.randn(10, 4)}, 3, precision="bf16")
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (10, 2)


def test_explicit_cpu_device_trains_and_saves_cpu_tensors(tabular, tmp_path):
    from safetensors.torch import load_file

    model = loopml.Model(target="label", training={"epochs": 2, "device": "cpu"}).fit(
        tabular[["x1", "x2", "label"]], progress=False, cache_dir=False)
    folder = model.save(tmp_path / "cpu")
    weights = load_file(str(next(folder.rglob("model.safetensors"))))
    assert weights and all(t.device.type == "cpu" for t in weights.values())


# -- checkpoints' generators -------------------------------------------------------------------
def test_rng_state_holds_the_cuda_generator_only_on_cuda():
    cpu = torch.device("cpu")
    state = rng_state(cpu)
    assert set(state) == {"rng"}
    before = torch.rand(3)
    set_rng_state({**state, "cuda_rng": torch.zeros(16, dtype=torch.uint8)}, cpu)  # ignored on the CPU
    assert torch.equal(torch.rand(3), before)


# -- compile -----------------------------------------------------------------------------------
def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken_compile(network):
        def run(*args, **kwargs):
            raise RuntimeError("backend exploded\nsecond line")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    layer = nn.Linear(3, 2)
    forward = CompiledForward(layer)
    x = torch.randn(4, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = forward(x), forward(x)
    assert torch.equal(first, layer(x)) and torch.equal(second, layer(x))
    messages = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert len(messages) == 1 and "backend exploded" in messages[0] and "second line" not in messages[0]


# -- every augmentation on the input's device ---------------------------------------------------
class OffDevice(TorchFunctionMode):
    """Records every torch call that returns a tensor off the meta device."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device != META for t in tree_leaves(out)):
            self.calls.append(getattr(func, "__name__", str(func)))
        return out


def _on_meta(fn, *args):
    with OffDevice() as spy:
        out = fn(*args)
    assert out.device == META, fn
    assert spy.calls == [], f"{getattr(fn, '__name__', fn)} made tensors off the input's device: {spy.calls}"
    return out


@pytest.mark.parametrize("augment, arg", [
    (image.random_crop, 4), (image.random_crop, 40), (image.random_rotation, 15.0), (image.color_jitter, 0.3),
    (image.cutout, 3),
])
def test_image_augmentations_stay_on_the_input_device(augment, arg):
    _on_meta(augment, torch.empty(4, 3, 8, 8, device=META), arg)


def test_image_input_with_every_augmentation_stays_on_the_input_device():
    from loopml.features.image import AugmentConfig

    params = AugmentConfig(crop_padding=2, flip=True, rotation=10.0, color_jitter=0.2, cutout=3)
    with torch.device(META):
        module = image.ImageInput(3, [0.5] * 3, [0.25] * 3, params).train()
    _on_meta(module, torch.empty(2, 3, 8, 8, dtype=torch.uint8, device=META))


@pytest.mark.parametrize("augment, args", [
    (audio.add_noise, (10.0,)), (audio.random_shift, (5,)),
])
def test_audio_augmentations_stay_on_the_input_device(augment, args):
    _on_meta(augment, torch.empty(4, 100, device=META), *args)


@pytest.mark.parametrize("axis", [1, 2])
def test_spec_augment_masks_stay_on_the_input_device(axis):
    _on_meta(audio.spec_mask, torch.empty(4, 8, 20, device=META), 3, axis)


def test_transformer_positions_and_mask_stay_on_the_input_device():
    with torch.device(META):
        encoder = TransformerText(TransformerText.Params(dim=16, heads=2, layers=1, feedforward=32), vocab_size=50,
                                  max_length=12).train()
    assert encoder.positions.device == META  # a buffer: it moves with the module
    _on_meta(encoder, torch.zeros(3, 10, dtype=torch.long, device=META))


def test_serving_runner_moves_the_network_and_other_backends_stay_on_the_cpu(tabular, monkeypatch):
    import loopml.train.device as device_module
    from loopml.serve.runner import make_runner

    small = tabular[["x1", "color", "label"]]
    network = loopml.Model(target="label", training={"epochs": 1}).fit(small, progress=False, cache_dir=False)
    trees = loopml.Model(target="label", learner="lightgbm").fit(small, progress=False, cache_dir=False)
    runner = make_runner(network)  # default: the CPU, as before
    assert runner.device == torch.device("cpu") and runner.predict([{"x1": 0.5, "color": "red"}])
    monkeypatch.setattr(device_module, "resolve_device", lambda setting: META)  # stands in for a GPU
    runner = make_runner(network, device="cuda")
    assert runner.device == META and all(p.device == META for p in network.network.parameters())
    with pytest.raises(LoopmlError, match="--device cuda is for networks on the torch backend"):
        make_runner(trees, device="cuda")
