"""The defaults chosen from the data and the time budget (loopml/train/recipes.py): images and audio only,
the user's keys always win, printed at the start of training, saved in the bundle, not re-chosen on retrain."""

import numpy as np
import pandas as pd
import soundfile as sf
import yaml
from PIL import Image

import loopml
from loopml.config import load_config
from loopml.train.recipe_probe import AudioInfo, DataProfile, ImageInfo, Machine, detect_machine, probe
from loopml.train.recipes import RECIPES, apply_choice, apply_recipe, choose

AMX = Machine("cpu", True, "AMX")
PLAIN_CPU = Machine("cpu", False, "CPU AVX2 without bf16 units")


def _images(rows: int, size: tuple[int, int], channels: int, classes: int = 10) -> DataProfile:
    return DataProfile(rows, round(rows * 0.7), "category", classes, {"image": "image"},
                       images={"image": ImageInfo(size, channels)})


def _resolve(config, profile, machine=AMX):
    recipes = [cls for _, cls in RECIPES if cls.applies(profile, config)]
    choice = choose(config, profile, machine, recipes)
    return apply_choice(config, profile, choice), choice


def _settings(choice) -> dict:
    return {s.key: s.value for s in choice.applied}


def test_image_settings_follow_size_rows_and_channels():
    plain = load_config(None, target="label")
    cifar, choice = _resolve(plain, _images(10_000, (32, 32), 3))
    image, training = cifar.features["image"], cifar.training
    assert image.encoder.type == "airnet" and image.encoder.channels == [32, 64, 128]
    assert image.augment.crop_padding == 4 and image.augment.flip and image.tta == "flip"
    assert training.precision == "bf16" and training.channels_last
    assert training.scheduler.type == "onecycle" and training.scheduler.interval == "step"
    assert training.optimizer.type == "adamw" and training.label_smoothing == 0.1
    assert training.mixup is None and training.ema is not None  # mixing cost accuracy on average (recipe_media.MIXUP)
    assert training.max_time == 900 and training.plan_to_max_time and training.batch_size == 128
    assert choice.budget.source.startswith("default")

    digits, choice = _resolve(plain, _images(10_000, (28, 28), 1))
    assert not digits.features["image"].augment.flip and digits.features["image"].tta == "none"
    assert digits.training.mixup is None  # mixing is for RGB photos
    assert "mirror changes the class" in next(s.reason for s in choice.applied if s.key.endswith("flip"))
    assert digits.training.max_time == 690  # 900 s * 784 / 1024 pixels, to the next 10 s

    small, _ = _resolve(plain, _images(300, (12, 12), 3, classes=2), PLAIN_CPU)
    assert small.features["image"].encoder.channels == [16, 32]  # 12 px: two stages; 210 rows: narrow
    assert small.training.ema is None and small.training.mixup is None and small.training.max_time == 60
    assert small.training.precision == "fp32" and small.training.channels_last  # no fast bf16; NHWC still pays on CPU
    assert small.training.batch_size == 32

    large, _ = _resolve(plain, _images(5_000, (256, 192), 3))
    assert list(large.features["image"].size) == [64, 48]  # the longest side to 64 px on a CPU
    gpu, _ = _resolve(plain, _images(10_000, (32, 32), 3), Machine("cuda", True, "GPU"))
    assert gpu.features["image"].encoder.channels == [64, 128, 256]


def test_a_few_epochs_of_a_few_rows_keep_the_plain_network_and_schedule():
    short, choice = _resolve(load_config(None, target="label", training={"epochs": 2}), _images(300, (16, 16), 3))
    keys = set(_settings(choice))
    assert "features.image.encoder" not in keys and "training.scheduler" not in keys  # ~14 steps in all
    assert short.features["image"].encoder.type == "cnn" and short.training.scheduler.type == "plateau"
    assert short.features["image"].augment.crop_padding == 2 and short.training.label_smoothing == 0.1


