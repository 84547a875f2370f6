"""Which image config reaches 0.75 test accuracy on the CIFAR-10 subset within a CPU time budget?

Each variant is a full loopml config (YAML written next to the results), trained through the Python
API on /work/shared/datasets/cifar10_train_subset/train (10,000 JPEGs, 32x32, split 70/10/20).
The scheduler is stepped per epoch and knows only ``training.epochs``, so a run cut short by
``training.max_time`` never anneals its learning rate: the script first times a few training steps
of the variant's encoder and sets ``epochs`` to what fits in the budget (``--epochs`` overrides;
on a loaded machine the probe overestimated an epoch 1.5-4x, so pass ``--epochs`` when you know it).
Records test accuracy, training seconds, epochs and forward latency at batch 1 and 64.

Issue 19's recipe (loopml/train/recipes.py): variant ``recipe`` is no config at all (``{target:
label}`` and ``training.max_time``, the same entry point as ``loopml train --data DIR``), and
``recipe_minus_<x>`` is the recipe's resolved config with one default switched off (``recipe:
none``, so nothing else is chosen). The ``recipe`` run also evaluates the same trained network
with ``tta: none`` and ``flip``. bench/recipe_acceptance.py records the no-config CLI / MNIST /
FSDD runs into the same results.

    python -m bench.vision_defaults [--variants examples,cnn_wide] [--max-time 600] [--list]
    python -m bench.vision_defaults --variants recipe,recipe_minus_mixup --max-time 300
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import RESULTS, cpu_model, write_result  # noqa: E402
from loopml.features.image import AugmentConfig  # noqa: E402
from loopml.models.encoders import ENCODERS  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRAIN_ROWS = 7000  # 70 % of 10,000
CIFAR_MEAN, CIFAR_STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def _examples() -> dict:
    return yaml.safe_load((EXAMPLES / "cifar10.yaml").read_text())


def _with(base: dict, encoder: dict | None = None, training: dict | None = None, augment: dict | None = None) -> dict:
    cfg = copy.deepcopy(base)
    if encoder is not None:
        cfg["features"]["image"]["encoder"] = encoder
    if augment is not None:
        cfg["features"]["image"]["augment"] = augment
    for key, value in (training or {}).items():
        cfg["training"][key] = value
    return cfg


def variants() -> dict[str, dict]:
    ex = _examples()
    return {
        # no config at all: what `loopml train --data DIR` does today
        "none": {"target": "label", "split": ex["split"], "training": {}},
        # examples/cifar10.yaml as is (ResNet [32,64,128] x1, crop+flip, AdamW 3e-3, cosine, 1 warm-up epoch)
        "examples": ex,
        # the same under bf16 autocast (training.precision): ~2x faster steps on this AVX512-BF16 CPU
        "examples_bf16": _with(ex, training={"precision": "bf16"}),
        # plain conv-BN-ReLU-pool, twice the width, ~half the MACs of the ResNet: more epochs per budget
        "cnn_wide": _with(ex, encoder={"type": "cnn", "channels": [64, 128, 256], "convs_per_block": 1,
                                       "dropout": 0.1}),
        # ResNet, SGD+Nesterov at a high rate, bigger batches (fewer, cheaper optimizer steps)
        "resnet_sgd": _with(ex, training={"batch_size": 256, "optimizer": {
            "type": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            "scheduler": {"type": "cosine", "warmup_epochs": 2}}),
        # the wide CNN plus cutout (stronger regularisation for 7,000 training images)
        "cnn_wide_cutout": _with(ex, encoder={"type": "cnn", "channels": [64, 128, 256], "convs_per_block": 1,
                                              "dropout": 0.1}, augment={"crop_padding": 4, "flip": True, "cutout": 8}),
        # a deeper ResNet (2 blocks per stage): more accuracy per epoch, fewer epochs
        "resnet_deep": _with(ex, encoder={"type": "resnet", "channels": [32, 64, 128], "blocks_per_stage": 2,
                                          "dropout": 0.1}),
    }


def recipe_variants(max_time: float) -> dict[str, dict]:
    """``recipe`` (no config but the budget) and the recipe's resolved config minus one default each."""
    from loopml.config import load_config
    from loopml.train.recipe_media import MIXUP_MEASURED
    from loopml.train.recipes import apply_recipe

    given = {"target": "label", "training": {"max_time": max_time}}
    resolved, _ = apply_recipe(load_config(given), realdata.cifar10_folder())
    full = resolved.model_dump(mode="json", exclude_unset=True)
    full["recipe"] = "none"
    warmup = full["training"]["scheduler"].get("warmup_epochs", 1)

    def minus(edit) -> dict:
        cfg = copy.deepcopy(full)
        edit(cfg["training"], cfg["features"]["image"])
        return cfg

    return {
        "recipe": given,
        "recipe_minus_label_smoothing": minus(lambda t, f: t.update(label_smoothing=0.0)),
        "recipe_minus_mixup": minus(lambda t, f: t.update(mixup=None)),
        # mixup is off by default since 2026-12-04 (recipe_media.MIXUP_MEASURED): this one puts it back
        "recipe_plus_mixup": minus(lambda t, f: t.update(mixup=dict(MIXUP_MEASURED))),
        "recipe_minus_ema": minus(lambda t, f: t.update(ema=None)),
        "recipe_minus_onecycle": minus(lambda t, f: t.update(scheduler={
            "type": "cosine", "interval": "epoch", "warmup_epochs": max(1, round(warmup))})),
        "recipe_minus_resnet": minus(lambda t, f: f.update(encoder={"type": "cnn"})),  # before the airnet
        "recipe_minus_airnet": minus(lambda t, f: f.update(encoder={"type": "resnet", "channels": [32, 64, 128]})),
        "recipe_minus_tta": minus(lambda t, f: f.update(tta="none")),
        "recipe_minus_bf16": minus(lambda t, f: t.update(precision="fp32")),
        "recipe_minus_channels_last": minus(lambda t, f: t.update(channels_last=False)),
    }


