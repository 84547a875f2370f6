"""Scaling loopml: one section per question, each writing its own bench/results/scale_<section>.json/.md.

Sections (run all, or some with ``--only``):

- ``compile``: ``training.compile: true`` (torch.compile) against eager, on the CPU, in the same run
  and process, on an adult MLP and a small text transformer (sms_spam). The same prepared tensors,
  the same seed and the same Trainer; only ``compile`` differs. Reported per model: the first
  epoch's time (compiling happens there: forward for training, again for evaluation, again when a
  last, smaller batch makes shapes dynamic) as a ratio to eager's, the steady-state epoch time
  (median of the epochs after the first) as eager / compiled (> 1 = compile is faster), the epochs
  it takes to repay the first epoch's extra cost, and both final validation losses (same learning).
- ``ray``: ``ray.init`` start-up and a W-worker Ray Train fit against one process on the same adult
  rows, as ratios (bench/scale_ray.py).
- ``device``: the device seam end to end on ``--device`` (auto: CUDA when there is one) on synthetic
  data: fp32/bf16/fp16 training, resume bit-identical, the serving runner (bench/scale_device.py).

A section is a function ``(args) -> dict`` in ``SECTIONS``; add one there (and its options in
``_arguments``) to extend the bench.

    python -m bench.scale [--only compile] [--epochs 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import realdata  # noqa: E402
from bench.common import RESULTS, write_result  # noqa: E402
from bench.scale_device import device_markdown, section_device  # noqa: E402
from bench.scale_ray import ray_markdown, section_ray  # noqa: E402


# -- compile ---------------------------------------------------------------------------------------
def _compile_cases(rows_adult: int, rows_text: int) -> list[tuple[str, dict, object]]:
    """(name, config, frame): an adult MLP and a small text transformer."""
    cases = []
    if realdata.available("adult"):
        train, _ = realdata.adult()
        cases.append(("adult_mlp", {"target": "income", "combiner": {"type": "concat", "layers": [128, 64]}},
                      realdata.subsample(train, rows_adult, "income")))
    if realdata.available("sms_spam"):
        text = {"type": "text", "max_length": 48,
                "encoder": {"type": "transformer", "dim": 32, "heads": 2, "layers": 1, "feedforward": 64}}
        cases.append(("sms_text_transformer", {"target": "label", "features": {"text": text}},
                      realdata.subsample(realdata.sms_spam(), rows_text, "label")))
    return cases


def _train_epochs(prepared, config, compile_network: bool) -> dict:
    import torch

    from loopml.learners.network import build_network
    from loopml.train.callbacks import History
    from loopml.train.trainer import Trainer

    training = config.training.model_copy(update={"compile": compile_network, "device": "cpu"})
    torch.manual_seed(training.seed)
    network = build_network(prepared.preprocessor, config)
    trainer = Trainer(network, training, [History()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        start = time.perf_counter()
        history = trainer.fit(prepared.splits["train"], prepared.splits["validation"])
        wall = time.perf_counter() - start
    failed = getattr(trainer.forward, "failed", None)
    times = [h["time"] for h in history]
    return {"epoch_s": [round(t, 4) for t in times], "first_epoch_s": times[0],
            "steady_epoch_s": statistics.median(times[1:]), "wall_s": wall, "final_val_loss": history[-1]["val_loss"],
            "compile_failed": failed, "warnings": [str(w.message)[:200] for w in caught if "compile" in str(w.message)]}


def section_compile(args: argparse.Namespace) -> dict:
    import torch

    from loopml.config import load_config
    from loopml.prepare import prepare

    torch.set_num_threads(args.threads)
    out: dict = {"epochs": args.epochs, "threads": args.threads, "models": {}}
    for name, raw, frame in _compile_cases(args.rows_adult, args.rows_text):
        config = load_config({**raw, "training": {"epochs": args.epochs, "early_stopping": {"patience": 0}}})
        prepared = prepare(config, frame, cache_dir=False)
        eager = _train_epochs(prepared, config, False)
        compiled = _train_epochs(prepared, config, True)
        extra_first = compiled["first_epoch_s"] - eager["first_epoch_s"]
        saved_per_epoch = eager["steady_epoch_s"] - compiled["steady_epoch_s"]
        out["models"][name] = {
            "train_rows": len(prepared.splits["train"]),
            "eager": eager, "compiled": compiled,
            "first_epoch_ratio_compiled_to_eager": compiled["first_epoch_s"] / eager["first_epoch_s"],
            "steady_speedup_eager_over_compiled": eager["steady_epoch_s"] / compiled["steady_epoch_s"],
            "epochs_to_repay_compile": (extra_first / saved_per_epoch) if saved_per_epoch > 0 else None,
        }
        print(f"{name}: first epoch x{out['models'][name]['first_epoch_ratio_compiled_to_eager']:.1f}, "
              f"steady speed-up x{out['models'][name]['steady_speedup_eager_over_compiled']:.2f}", flush=True)
    if not out["models"]:
        out["skipped"] = "neither ../shared/datasets/adult nor sms_spam is present"
    return out


def _compile_markdown(result: dict) -> str:
    lines = ["# torch.compile vs eager on the CPU (bench/scale.py --only compile)", "",
             f"{result.get('epochs')} epochs, {result.get('threads')} torch thread(s), same process, same tensors "
             "and seed; ratios from this one run.", "",
             "| model | train rows | eager 1st epoch s | compiled 1st epoch s | 1st-epoch ratio | eager steady s | "
             "compiled steady s | steady speed-up | epochs to repay | val loss eager / compiled |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in result.get("models", {}).items():
        e, c = m["eager"], m["compiled"]
        repay = f"{m['epochs_to_repay_compile']:.0f}" if m["epochs_to_repay_compile"] is not None else "never"
        lines.append(f"| {name} | {m['train_rows']} | {e['first_epoch_s']:.2f} | {c['first_epoch_s']:.2f} | "
                     f"x{m['first_epoch_ratio_compiled_to_eager']:.1f} | {e['steady_epoch_s']:.3f} | "
                     f"{c['steady_epoch_s']:.3f} | x{m['steady_speedup_eager_over_compiled']:.2f} | {repay} | "
                     f"{e['final_val_loss']:.4f} / {c['final_val_loss']:.4f} |")
        if c["compile_failed"]:
            lines.append(f"\ncompile fell back to eager for {name}: {c['compile_failed']}")
    if result.get("skipped"):
        lines.append(f"\nskipped: {result['skipped']}")
    return "\n".join(lines) + "\n"


#: section name -> (run, markdown); each writes bench/results/scale_<name>.json and .md
SECTIONS: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable[[dict], str]]] = {
    "compile": (section_compile, _compile_markdown),
    "ray": (section_ray, ray_markdown),
    "device": (section_device, device_markdown),
}


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run only this section (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--epochs", type=int, default=6, help="compile: epochs per training")
    parser.add_argument("--rows-adult", type=int, default=8000, help="compile: adult rows before the split")
    parser.add_argument("--ray-workers", type=int, default=2, help="ray: Ray Train workers")
    parser.add_argument("--rows-text", type=int, default=2000, help="compile: sms_spam rows before the split")
    parser.add_argument("--device", default="auto", help="device: where to train (auto, cpu, cuda, cuda:N, mps)")
    parser.add_argument("--rows-synthetic", type=int, default=2000, help="device: rows of each synthetic data set")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _arguments().parse_args(argv)
    for name in args.only or list(SECTIONS):
        run, markdown = SECTIONS[name]
        result = run(args)
        path = write_result(f"scale_{name}", result)
        (RESULTS / f"scale_{name}.md").write_text(markdown(json.loads(path.read_text())))
        print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
