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

    python -m bench.train_overhead [--repeats 3] [--epochs 8] [--breakdown-repeats 3] [--skip-loop]
                                   [--importtime] [--tree-repeats 3]

``--tree-repeats`` times the same command with ``learner: lightgbm`` (its "epochs" are the boosting).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the `loopml train` child (``--breakdown-child``) imports nothing of loopml or torch before its clock
#: starts, so what the command imports lazily is timed in the phase that first needs it
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def hand_loop(model, cfg, train, val) -> None:
    """What a careful person writes by hand: the same steps, nothing else."""
    import torch
    from torch import nn

    from loopml.train.trainer import param_groups

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
    import torch

    import loopml
    from bench.common import timer
    from loopml.api import build_network
    from loopml.config import load_config
    from loopml.prepare import prepare
    from loopml.train import Trainer, default_callbacks

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
    ("loopml.learners.trees", "TreeLearner.fit", "epochs"),  # `--learner lightgbm`: the boosting rounds
    ("loopml.api", "train", "train_total"),  # the training run: fit, then the evaluation assembly
    ("loopml.evaluate.assemble", "evaluate_split", "evaluation"),
    ("loopml.evaluate.explain", "permutation_importance", "importance"),
    ("loopml.evaluate.assemble", "drift_reference", "reference"),
    ("loopml.api", "Model.save", "save_total"),
    ("loopml.api", "Model.report", "report"),
    ("loopml.api", "Model.fit", "fit_total"),
]


def breakdown_child(argv: list[str]) -> None:
    """Runs `loopml train argv` in this process with each phase timed; prints the times as JSON.

    A phase's module is wrapped when it is first imported (``_WrapOnImport``), so wrapping imports
    nothing the command itself would not (a tree learner's run does not import torch here either).
    """
    began = time.perf_counter()
    import loopml.cli as cli

    times = {"import_cli": time.perf_counter() - began}
    mark = time.perf_counter()
    import loopml.api  # noqa: F401  (the train command's first import)

    times["import_api"] = time.perf_counter() - mark

    def timed(fn, phase):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[phase] = times.get(phase, 0.0) + time.perf_counter() - start
        return wrapper

    def wrap(module) -> None:
        for name_, attribute, phase in PHASES:
            if name_ == module.__name__:
                owner = module
                *path, name = attribute.split(".")
                for part in path:
                    owner = getattr(owner, part)
                setattr(owner, name, timed(getattr(owner, name), phase))

    pending = {module for module, _, _ in PHASES}
    for module in sorted(pending):
        if module in sys.modules:
            wrap(sys.modules[module])
    sys.meta_path.insert(0, _WrapOnImport(pending - set(sys.modules), wrap))
    times["modules_before_command"] = sorted(m for m in ("torch", "sklearn", "scipy", "matplotlib", "lightgbm")
                                             if m in sys.modules)
    mark = time.perf_counter()
    rc = cli.main(argv)
    times["command"] = time.perf_counter() - mark
    times["modules_after_command"] = sorted(m for m in ("torch", "torch._dynamo", "sklearn", "scipy", "matplotlib",
                                                        "lightgbm") if m in sys.modules)
    print(json.dumps({"rc": rc, **times}))


class _WrapOnImport:
    """A meta-path finder that lets the normal finders load a module, then calls ``wrap(module)``."""

    def __init__(self, names: set[str], wrap) -> None:
        self.names, self.wrap = names, wrap

    def find_spec(self, name, path, target=None):
        if name not in self.names:
            return None
        self.names.discard(name)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute, wrap = spec.loader.exec_module, self.wrap

        def exec_module(module):
            execute(module)
            wrap(module)

        spec.loader.exec_module = exec_module
        return spec


#: packages whose import time ``--importtime`` reports (cumulative, where the command first imports them)
IMPORTS = ("typer", "sqlalchemy", "pandas", "torch", "torch._dynamo", "sklearn", "scipy", "matplotlib", "lightgbm")


