"""Images on the shared datasets, CPU only.

1. CIFAR-10 subset (folder layout, stratified 70/10/20) with examples/cifar10.yaml, with and
   without augmentation; MNIST (DataFrame of arrays) with examples/mnist.yaml.
2. Is the input pipeline the bottleneck? Images/s through decode (Pillow, once, then cached as
   uint8) and through the per-batch augmentation, against images/s of a training step.

    python -m bench.images [--skip-train]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import write_result  # noqa: E402
from loopml.api import build_network  # noqa: E402
from loopml.config import load_config  # noqa: E402
from loopml.prepare import prepare  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def train(config: dict, data) -> dict:
    start = time.perf_counter()
    m = loopml.Model(config).fit(data, progress=True)
    return {"test_accuracy": m.metrics["test"]["accuracy"], "validation_accuracy": m.metrics["validation"]["accuracy"],
            "epochs": m.info["training"]["epochs_run"], "best_epoch": m.info["training"]["best_epoch"],
            "train_seconds": m.info["training"]["seconds"], "total_seconds": time.perf_counter() - start,
            "stop_reason": m.info["training"]["stop_reason"]}


def pipeline(config: dict) -> dict:
    """Decode throughput (cold preparation), augmentation throughput, training-step throughput."""
    cfg = load_config(config)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        prepared = prepare(cfg, realdata.cifar10_folder(), cache_dir=Path(cache))
        prepare_s = time.perf_counter() - start
    n_images = sum(len(s) for s in prepared.splits.values() if s is not None)
    train = prepared.splits["train"]
    torch.manual_seed(0)
    net = build_network(prepared.preprocessor, cfg)
    net.train()
    encoder = net.encoders[0]
    batch = train.inputs["image"][:128]
    reps = 20
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(reps):
            encoder.input(batch)
    augment_s = (time.perf_counter() - start) / reps
    opt = torch.optim.AdamW(net.parameters())
    target = train.target[:128]
    times = []
    for _ in range(6):
        start = time.perf_counter()
        loss = net.loss(net({"image": batch}), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    step_s = sorted(times[1:])[len(times[1:]) // 2]
    return {"images": n_images, "decode_images_per_s": n_images / prepare_s,
            "augment_images_per_s": 128 / augment_s, "train_step_images_per_s": 128 / step_s,
            "augment_share_of_step": augment_s / step_s,
            "reading": "decode happens once (cached uint8); per epoch only augmentation runs beside the step"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    cifar = yaml.safe_load((EXAMPLES / "cifar10.yaml").read_text())
    result: dict = {"pipeline": pipeline(cifar)}
    print("pipeline:", result["pipeline"], flush=True)
    if not args.skip_train:
        result["cifar10_augmented"] = train(cifar, realdata.cifar10_folder())
        print("cifar10 with augmentation:", result["cifar10_augmented"], flush=True)
        plain = yaml.safe_load((EXAMPLES / "cifar10.yaml").read_text())
        plain["features"]["image"]["augment"] = {}
        result["cifar10_plain"] = train(plain, realdata.cifar10_folder())
        print("cifar10 without augmentation:", result["cifar10_plain"], flush=True)
        result["mnist"] = train(yaml.safe_load((EXAMPLES / "mnist.yaml").read_text()), realdata.mnist())
        print("mnist:", result["mnist"], flush=True)
    print("results:", write_result("images", result))


if __name__ == "__main__":
    main()
