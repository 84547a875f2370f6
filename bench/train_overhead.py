"""loopml's Trainer vs a minimal hand-written PyTorch loop: same model, same tensors, same work.

Both run E epochs of shuffled mini-batches (same permutation per epoch, same optimizer and
parameter groups, gradient clipping) and compute the validation loss after each epoch. loopml
also runs its default callbacks (history, best-weights tracking, per-epoch progress line,
validation accuracy). Runs are interleaved and repeated; the ratio is of medians.

Then the fixed cost of a whole ``loopml train`` on titanic (default settings: tracked run, report):
wall time of the command split into imports, data preparation, trainer setup (torch.optim's first
use imports torch._dynamo), the epochs, and each step after training (predictions and metrics,
per-split evaluation, permutation importance, reference statistics, the bundle, report.html, the
run's bookkeeping). ``beyond_training_s`` is wall minus the epochs.

    python -m bench.train_overhead [--repeats 3] [--epochs 8] [--breakdown-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
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


#: (module, attribute, phase): wrapped in the child to time each step of `loopml train`
PHASES = [
    ("loopml.api", "Model._prepare", "prepare"),
    ("torch", "use_deterministic_algorithms", "trainer_setup"),  # the first to import torch._dynamo
    ("loopml.train.trainer", "Trainer.__init__", "trainer_setup"),
    ("loopml.train.trainer", "Trainer.fit", "epochs"),
    ("loopml.api", "train", "train_total"),  # the training run: fit, then the evaluation assembly
    ("loopml.evaluate.assemble", "evaluate_split", "evaluation"),
    ("loopml.evaluate.explain", "permutation_importance", "importance"),
    ("loopml.evaluate.assemble", "drift_reference", "reference"),
    ("loopml.api", "Model.save", "save_total"),
    ("loopml.api", "Model.report", "report"),
    ("loopml.api", "Model.fit", "fit_total"),
]


def breakdown_child(argv: list[str]) -> None:
    """Runs `loopml train argv` in this process with each phase timed; prints the times as JSON."""
    import importlib

    began = time.perf_counter()
    import loopml.api  # noqa: F401
    times = {"import_api": time.perf_counter() - began}
    mark = time.perf_counter()
    import loopml.cli as cli

    times["import_cli"] = time.perf_counter() - mark

    def timed(fn, phase):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[phase] = times.get(phase, 0.0) + time.perf_counter() - start
        return wrapper

    for module, attribute, phase in PHASES:
        owner = importlib.import_module(module)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, timed(getattr(owner, name), phase))
    mark = time.perf_counter()
    rc = cli.main(argv)
    times["command"] = time.perf_counter() - mark
    print(json.dumps({"rc": rc, **times}))


def breakdown(repeats: int) -> dict | None:
    """Median phase times of `loopml train` on titanic, each run a fresh process in a fresh folder."""
    if not realdata.available("titanic"):
        return None
    data = (realdata.ROOT / "titanic" / "train.csv").resolve()
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="loopml-overhead-") as tmp:
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                   "LOOPML_STORE": f"sqlite:///{tmp}/registry.db", "LOOPML_ARTIFACTS": f"{tmp}/artifacts",
                   "LOOPML_CACHE_DIR": f"{tmp}/cache"}
            began = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "bench.train_overhead", "--breakdown-child", "train", "-d",
                                  str(data), "-t", "Survived", "-q"], cwd=tmp, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - began
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-1000:])
        times = json.loads(out.stdout.strip().splitlines()[-1])
        times["wall"] = wall
        runs.append(times)
    median = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0] if k != "rc"}
    after = median["train_total"] - median["trainer_setup"] - median["epochs"]
    phases = {
        "python_and_imports": median["wall"] - median["command"],
        "import_loopml_api": median["import_api"],
        "prepare": median["prepare"],
        "trainer_setup": median["trainer_setup"],
        "epochs": median["epochs"],
        "after_epochs_in_fit": after,  # predictions, metrics, evaluation, importance, reference
        "evaluation": median.get("evaluation", 0.0),
        "importance": median.get("importance", 0.0),
        "reference": median.get("reference", 0.0),
        "save_bundle": median["save_total"] - median.get("report", 0.0),
        "report": median.get("report", 0.0),
        "rest_of_command": median["command"] - median["fit_total"] - median["save_total"],  # store, run bookkeeping
    }
    return {"dataset": "titanic", "repeats": repeats, "runs": runs, "median": median, "phases": phases,
            "wall_s": median["wall"], "beyond_training_s": median["wall"] - median["epochs"]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--breakdown-child":
        return breakdown_child(sys.argv[2:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--breakdown-repeats", type=int, default=3, help="`loopml train` runs timed per phase (0: none)")
    parser.add_argument("--skip-loop", action="store_true", help="only the `loopml train` breakdown")
    args = parser.parse_args()
    fixed = breakdown(args.breakdown_repeats) if args.breakdown_repeats else None
    if fixed:
        print(f"titanic `loopml train`: wall {fixed['wall_s']:.2f}s, epochs {fixed['phases']['epochs']:.2f}s, "
              f"beyond the epochs {fixed['beyond_training_s']:.2f}s")
        for phase, seconds in fixed["phases"].items():
            print(f"  {phase:<22} {seconds:6.2f}s")
    runs = []
    if args.skip_loop:
        print("results:", write_result("train_overhead", {"runs": runs, "train_command": fixed}))
        return
    if realdata.available("adult"):
        runs.append(bench_dataset("adult", "income", realdata.adult()[0], args.repeats, args.epochs, {}))
    if realdata.available("sms_spam"):
        runs.append(bench_dataset("sms_spam", "label", realdata.sms_spam(), args.repeats, args.epochs,
                                  {"split": {"duplicates": "drop"}}))
    for r in runs:
        print(f"{r['dataset']}: loopml {r['median_loopml_s']:.2f}s vs hand-written {r['median_hand_s']:.2f}s "
              f"-> ratio {r['ratio']:.3f} ({r['epochs_per_s_loopml']:.2f} vs {r['epochs_per_s_hand']:.2f} epochs/s)")
    print("results:", write_result("train_overhead", {"runs": runs, "train_command": fixed}))


if __name__ == "__main__":
    main()