def test_the_machine_from_cpu_flags(tmp_path):
    (tmp_path / "amx").write_text("flags\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    (tmp_path / "avx2").write_text("flags\t: fpu avx2\n")
    assert detect_machine("cpu", str(tmp_path / "amx")) == Machine("cpu", True, "AMX")
    assert not detect_machine("cpu", str(tmp_path / "avx2")).fast_bf16
    assert not detect_machine("cpu", str(tmp_path / "missing")).fast_bf16


def test_the_users_keys_win_nested():
    config = load_config({"target": "label", "features": {"image": {
        "type": "image", "augment": {"flip": False}, "encoder": {"type": "airnet", "channels": [8, 16]}}},
        "training": {"optimizer": {"lr": 0.01}, "epochs": 4, "precision": "fp32"}})
    resolved, choice = _resolve(config, _images(10_000, (32, 32), 3))
    image = resolved.features["image"]
    assert image.augment.flip is False and image.tta == "none"  # no mirror at evaluation either
    assert image.augment.crop_padding == 4
    assert image.encoder.type == "airnet" and image.encoder.channels == [8, 16]
    training = resolved.training
    assert training.optimizer.lr == 0.01 and training.optimizer.weight_decay == 5e-4
    assert training.epochs == 4 and training.precision == "fp32" and training.channels_last
    assert {"features.image.augment.flip", "training.optimizer.lr", "training.epochs",
            "features.image.encoder.channels"} <= set(choice.kept)
    other = load_config({"target": "label", "features": {"image": {"type": "image", "encoder": "cnn"}}})
    assert _resolve(other, _images(10_000, (32, 32), 3))[0].features["image"].encoder.type == "cnn"


def test_time_budget_comes_from_the_user_first():
    profile = _images(10_000, (32, 32), 3)
    timed, choice = _resolve(load_config(None, target="label", training={"max_time": 120}), profile)
    assert timed.training.max_time == 120 and choice.budget.source == "training.max_time"
    automl, choice = _resolve(load_config(None, target="label", automl={"time_budget": 300}, learner="automl"),
                              profile)
    assert automl.training.max_time == 300 and choice.budget.source == "--time-budget"
    unlimited, choice = _resolve(load_config(None, target="label", training={"max_time": None}), profile)
    assert unlimited.training.max_time is None and not unlimited.training.plan_to_max_time
    assert unlimited.training.epochs == 50 and "budget none" in choice.describe()


def test_a_model_from_before_the_recipes_is_retrained_as_it_was():
    from types import SimpleNamespace

    from loopml.loop.policy import load_policy
    from loopml.loop.retrain import candidate_config

    old = load_config({"target": "label", "training": {"epochs": 3}})  # no recipe key: an older bundle
    assert candidate_config(SimpleNamespace(config=old), load_policy(None))[0]["recipe"] == "none"
    new = load_config({"target": "label", "recipe": "auto"})
    assert candidate_config(SimpleNamespace(config=new), load_policy(None))[0]["recipe"] == "auto"


def test_tabular_data_and_recipe_none_are_untouched():
    frame = pd.DataFrame({"x": np.arange(40.0), "y": ["a", "b"] * 20})
    config = load_config(None, target="y")
    assert apply_recipe(config, frame) == (config, None)
    images = pd.DataFrame({"image": [np.zeros((8, 8), np.uint8)] * 20, "label": ["a", "b"] * 10})
    off = load_config(None, target="label", recipe="none")
    assert apply_recipe(off, images) == (off, None)
    resolved, choice = apply_recipe(load_config(None, target="label"), images, machine=PLAIN_CPU)
    assert choice is not None and resolved.features["image"].encoder.type == "airnet"


def test_audio_settings_from_the_clips(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        seconds = 1.4 if i == 0 else rng.uniform(0.3, 0.8)  # one long outlier: 99% of clips are under 0.8 s
        path = tmp_path / f"{i}.wav"
        sf.write(path, rng.normal(0, 0.1, int(8000 * seconds)).astype(np.float32), 8000)
        rows.append({"audio": path.name, "label": "ab"[i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "clips.csv", index=False)
    config = load_config(None, target="label")
    profile = probe(config, tmp_path / "clips.csv")
    assert profile.audio["audio"].rate == 8000 and profile.audio["audio"].clips == 40
    resolved, choice = apply_recipe(config, tmp_path / "clips.csv", machine=AMX)
    audio = resolved.features["audio"]
    assert audio.sample_rate == 8000 and audio.n_fft == 256 and audio.hop_length == 80
    assert 0.8 <= audio.duration <= 1.4 and audio.encoder.type == "audio_cnn"
    assert audio.freq_mask == 0 and audio.noise_snr_db is None  # 40 clips: too few for strong augmentation
    assert resolved.training.precision == "fp32"  # the spectrogram front end stays fp32
    big = DataProfile(30_000, 21_000, "category", 10, {"audio": "audio"}, audio={"audio": AudioInfo(44_100, 3.0, 400)})
    settings = _settings(_resolve(load_config(None, target="label"), big)[1])
    assert settings["features.audio.sample_rate"] == 16_000 and settings["features.audio.n_fft"] == 512
    assert settings["features.audio.n_mels"] == 64 and settings["features.audio.freq_mask"] == 6
    assert settings["features.audio.duration"] == 3.0 and settings["features.audio.noise_snr_db"] == 20


def _grey_digits(root, per_class: int = 20):
    rng = np.random.default_rng(0)
    for name, row in (("top", 1), ("bottom", 6)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 40, (8, 8)).astype(np.uint8)
            pixels[row] = 250
            Image.fromarray(pixels, mode="L").save(root / name / f"{i}.png")
    return root


def test_cli_prints_the_block_saves_it_and_a_retrain_keeps_it(tmp_path, cli_here):
    data = _grey_digits(tmp_path / "digits")
    result = cli_here(["train", "--data", str(data), "-o", str(tmp_path / "m"), "--no-track", "--epochs", "2",
                       "--no-cache"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "defaults for 40 grey 8x8 images, 2 classes" in result.stderr
    assert "mirror changes the class" in result.stderr
    saved = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert saved["features"]["image"]["augment"] == {**saved["features"]["image"]["augment"], "flip": False,
                                                     "crop_padding": 1}
    assert saved["training"]["label_smoothing"] == 0.1 and saved["training"]["epochs"] == 2
    assert saved["training"]["plan_to_max_time"] and saved["training"]["max_time"] == 60
    model = loopml.load(tmp_path / "m")
    assert model.info["training"]["recipe"]["settings"]
    again = loopml.Model(str(tmp_path / "m" / "config.yaml")).fit(data, progress=False, cache_dir=False)
    assert again.info["training"]["recipe"]["settings"] == []  # the resolved config sets every key
    assert again.config.model_dump() == model.config.model_dump()


def test_the_api_prints_the_block_and_a_second_fit_chooses_again(tmp_path, capfd):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"image": [rng.integers(0, 255, (8, 8)).astype(np.uint8) for _ in range(30)],
                          "label": ["a", "b"] * 15})
    model = loopml.Model(target="label", training={"epochs": 1})
    model.fit(frame, cache_dir=False)
    assert "defaults for 30 grey 8x8 images" in capfd.readouterr().err
    first = model.config
    model.fit(frame, progress=False, cache_dir=False)
    assert model.config.model_dump() == first.model_dump() and model.info["training"]["recipe"]["settings"]


def test_unreadable_data_is_left_to_preparation(tmp_path):
    config = load_config(None, target="label")
    assert apply_recipe(config, tmp_path / "missing.csv") == (config, None)


def test_mixup_only_where_the_budget_gives_a_long_schedule(monkeypatch):
    # the same 10k photos in 15 min: ~300 bf16 airnet epochs on AMX (the epochs cap: 182), ~90 fp32 ones on a plain
    # AVX2 CPU; 2 minutes give that CPU ~12. Mixing is off by default (it cost accuracy on average on the CIFAR
    # subset); switched on, it keeps to long schedules
    from loopml.train import recipe_media

    photos = _images(10_000, (32, 32), 3)
    assert _resolve(load_config(None, target="label"), photos, AMX)[0].training.mixup is None
    monkeypatch.setattr(recipe_media, "MIXUP", recipe_media.MIXUP_MEASURED)
    plain = load_config(None, target="label")
    amx, _ = _resolve(plain, photos, AMX)
    assert amx.features["image"].encoder.type == "airnet" and amx.training.mixup is not None
    avx2, _ = _resolve(plain, photos, PLAIN_CPU)
    assert avx2.features["image"].encoder.type == "airnet" and avx2.features["image"].encoder.channels == [32, 64, 128]
    assert avx2.training.mixup is not None
    short, _ = _resolve(load_config({"target": "label", "training": {"max_time": 120}}), photos, PLAIN_CPU)
    assert short.training.mixup is None
