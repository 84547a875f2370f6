"""Pretrained text encoders on real text: frozen all-MiniLM-L6-v2 (cached embeddings) vs fine-tuned.

    python -m bench.pretrained_text [--datasets sms_spam ag_news_test] [--ft-epochs 2] [--ft-max-length 48]

Per dataset, default split (stratified, test 0.2; sms_spam drops exact duplicates), seed 42:
(a) frozen: two fits sharing a fresh tensor cache (the first computes the embeddings, the second is
a cache hit), (b) fine-tuned: the top transformer layers train with their own learning rate.
The from-scratch default text encoder's figures come from bench/results/accuracy.json.
Results: bench/results/pretrained_text.json (rewritten after every run, so partial runs keep theirs).
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
from bench import realdata  # noqa: E402
from bench.common import RESULTS, write_result  # noqa: E402

DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
SECTIONS = {"sms_spam": {"split": {"duplicates": "drop"}}, "ag_news_test": {}}
LOADERS = {"sms_spam": realdata.sms_spam, "ag_news_test": realdata.ag_news}


def scratch_baseline(name: str) -> dict | None:
    """The default (from-scratch) text encoder's seed-42 test figures, from the accuracy benchmark."""
    path = RESULTS / "accuracy.json"
    if not path.is_file():
        return None
    for run in json.loads(path.read_text())["runs"]:
        if run["dataset"] == name:
            return {k: v["seed42"] for k, v in run["summary"].items()} | {"seconds": run["per_seed"][0]["seconds"]}
    return None


def run(name: str, frame, text: dict, training: dict, cache_dir: Path | bool) -> dict:
    start = time.perf_counter()
    model = loopml.Model(target="label", **SECTIONS[name], features={"text": {"type": "text", **text}},
                         training={"seed": 42, **training})
    model.fit(frame, progress=False, cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    test, report = model.metrics["test"], model.info["data_report"]
    out = {
        "accuracy": test["accuracy"], "roc_auc": test.get("roc_auc"),
        "seconds_total": seconds, "seconds_prepare": report["prepare_seconds"],
        "seconds_training": model.info["training"]["seconds"], "cache": report["cache"],
        "epochs_run": model.info["training"]["epochs_run"], "best_epoch": model.info["training"]["best_epoch"],
        "max_length": model.preprocessor.features["text"].state["max_length"],
        "sizes": report["sizes"],
    }
    if name == "sms_spam":
        out["spam_f1"] = test["per_class"]["spam"]["f1"]
    shown = ", ".join(f"{k} {out[k]:.4f}" for k in ("accuracy", "spam_f1") if k in out)
    print(f"  {shown}; {seconds:.1f}s (prepare {out['seconds_prepare']:.1f}s, cache {out['cache']}, "
          f"training {out['seconds_training']:.1f}s, {out['epochs_run']} epochs)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--ft-trainable", default="top", choices=["top", "all"])
    parser.add_argument("--ft-top-layers", type=int, default=2)
    parser.add_argument("--ft-epochs", type=int, default=2)
    parser.add_argument("--ft-max-length", type=int, default=48)
    parser.add_argument("--ft-lr", type=float, default=1e-4, help="the encoder's learning rate")
    parser.add_argument("--ft-batch-size", type=int, default=32)
    parser.add_argument("--skip-finetune", action="store_true")
    args = parser.parse_args()
    fine_tune = {"type": "pretrained", "trainable": args.ft_trainable, "lr": args.ft_lr,
                 **({"top_layers": args.ft_top_layers} if args.ft_trainable == "top" else {})}
    result: dict = {"settings": {"model": "minilm (all-MiniLM-L6-v2)", "split": "default (stratified, test 0.2), seed 42",
                                 "frozen": {"encoder": {"type": "pretrained"}, "max_length": "auto"},
                                 "fine_tuned": {"encoder": fine_tune, "max_length": args.ft_max_length,
                                                "epochs": args.ft_epochs, "batch_size": args.ft_batch_size}},
                    "runs": {}}
    for name in args.datasets:
        if not (DATASETS / name).is_dir():
            print(f"{name}: not in {DATASETS}, skipped")
            continue
        frame = LOADERS[name]()
        entry: dict = {"rows": len(frame), "scratch_default": scratch_baseline(name)}
        result["runs"][name] = entry
        with tempfile.TemporaryDirectory() as cache:
            print(f"{name}: frozen, first run (embeddings computed)", flush=True)
            entry["frozen"] = run(name, frame, {"encoder": "pretrained"}, {}, Path(cache))
            print(f"{name}: frozen, second run (tensor cache)", flush=True)
            entry["frozen_cached"] = run(name, frame, {"encoder": "pretrained"}, {}, Path(cache))
        entry["frozen_cache_speedup"] = {
            "prepare": entry["frozen"]["seconds_prepare"] / max(entry["frozen_cached"]["seconds_prepare"], 1e-9),
            "total": entry["frozen"]["seconds_total"] / entry["frozen_cached"]["seconds_total"],
        }
        write_result("pretrained_text", result)
        if not args.skip_finetune:
            print(f"{name}: fine-tuned ({args.ft_trainable})", flush=True)
            entry["fine_tuned"] = run(
                name, frame, {"encoder": fine_tune, "max_length": args.ft_max_length},
                {"epochs": args.ft_epochs, "batch_size": args.ft_batch_size}, False,
            )
            write_result("pretrained_text", result)
    print("results:", write_result("pretrained_text", result))


if __name__ == "__main__":
    main()