def test_split(config) -> pd.DataFrame:
    """The CIFAR folder's test split as preparation makes it (to re-evaluate a trained model)."""
    from loopml.data.read import read_table
    from loopml.data.split import split_frame
    from loopml.prepare import _positional

    frame = _positional(read_table(realdata.cifar10_folder(), config.data))
    test = split_frame(frame, config.target.column, config.split, True)[0]["test"]
    test.attrs.update(frame.attrs)
    return test


def tta_accuracies(m: loopml.Model) -> dict:
    """Test accuracy of the same trained network with its image encoders' tta none vs flip (no retraining)."""
    encoders = [mod for mod in m.network.modules() if hasattr(mod, "tta")]
    before = [e.tta for e in encoders]
    test = test_split(m.config)
    out = {}
    try:
        for mode in ("none", "flip"):
            for e in encoders:
                e.tta = mode
            out[mode] = m.evaluate(test)["accuracy"]
    finally:
        for e, mode in zip(encoders, before, strict=True):
            e.tta = mode
    return out


def _encoder(cfg: dict) -> torch.nn.Module:
    enc = cfg.get("features", {}).get("image", {}).get("encoder", {"type": "cnn"})
    cls = ENCODERS.get(enc.get("type", "cnn"))
    aug = AugmentConfig(**cfg.get("features", {}).get("image", {}).get("augment", {}))
    return cls(cls.Params(**enc), 3, CIFAR_MEAN, CIFAR_STD, augment=aug)