def import_times(stderr: str) -> dict[str, float]:
    """Seconds per package in IMPORTS from ``python -X importtime`` output (first import of each)."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line.split("|")
        name = name.strip()
        if name in IMPORTS and name not in out:
            out[name] = int(cumulative) / 1e6
    return out


def breakdown(repeats: int, learner: str = "network", importtime: bool = False) -> dict | None:
    """Median phase times of `loopml train` on titanic, each run a fresh process in a fresh folder.
    ``importtime``: one more run under ``python -X importtime`` for the import cost of each big package."""
    from bench import realdata

    if not realdata.available("titanic"):
        return None
    data = (realdata.ROOT / "titanic" / "train.csv").resolve()
    runs, imports = [], None
    for rep in range(repeats + importtime):
        with tempfile.TemporaryDirectory(prefix="loopml-overhead-") as tmp:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "LOOPML_STORE": f"sqlite:///{tmp}/registry.db",
                   "LOOPML_ARTIFACTS": f"{tmp}/artifacts", "LOOPML_CACHE_DIR": f"{tmp}/cache"}
            argv = ["train", "-d", str(data), "-t", "Survived", "-q"]
            if learner != "network":
                # titanic's Name is text, which a tree learner cannot take
                Path(tmp, "config.yaml").write_text(f"learner: {learner}\nexclude: [Name]\n")
                argv += ["-c", "config.yaml"]
            flags = ["-X", "importtime"] if rep == repeats else []
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = time.perf_counter()
            out = subprocess.run([sys.executable, *flags, "-m", "bench.train_overhead", "--breakdown-child", *argv],
                                 cwd=tmp, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - began
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-1000:])
        if flags:
            imports = import_times(out.stderr)
            continue
        times = json.loads(out.stdout.strip().splitlines()[-1])
        if times["rc"] != 0:
            raise RuntimeError(f"loopml train exited {times['rc']}: {out.stderr[-1000:]}")
        # CPU seconds of the whole command (all its threads): steadier than wall on a shared machine
        times["wall"], times["cpu"] = wall, after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime
        runs.append(times)
    numeric = [k for k, v in runs[0].items() if isinstance(v, float)]
    median = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in numeric}
    median.update({k: median.get(k, 0.0) for k in ("trainer_setup", "epochs", "train_total", "save_total", "fit_total")})
    after = median["train_total"] - median["trainer_setup"] - median["epochs"]
    phases = {
        "python_and_imports": median["wall"] - median["command"],  # interpreter, the CLI and loopml.api
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
    return {"dataset": "titanic", "learner": learner, "repeats": repeats, "runs": runs, "median": median,
            "phases": phases, "imports": imports, "modules_imported": runs[0].get("modules_after_command"),
            "wall_s": median["wall"], "cpu_s": median["cpu"], "beyond_training_s": median["wall"] - median["epochs"]}


def print_breakdown(fixed: dict) -> None:
    print(f"titanic `loopml train` ({fixed['learner']}): wall {fixed['wall_s']:.2f}s, epochs "
          f"{fixed['phases']['epochs']:.2f}s, beyond the epochs {fixed['beyond_training_s']:.2f}s "
          f"(CPU {fixed['cpu_s']:.2f}s in all)")
    for phase, seconds in fixed["phases"].items():
        print(f"  {phase:<22} {seconds:6.2f}s")
    if fixed["imports"]:
        print("  imports (-X importtime, one run): "
              + ", ".join(f"{k} {v:.2f}s" for k, v in fixed["imports"].items()))
    print(f"  imported by the command: {', '.join(fixed['modules_imported'] or [])}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--breakdown-child":
        return breakdown_child(sys.argv[2:])
    from bench import realdata
    from bench.common import write_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--breakdown-repeats", type=int, default=3, help="`loopml train` runs timed per phase (0: none)")
    parser.add_argument("--skip-loop", action="store_true", help="only the `loopml train` breakdown")
    parser.add_argument("--importtime", action="store_true", help="one more run under -X importtime: per-package cost")
    parser.add_argument("--tree-repeats", type=int, default=0,
                        help="also time `loopml train` with `learner: lightgbm` (0: not)")
    args = parser.parse_args()
    fixed = breakdown(args.breakdown_repeats, importtime=args.importtime) if args.breakdown_repeats else None
    trees = breakdown(args.tree_repeats, "lightgbm", args.importtime) if args.tree_repeats else None
    for result in (fixed, trees):
        if result:
            print_breakdown(result)
    runs = []
    if args.skip_loop:
        print("results:", write_result("train_overhead", {"runs": runs, "train_command": fixed,
                                                          "train_command_lightgbm": trees}))
        return
    if realdata.available("adult"):
        runs.append(bench_dataset("adult", "income", realdata.adult()[0], args.repeats, args.epochs, {}))
    if realdata.available("sms_spam"):
        runs.append(bench_dataset("sms_spam", "label", realdata.sms_spam(), args.repeats, args.epochs,
                                  {"split": {"duplicates": "drop"}}))
    for r in runs:
        print(f"{r['dataset']}: loopml {r['median_loopml_s']:.2f}s vs hand-written {r['median_hand_s']:.2f}s "
              f"-> ratio {r['ratio']:.3f} ({r['epochs_per_s_loopml']:.2f} vs {r['epochs_per_s_hand']:.2f} epochs/s)")
    print("results:", write_result("train_overhead", {"runs": runs, "train_command": fixed,
                                                      "train_command_lightgbm": trees}))


if __name__ == "__main__":
    main()
