"""The image and audio recipes (registered in train/recipes.py's RECIPES).

The numbers start from what reached the issue-19 goals by hand: examples/cifar10.yaml (ResNet
[32, 64, 128], crop 4 + flip, adamw 3e-3 wd 5e-4) with bf16 reached 0.725 on the CIFAR subset in
450 s (bench/results/vision_defaults.md), examples/fsdd.yaml reached 0.9966 on FSDD's official
split. The network is the ``airnet`` since it learned most per second of CPU training on the CIFAR
subset (bench/image_architectures.py: 0.771 in 150 s of fp32 training, the ResNet 0.647). Mixing,
EMA and label smoothing are parameters here with the values believed in; the ablation in
bench/vision_defaults.py says which stay."""

from __future__ import annotations

import math
from typing import Any

from loopml.config import resolve_feature
from loopml.train.recipe_probe import DataProfile, Machine
from loopml.train.recipes import FULL_BUDGET, RECIPES, REFERENCE_AUDIO_SECONDS, REFERENCE_IMAGE_WORK, Recipe, Setting, TimeBudget

#: optimizer steps a planned training aims at (the epochs cap); the time budget usually ends it sooner
TARGET_STEPS = 10_000
#: the believed-in values, one place for the ablation to switch off (None = off)
LABEL_SMOOTHING = 0.1
#: mixup/cutmix as measured (``training.mixup`` with these values turns it on). Not a default: on the CIFAR subset
#: it cost accuracy on average (test accuracy with minus without, one seed each, bench/results/vision_defaults.md):
#: -1.15 points at 7 ResNet epochs (AVX2, 300 s), -0.65 at ~120 epochs (AMX, 300 s), +0.10 at ~82 epochs
#: (AVX512-BF16, 900 s); label smoothing (+1.3, -0.1, -0.1) and EMA (-0.5, +0.25 and +6 on a loaded AVX2 run)
#: helped on average and stay
MIXUP_MEASURED = {"alpha": 0.2, "cutmix_alpha": 1.0, "prob": 0.5}
MIXUP: dict | None = None
#: mixing and EMA need enough rows (steps) to pay off
MIX_MIN_ROWS = 1_000
#: ... and a long schedule: on the CIFAR subset at 7 epochs (385 steps, bench/vision_defaults.md) mixup/cutmix cost
#: 1.1 points of test accuracy; the ~3,000-step AMX run that reached 0.735 had it on
MIX_MIN_STEPS = 3_000
EMA_MIN_ROWS = 2_000
#: validation rows from which the best epoch is chosen by accuracy rather than by the loss
ACCURACY_MIN_ROWS = 500
#: fewer expected optimizer steps than this (a user's few epochs of a few rows): the plain encoder, optimizer and
#: schedule, not the ResNet (its stacked BatchNorms' running statistics are still off) and onecycle (its warm-up
#: would take most of the steps)
SHORT_STEPS = 100
#: audio: noise and SpecAugment from this many training clips and expected optimizer steps
AUGMENT_MIN_ROWS = 1_000
AUGMENT_MIN_STEPS = 500
#: the longest image side trained on: CPU, GPU
MAX_SIDE = {"cpu": 64, "cuda": 128}
#: seconds per training image at 32x32 for a [32, 64, 128] airnet, measured on 2-core CPUs (bench/results/
#: vision_defaults.md: ~64 ms per batch of 128 in bf16 on an AVX512-BF16 EPYC, ~113 ms in fp32 there and about
#: twice that on an AVX2 EPYC); only for estimates (EMA horizon, warm-up), never for stopping
IMAGE_SECONDS = {("cpu", True): 5e-4, ("cpu", False): 1.3e-3, ("cuda", True): 3e-5, ("cuda", False): 6e-5}


def _batch_size(train_rows: int, machine: Machine) -> int:
    """The reference's 128 (256 on a GPU), halved down to 32 until an epoch has about 40 steps."""
    size = 256 if machine.device == "cuda" else 128
    while size > 32 and train_rows / size < 40:
        size //= 2
    return size