def seconds_per_epoch(cfg: dict) -> float:
    """Time a few training steps of the encoder + a linear head on random images (+ 15 % for evaluation)."""
    torch.manual_seed(0)
    enc = _encoder(cfg)
    head = torch.nn.Linear(enc.output_dim, 10)
    net = torch.nn.Sequential(enc, head).train()
    opt = torch.optim.AdamW(net.parameters())
    batch = cfg.get("training", {}).get("batch_size", 128)
    x, y = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(10):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    step = sorted(times[3:])[len(times[3:]) // 2]  # the first steps allocate
    return 1.15 * step * -(-TRAIN_ROWS // batch)


def latency(net: torch.nn.Module, batch: int, reps: int) -> float:
    """Median milliseconds of one forward pass (uint8 images in, decoding excluded)."""
    net.eval()
    x = {"image": torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)}
    times = []
    with torch.inference_mode():
        net(x)
        for _ in range(reps):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def run(name: str, cfg: dict, max_time: float, epochs: int | None) -> dict:
    cfg = copy.deepcopy(cfg)
    training = cfg.setdefault("training", {})
    if name.startswith("recipe"):
        pass  # the budget is in the config; plan_to_max_time fits the epochs
    elif name != "none":
        training["max_time"] = max_time
        if epochs:
            training["epochs"] = epochs
        else:
            # 0.9: leave room for the load on a shared machine; the cosine must end inside the budget
            est = seconds_per_epoch(cfg)
            training["epochs"] = max(3, int(0.9 * max_time / est))
            print(f"{name}: ~{est:.1f}s/epoch estimated -> {training['epochs']} epochs", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"vision_defaults_{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    load_before = _load()
    start = time.perf_counter()
    m = loopml.Model(cfg).fit(realdata.cifar10_folder(), progress=False)
    total = time.perf_counter() - start
    info = m.info["training"]
    net = m.network
    out = {"config": cfg, "test_accuracy": m.metrics["test"]["accuracy"],
           "validation_accuracy": m.metrics["validation"]["accuracy"],
           "epochs_planned": training.get("epochs"), "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
           "train_seconds": info["seconds"], "fit_seconds_incl_decode": total, "stop_reason": info["stop_reason"],
           "load_before": load_before, "load_after": _load(), "machine": cpu_model(),
           "max_time": training.get("max_time", max_time),
           "plan": info.get("plan")}
    if info.get("recipe"):
        out["recipe_printed"] = info["recipe"]["printed"]
    if name.startswith("recipe") and net is not None and m.config.features["image"].tta == "flip":
        out["tta"] = tta_accuracies(m)
    if net is not None:
        out["latency_ms_batch1"] = latency(net, 1, 50)
        out["latency_ms_batch64"] = latency(net, 64, 10)
        out["parameters"] = sum(p.numel() for p in net.parameters())
    print(name, {k: v for k, v in out.items() if k != "config"}, flush=True)
    return out


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def write_markdown(results: dict, max_time: float, acceptance: dict | None = None) -> Path:
    lines = ["# Image defaults on the CIFAR-10 subset (bench/vision_defaults.py)", ""]
    if acceptance:  # bench/recipe_acceptance.py: issue 19's no-config runs
        lines += ["## Issue 19 acceptance: no config at all", "",
                  "| data | command | test acc | goal | train s | epochs run (planned) | latency ms b1 / b64 | "
                  "load before → after |", "|---|---|---|---|---|---|---|---|"]
        for name, r in acceptance.items():
            lat = (f"{r['latency_ms_batch1']:.2f} / {r['latency_ms_batch64']:.1f}" if "latency_ms_batch1" in r
                   else "")
            lines.append(f"| {name} | `{r['command']}` | {r['test_accuracy']:.4f} | {r['goal']} | "
                         f"{r['train_seconds']:.0f} | {r['epochs_run']} ({r.get('epochs_planned')}) | {lat} | "
                         f"{r['load_before']} → {r['load_after']} |")
        lines.append("")
    lines += [f"Budget per run: training.max_time as in the budget column (earlier research: {max_time:g} s), "
              "2 CPU cores, shared with other jobs (load averages below; times are inflated). Test split: 2,000 "
              "images. Rows without `recipe` in the name are the earlier research (before the recipe existed).", "",
              "| variant | budget s | test acc | val acc | epochs run/planned | best | train s | s/epoch | latency ms b1 | "
              "b64 | params | load before → after |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r.get('max_time', max_time):g} | {r['test_accuracy']:.4f} | "
                     f"{r['validation_accuracy']:.4f} | "
                     f"{r['epochs_run']}/{r['epochs_planned']} | {r['best_epoch']} | {r['train_seconds']:.0f} | "
                     f"{r['train_seconds'] / max(1, r['epochs_run']):.1f} | "
                     f"{r.get('latency_ms_batch1', float('nan')):.2f} | {r.get('latency_ms_batch64', float('nan')):.1f} | "
                     f"{r.get('parameters', 0):,} | {r['load_before']} → {r['load_after']} |")
        if "tta" in r:  # the same trained network, evaluated without and with the mirror
            lines.append(f"| {name} tta none (same weights) | | {r['tta']['none']:.4f} | | | | | | | | | |")
            lines.append(f"| {name} tta flip (same weights) | | {r['tta']['flip']:.4f} | | | | | | | | | |")
    lines += ["", "Configs: bench/results/vision_defaults_<variant>.yaml. Latency: forward pass of the trained "
              "network on uint8 tensors (no JPEG decode; a `tta: flip` network runs twice), median. The "
              "recipe rows' epochs planned: the cap (plan_to_max_time fits the epochs run to the budget)."]
    path = RESULTS / "vision_defaults.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="examples,cnn_wide", help="comma-separated; --list shows them")
    parser.add_argument("--max-time", type=float, default=600.0, help="training.max_time per run (s)")
    parser.add_argument("--epochs", type=int, default=None, help="fixed epochs instead of fitting them to the budget")
    parser.add_argument("--tag", default="", help="suffix of the result key (keep an earlier run of a variant)")
    parser.add_argument("--seed", type=int, default=None,
                        help="training.seed of every run (split.seed is separate: one test set); "
                             "the result key gets _seed<N>")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    table = {**variants(), **recipe_variants(args.max_time)}
    if args.seed is not None:
        table = {name: with_seed(cfg, args.seed) for name, cfg in table.items()}
        args.tag += f"_seed{args.seed}"
    if args.list:
        for name, cfg in table.items():
            print(name, json.dumps(cfg.get("features", {}).get("image", {})), json.dumps(cfg.get("training", {})))
        return
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(table)}")
    json_path = RESULTS / "vision_defaults.json"
    for name in names:
        stored: dict = json.loads(json_path.read_text()) if json_path.exists() else {}  # re-read: acceptance runs
        results = stored.get("runs", {})
        results[name + args.tag] = run(name + args.tag, table[name], args.max_time, args.epochs)
        # each run keeps its own max_time; the top-level one is the earlier research's default budget
        save(results, stored.get("max_time", args.max_time), stored.get("acceptance", {}))


def with_seed(cfg: dict, seed: int) -> dict:
    """``cfg`` trained with ``seed`` (the split has its own seed: the test set stays one)."""
    cfg = copy.deepcopy(cfg)
    cfg.setdefault("training", {})["seed"] = seed
    return cfg


def save(results: dict, max_time: float, acceptance: dict) -> None:
    write_result("vision_defaults", {"max_time": max_time, "runs": results, "acceptance": acceptance})
    print("results:", write_markdown(results, max_time, acceptance), flush=True)


if __name__ == "__main__":
    main()
