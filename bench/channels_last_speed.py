"""training.channels_last vs the standard layout: seconds per training step of the CIFAR ResNet (issue 19).

One batch of 128 random uint8 32x32 RGB images through loopml's ResNet [32, 64, 128] (one block per
stage, examples/cifar10.yaml's network) and a 10-class head: forward + loss under autocast, backward,
an AdamW step. Layouts alternate in rounds so both see the same machine load; the median per step is
reported. ``python -m bench.channels_last_speed [--steps 20] [--rounds 3] [--precision bf16]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from loopml.config import load_config
from loopml.models import FeatureSlot, LoopModel
from loopml.models.image_encoders import ResNet, use_channels_last
from loopml.train.device import autocast


def network(channels_last: bool) -> LoopModel:
    torch.manual_seed(0)
    slot = FeatureSlot("img", ResNet.Params(channels=[32, 64, 128]),
                       {"channels": 3, "size": (32, 32), "mean": [0.5] * 3, "std": [0.25] * 3, "augment": None})
    model = LoopModel([slot], load_config({"target": "y"}).combiner, "category", 10)
    return use_channels_last(model) if channels_last else model


def seconds_per_step(channels_last: bool, steps: int, precision: str) -> float:
    model = network(channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (128, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (128,), generator=g)
    cpu = torch.device("cpu")

    def step() -> None:
        with autocast(cpu, precision):
            loss = F.cross_entropy(model({"img": x}), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: oneDNN picks and caches its kernels
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = parser.parse_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for layout in (False, True):
            times[layout].append(seconds_per_step(layout, args.steps, args.precision))
    plain, last = statistics.median(times[False]), statistics.median(times[True])
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"{args.precision}, batch 128 at 32x32, {args.steps} steps x {args.rounds} rounds")
    print(f"standard layout {plain * 1000:.1f} ms/step, channels_last {last * 1000:.1f} ms/step: "
          f"{plain / last:.2f}x")


if __name__ == "__main__":
    main()
