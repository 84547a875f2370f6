"""loopml's Trainer vs a minimal hand-written PyTorch loop: same model, same tensors, same work.

Both run E epochs of shuffled mini-batches (same permutation per epoch, same optimizer and
parameter groups, gradient clipping) and compute the validation loss after each epoch. loopml
also runs its default callbacks (history, best-weights tracking, per-epoch progress line,
validation accuracy). Runs are interleaved and repeated; the ratio is of medians.

    python -m bench.train_overhead [--repeats 3] [--epochs 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import timer, write_result  # noqa: E402
from loopml.api import build_network  # noqa: E402
from loopml.config import load_config  # noqa: E402
from loopml.prepare import prepare  # noqa: E402
from loopml.train import Trainer, default_callbacks  # noqa: E402
from loopml.train.trainer import param_groups  # noqa: E402


def hand_loop(model, cfg, train, val) -> None:
    """What a careful person writes by hand: the same steps, nothing else."""
    opt = torch.optim.AdamW(param_groups(model, cfg.optimizer.lr), lr=cfg.optimizer.lr,
                            weight_decay=cfg.optimizer.weight_decay)
    n = len(train.target)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        for begin in range(0, n, cfg.batch_size):
            idx = order[begin : begin + cfg.batch_size]
            inputs = {k: v[idx] for k, v in train.inputs.items()}
            loss = model.loss(model(inputs), train.target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
        model.eval()
        with torch.inference_mode():
            model.loss(model(val.inputs), val.target).item()


def bench_dataset(name: str, target: str, frame, repeats: int, epochs: int, extra: dict) -> dict:
    config = load_config({"target": target, **extra,
                          "training": {"epochs": epochs, "early_stopping": {"patience": 0}, "scheduler": {"type": "none"},
                                       "eval_batch_size": 1_000_000}})
    with tempfile.TemporaryDirectory() as cache:
        prepared = prepare(config, frame, cache_dir=Path(cache))
    train, val = prepared.splits["train"], prepared.splits["validation"]
    model_shell = loopml.Model(config)
    model_shell.preprocessor, model_shell.schema = prepared.preprocessor, prepared.schema
    times: dict[str, list[float]] = {"loopml": [], "hand": []}
    for rep in range(repeats):
        for who in (("loopml", "hand") if rep % 2 == 0 else ("hand", "loopml")):
            torch.manual_seed(config.training.seed)
            net = build_network(prepared.preprocessor, config)
            with timer(times[who]):
                if who == "hand":
                    hand_loop(net, config.training, train, val)
                else:
                    callbacks = default_callbacks("loss", 0, 0.0, None, progress=True)
                    Trainer(net, config.training, callbacks, metric_fn=model_shell._epoch_metrics("loss")).fit(train, val)
    lo, hand = statistics.median(times["loopml"]), statistics.median(times["hand"])
    return {
        "dataset": name, "train_rows": len(train), "epochs": epochs, "repeats": repeats,
        "seconds": times, "median_loopml_s": lo, "median_hand_s": hand, "ratio": lo / hand,
        "epochs_per_s_loopml": epochs / lo, "epochs_per_s_hand": epochs / hand,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    runs = []
    if realdata.available("adult"):
        runs.append(bench_dataset("adult", "income", realdata.adult()[0], args.repeats, args.epochs, {}))
    if realdata.available("sms_spam"):
        runs.append(bench_dataset("sms_spam", "label", realdata.sms_spam(), args.repeats, args.epochs,
                                  {"split": {"duplicates": "drop"}}))
    for r in runs:
        print(f"{r['dataset']}: loopml {r['median_loopml_s']:.2f}s vs hand-written {r['median_hand_s']:.2f}s "
              f"-> ratio {r['ratio']:.3f} ({r['epochs_per_s_loopml']:.2f} vs {r['epochs_per_s_hand']:.2f} epochs/s)")
    print("results:", write_result("train_overhead", {"runs": runs}))


if __name__ == "__main__":
    main()
