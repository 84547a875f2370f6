"""Issue 19's acceptance runs with NO config: the CIFAR-10 subset (a finished CLI run, recorded), MNIST, FSDD.

    script -qc ".venv/bin/loopml train --data ../shared/datasets/cifar10_train_subset/train -o /tmp/cifar_recipe"
    python -m bench.recipe_acceptance cli /tmp/cifar_recipe [--typescript FILE] [--load-before "..."]
    python -m bench.recipe_acceptance mnist      # loopml.Model({"target": "label"}).fit(realdata.mnist())
    python -m bench.recipe_acceptance fsdd       # the official-split table; only what the table needs

Each run is written into bench/results/vision_defaults.json under ``acceptance`` (the markdown
table is regenerated): test accuracy, training seconds, epochs, the printed defaults block, load
averages before/after. The CIFAR entry adds the forward latency (bench/vision_defaults.py's
latency(): uint8 tensors, no JPEG decode) at batch 1 and 64.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench import fsdd, realdata  # noqa: E402
from bench.common import RESULTS, cpu_model  # noqa: E402
from bench.vision_defaults import _load, latency, save  # noqa: E402


def _record(name: str, entry: dict) -> None:
    path = RESULTS / "vision_defaults.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    acceptance = stored.get("acceptance", {})
    acceptance[name] = entry
    save(stored.get("runs", {}), stored.get("max_time", 500.0), acceptance)


def _summary(m: loopml.Model, command: str, goal: str, before: str, seconds: float | None = None) -> dict:
    training = m.info["training"]
    recipe = training.get("recipe") or {}
    return {"command": command, "goal": goal, "test_accuracy": m.metrics["test"]["accuracy"],
            "validation_accuracy": m.metrics["validation"]["accuracy"], "train_seconds": training["seconds"],
            "epochs_run": training["epochs_run"], "best_epoch": training["best_epoch"],
            "epochs_planned": (m.history[-1].get("planned_epochs") if m.history else None),
            "stop_reason": training.get("stop_reason"), "wall_seconds": seconds,
            "printed": recipe.get("printed"), "load_before": before, "load_after": _load(), "machine": cpu_model(),
            "history": [{k: e.get(k) for k in ("epoch", "lr", "val_accuracy", "val_loss", "loss", "planned_epochs")}
                        for e in m.history]}


def cli(args: argparse.Namespace) -> None:
    m = loopml.load(args.model)
    entry = _summary(m, f"loopml train --data {args.data} -o {args.model}", ">= 0.75 in <= 900 s of training",
                     args.load_before or "")
    if args.load_after:
        entry["load_after"] = args.load_after
    net = m.network
    net.eval()
    entry["latency_ms_batch1"] = latency(net, 1, 50)
    entry["latency_ms_batch64"] = latency(net, 64, 10)
    entry["latency_how"] = "bench.vision_defaults.latency(): forward pass on uint8 tensors, median"
    if args.typescript:  # the terminal's output: the printed block as the user saw it
        text = Path(args.typescript).read_text(errors="replace")
        entry["terminal_block"] = text[text.find("defaults for"):].split("\x1b[?25l")[0].strip()
    _record(args.name, entry)
    print(json.dumps({k: v for k, v in entry.items() if k != "history"}, indent=2))


def mnist(args: argparse.Namespace) -> None:
    before, start = _load(), time.perf_counter()
    m = loopml.Model({"target": "label"}).fit(realdata.mnist(), progress=False)
    entry = _summary(m, 'loopml.Model({"target": "label"}).fit(bench.realdata.mnist())', ">= 0.99", before,
                     time.perf_counter() - start)
    entry["sizes"] = m.info.get("data_report", {}).get("sizes")
    _record(args.name, entry)
    print(json.dumps({k: v for k, v in entry.items() if k != "history"}, indent=2))


def fsdd_run(args: argparse.Namespace) -> None:
    before, start = _load(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "fsdd.csv"
        fsdd.fsdd_table(fsdd.RECORDINGS).to_csv(table, index=False)
        m = loopml.Model(fsdd.table_only_config()).fit(table, progress=False, cache_dir=False)
    entry = _summary(m, "python -m bench.fsdd --no-config (target, split column, exclude speaker, media_root)",
                     ">= 0.99 (official split)", before, time.perf_counter() - start)
    entry["sizes"] = m.info.get("data_report", {}).get("sizes")
    _record("fsdd (API, table keys only)", entry)
    print(json.dumps({k: v for k, v in entry.items() if k != "history"}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("cli", help="record a finished no-config CLI run on the CIFAR subset")
    p.add_argument("model")
    p.add_argument("--data", default="../shared/datasets/cifar10_train_subset/train")
    p.add_argument("--typescript", default=None, help="script(1)'s output file")
    p.add_argument("--load-before", default=None)
    p.add_argument("--load-after", default=None)
    p.add_argument("--name", default="cifar10_subset (CLI, no config)", help="the result's key (keep earlier runs)")
    p.set_defaults(run=cli)
    p = sub.add_parser("mnist")
    p.add_argument("--name", default="mnist (API, no config)", help="the result's key (keep earlier runs)")
    p.set_defaults(run=mnist)
    sub.add_parser("fsdd").set_defaults(run=fsdd_run)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