def _planned(profile: DataProfile, batch: int, budget: TimeBudget, seconds_per_row: float,
             config: Any) -> tuple[int, int, int]:
    """(epochs cap, estimated epochs in the budget, steps per epoch); a configured ``epochs`` is the cap."""
    steps = max(1, math.ceil(profile.train_rows / batch))
    cap = int(min(200, max(20, math.ceil(TARGET_STEPS / steps))))
    limit = config.training.epochs if "epochs" in config.training.model_fields_set else cap
    per_epoch = max(1e-3, profile.train_rows * seconds_per_row)
    fits = limit if budget.seconds is None else budget.seconds * 0.9 / per_epoch
    return cap, int(max(1, min(limit, fits))), steps


def _training(profile: DataProfile, machine: Machine, budget: TimeBudget, batch: int, lr: float, wd: float,
              seconds_per_row: float, fast_precision: bool, config: Any) -> list[Setting]:
    """The optimisation settings both recipes share: schedule to the budget, smoothing, EMA, precision."""
    cap, planned, steps = _planned(profile, batch, budget, seconds_per_row, config)
    warmup = round(min(3.0, max(0.5, 0.05 * planned)), 1)
    out = [
        Setting(("training", "batch_size"), batch,
                f"{steps} step{'s' if steps > 1 else ''} per epoch over {profile.train_rows:,} training rows"),
    ]
    if budget.seconds is not None:  # an explicit max_time: null trains the configured epochs, unplanned
        out += [Setting(("training", "epochs"), cap, f"at most ~{TARGET_STEPS:,} steps; plan_to_max_time fits them "
                        "to the budget"),
                Setting(("training", "max_time"), budget.seconds, "the time budget"),
                Setting(("training", "plan_to_max_time"), True, "after the first epoch, re-plan the epochs so the "
                        "schedule anneals fully by the deadline")]
    if planned * steps >= SHORT_STEPS:  # a few dozen steps (a test's 2 epochs of 20 rows) keep the plain ones
        out += [Setting(("training", "optimizer"), {"type": "adamw", "lr": lr, "weight_decay": wd},
                        "the hand-tuned examples' optimizer"),
                Setting(("training", "scheduler"), {"type": "onecycle", "interval": "step", "warmup_epochs": warmup},
                        f"warm-up {warmup:g} epochs, then annealed per step to the planned end")]
    out.append(Setting(("training", "early_stopping", "patience"), 0,
                       "no early stop: the schedule ends with the budget; the best epoch is kept"))
    validation_rows = profile.rows - profile.train_rows  # validation and test: an upper bound for validation alone
    if profile.task != "number" and validation_rows >= 2 * ACCURACY_MIN_ROWS:
        # on a few hundred rows accuracy ties often, and a tie keeps the earlier epoch: the loss is finer there
        out.append(Setting(("training", "early_stopping", "metric"), "accuracy",
                           "the best epoch by validation accuracy (the loss is blurred by smoothing and mixing)"))
    if profile.task != "number" and LABEL_SMOOTHING:
        out.append(Setting(("training", "label_smoothing"), LABEL_SMOOTHING,
                           "softer targets: better calibrated, less over-fitting on small data"))
    total_steps = planned * steps
    if profile.train_rows >= EMA_MIN_ROWS:
        horizon = min(2000.0, max(100.0, total_steps / 10))
        decay = round(1 - 1 / horizon, 4)
        out.append(Setting(("training", "ema"), {"decay": decay}, f"average over the last ~{horizon:.0f} steps "
                           f"(~10% of the ~{total_steps:,} expected); validated and saved"))
    if fast_precision and machine.fast_bf16:
        out.append(Setting(("training", "precision"), "bf16", f"fast bf16 here ({machine.why})"))
    return out


@RECIPES.register("image")
class ImageRecipe(Recipe):
    """Images: an airnet sized from the image side and the rows, crop (+ flip for RGB), schedule to the budget."""

    @classmethod
    def applies(cls, profile: DataProfile, config: Any) -> bool:
        return bool(profile.images)

    @classmethod
    def summary(cls, profile: DataProfile) -> str:
        shapes = ", ".join(f"{'grey' if i.channels == 1 else 'RGB'} {i.size[1]}x{i.size[0]}" for i in profile.images.values())
        return f"{profile.rows:,} {shapes} images, {_classes(profile)}"

    @classmethod
    def work_budget(cls, profile: DataProfile) -> float:
        pixels = max(_trained_size(i.size, "cpu")[0] * _trained_size(i.size, "cpu")[1] for i in profile.images.values())
        return FULL_BUDGET * profile.rows * pixels / REFERENCE_IMAGE_WORK

    @classmethod
    def settings(cls, profile: DataProfile, machine: Machine, budget: TimeBudget, config: Any) -> list[Setting]:
        out: list[Setting] = []
        base = 16 if profile.train_rows < 1_500 else 32 if profile.train_rows < 15_000 else 48
        if machine.device == "cuda":
            base *= 2
        sizes = {column: _trained_size(info.size, machine.device) for column, info in profile.images.items()}
        cost = sum(h * w / 1024 for h, w in sizes.values()) * (base / 32) ** 2
        seconds_per_row = IMAGE_SECONDS[(machine.device if machine.device == "cuda" else "cpu", machine.fast_bf16)] * cost
        batch = _batch_size(profile.train_rows, machine)
        _, planned, steps = _planned(profile, batch, budget, seconds_per_row, config)
        for column, info in profile.images.items():
            size = sizes[column]
            side = min(size)
            stages = 2 if side <= 16 else 3 if side <= 48 else 4  # each block pools by 2: ~3 px left
            widths = [base * 2**i for i in range(stages)]
            rgb = info.channels == 3
            feature = ("features", column)
            augment = resolve_feature(config, "image", config.features.get(column)).augment
            mirror = augment.flip if "flip" in augment.model_fields_set else rgb  # TTA mirrors only if training does
            if size != info.size:
                out.append(Setting((*feature, "size"), list(size), f"{info.size[1]}x{info.size[0]} resized: time per "
                                   f"epoch grows with the pixels ({MAX_SIDE.get(machine.device, 64)} px longest side "
                                   f"on this {machine.device})"))
            if planned * steps >= SHORT_STEPS:
                out.append(Setting((*feature, "encoder"), {"type": "airnet", "channels": widths},
                                   f"patch whitening, then {stages} conv-pool blocks for {side} px, width {base} for "
                                   f"{profile.train_rows:,} training images"))
            crop = max(1, round(side / 8))
            out.append(Setting((*feature, "augment", "crop_padding"), crop, "random shifts of 1/8 of the side"))
            out.append(Setting((*feature, "augment", "flip"), rgb,
                               "RGB photos: a mirror keeps the class" if rgb else "grey images are usually digits or "
                               "characters, where a mirror changes the class (set augment.flip: true if not)"))
            out.append(Setting((*feature, "tta"), "flip" if mirror else "none",
                               "evaluation averages the image and its mirror" if mirror else
                               "no mirror at evaluation: training does not flip"))
        only_images = all(kind == "image" for kind in profile.columns.values())
        rgb_only = all(i.channels == 3 for i in profile.images.values())
        out += _training(profile, machine, budget, batch, 3e-3, 5e-4, seconds_per_row, True, config)
        if machine.device == "cpu" or machine.fast_bf16:  # bench/channels_last_speed: 1.92x AMX bf16, 1.32x AVX2 fp32
            out.append(Setting(("training", "channels_last"), True, "convolutions run faster channels-last here"))
        if MIXUP and profile.task != "number" and only_images and rgb_only and profile.train_rows >= MIX_MIN_ROWS \
                and planned * steps >= MIX_MIN_STEPS:
            out.append(Setting(("training", "mixup"), dict(MIXUP), f"mixup or cutmix on {MIXUP['prob']:.0%} of the "
                               "batches: regularises long schedules on small photo sets"))
        return out


@RECIPES.register("audio")
class AudioRecipe(Recipe):
    """Audio clips: native rate, 99% duration, 32 ms windows / 10 ms hops, SpecAugment, audio_cnn."""

    @classmethod
    def applies(cls, profile: DataProfile, config: Any) -> bool:
        return bool(profile.audio)

    @classmethod
    def summary(cls, profile: DataProfile) -> str:
        clips = ", ".join(f"{i.rate / 1000:g} kHz clips (99% under {i.duration_p99:.2f} s)" for i in profile.audio.values())
        return f"{profile.rows:,} {clips}, {_classes(profile)}"

    @classmethod
    def work_budget(cls, profile: DataProfile) -> float:
        seconds = max(_duration(i.duration_p99) for i in profile.audio.values())
        return FULL_BUDGET * profile.rows * seconds / REFERENCE_AUDIO_SECONDS

    @classmethod
    def settings(cls, profile: DataProfile, machine: Machine, budget: TimeBudget, config: Any) -> list[Setting]:
        out: list[Setting] = []
        widths = [16, 32, 64, 128] if profile.train_rows < 20_000 else [32, 64, 128, 256]
        clip_seconds = max(_duration(i.duration_p99) for i in profile.audio.values())
        batch = 64 if profile.train_rows >= 2_000 else 32
        # ~4 ms per training clip-second here (examples/fsdd.yaml: 178 s for 15 epochs of 2,700 1-s clips)
        seconds_per_row = (4e-3 if machine.device != "cuda" else 2e-4) * clip_seconds
        _, planned, steps = _planned(profile, batch, budget, seconds_per_row, config)
        # noise and SpecAugment slow learning down: on a few hundred clips or steps they cost more than they give
        # (FSDD's 300-clip subset in 12 epochs: 0.95 without them, 0.35 with them)
        strong = profile.train_rows >= AUGMENT_MIN_ROWS and planned * steps >= AUGMENT_MIN_STEPS
        weak = (f"off: {profile.train_rows:,} training clips, ~{planned * steps:,} steps are too few for it to pay "
                "off")
        for column, info in profile.audio.items():
            # what the user set decides the rest (n_fft must fit in a clip of the user's duration and rate)
            given = resolve_feature(config, "audio", config.features.get(column))
            rate = given.sample_rate if "sample_rate" in given.model_fields_set else min(info.rate, 16_000)
            duration = given.duration if "duration" in given.model_fields_set else _duration(info.duration_p99)
            n_fft = min(2 ** round(math.log2(0.032 * rate)), 2 ** int(math.log2(max(16, duration * rate))))
            n_mels = 40 if rate <= 8_000 else 64
            frames = duration * 100
            feature = ("features", column)
            out += [
                Setting((*feature, "sample_rate"), rate, "the clips' own rate: no resampling" if rate == info.rate
                        else f"{info.rate} Hz resampled: 16 kHz keeps speech and most sounds"),
                Setting((*feature, "duration"), duration, f"covers 99% of the clips ({info.clips} probed); longer "
                        "ones are trimmed"),
                Setting((*feature, "n_fft"), n_fft, f"{1000 * n_fft / rate:.0f} ms windows"),
                Setting((*feature, "hop_length"), rate // 100, "10 ms hops"),
                Setting((*feature, "n_mels"), n_mels, "mel bands for this rate"),
                Setting((*feature, "time_shift"), round(0.05 * duration, 3), "random shifts of 5% of the clip"),
                Setting((*feature, "noise_snr_db"), 20.0 if strong else None,
                        "white noise at 20-40 dB SNR on half the clips" if strong else weak),
                Setting((*feature, "freq_mask"), max(1, n_mels // 10) if strong else 0,
                        "SpecAugment: a tenth of the bands" if strong else weak),
                Setting((*feature, "time_mask"), max(1, round(0.08 * frames)) if strong else 0,
                        "SpecAugment: 8% of the frames" if strong else weak),
                Setting((*feature, "encoder"), {"type": "audio_cnn", "channels": widths, "dropout": 0.2},
                        f"four conv blocks see ~half a second; width for {profile.train_rows:,} training clips"),
            ]
        out += _training(profile, machine, budget, batch, 3e-3, 0.01, seconds_per_row, False, config)
        return out


def _trained_size(size: tuple[int, int], device: str) -> tuple[int, int]:
    side = MAX_SIDE.get(device, MAX_SIDE["cpu"])
    h, w = size
    if max(h, w) <= side:
        return (h, w)
    scale = side / max(h, w)
    return (max(8, round(h * scale)), max(8, round(w * scale)))


def _duration(p99: float) -> float:
    return round(min(10.0, max(0.25, math.ceil(p99 * 10) / 10)), 2)


def _classes(profile: DataProfile) -> str:
    return f"{profile.classes} classes" if profile.task != "number" else "a number target"
