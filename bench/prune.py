"""`loopml compress --prune 0.5 [--structured]` on adult's MLP: size, latency and accuracy against the original.

    python -m bench.prune [--quick] [--epochs 8] [--fine-tune-epochs 3]

adult, official split (adult.data to train, with loopml's default validation carved from it;
adult.test to test), default features, the network learner with a 3x512 ReLU MLP combiner
(wider than the default [64], so there is something worth pruning), seed 0, trained from parquet
files so its split record points at real rows. Then the same code as `loopml compress`, three
points against that one original, each table measured in its own interleaved run (one thread):

- structured 0.5: half of every hidden layer's units removed (torch-pruning), 3 fine-tune epochs;
- magnitude 0.5: half of the Linear/Embedding weights zeroed (global L1), 3 fine-tune epochs,
  stored dense (so no smaller, no faster: the point is to show it);
- structured 0.5 then dynamic-int8 (ONNX Runtime).

``--quick``: 3,000 training rows, 2 epochs, few latency rounds: a smoke run, marked quick.
Results: bench/results/prune.json and prune.md (prune_quick.* for --quick).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import RESULTS, write_result  # noqa: E402

HIDDEN = [512, 512, 512]
POINTS = (("structured 0.5", True, None), ("magnitude 0.5", False, None), ("structured 0.5 + dynamic-int8", True,
                                                                            "dynamic-int8"))


def train_original(work: Path, quick: bool, epochs: int) -> tuple[Path, float]:
    train, test = realdata.adult()
    if quick:
        train = realdata.subsample(train, 3000, "income", seed=0)
    train.to_parquet(work / "adult_train.parquet", index=False)
    test.to_parquet(work / "adult_test.parquet", index=False)
    start = time.perf_counter()
    model = loopml.Model(target="income", combiner={"type": "concat", "layers": HIDDEN},
                         training={"seed": 0, "epochs": epochs})
    model.fit(str(work / "adult_train.parquet"), test=str(work / "adult_test.parquet"), progress=False, cache_dir=False)
    return model.save(work / "mlp"), time.perf_counter() - start


def markdown(result: dict) -> str:
    s = result["settings"]
    out = [f"# prune: adult MLP {s['hidden']}{' (QUICK smoke run)' if result['quick'] else ''}", "",
           f"Official split: {result['train_rows']} training rows (validation carved from them), {result['test_rows']} "
           f"test rows. Original: {s['epochs']} epochs max (early stopping), {result['fit_seconds']:.0f}s. "
           f"Latency of the network alone, 1 thread, interleaved with the original in the same process "
           f"({s['rounds']['1']} rounds at batch 1, {s['rounds']['64']} at batch 64); each point has its own run.", "",
           "| point | model | parameters | sparsity | network KB | p50 ms b1 | p99 ms b1 | p50 ms b64 | p99 ms b64 | accuracy |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for point in result["points"]:
        t, p = point["tradeoff"], point["tradeoff"]["pruning"]
        for r, counts in zip(t["rows"], (p["original"], p["pruned"]), strict=True):
            out.append(f"| {point['name']} | {r['model']} | {counts['parameters']:,} | {counts['sparsity']:.3f} | "
                       f"{r['network_bytes'] / 1e3:.0f} | {r['p50_ms_batch1']:.3f} | {r['p99_ms_batch1']:.3f} | "
                       f"{r['p50_ms_batch64']:.3f} | {r['p99_ms_batch64']:.3f} | {r['value']:.4f} |")
    out += ["", "Ratios (compressed vs the original measured in the same run):", ""]
    for point in result["points"]:
        q = point["tradeoff"]["ratios"]
        out.append(f"- {point['name']}: {q['smaller_network']:.2f}x smaller network, {q['faster_batch1']:.2f}x faster at "
                   f"batch 1, {q['faster_batch64']:.2f}x at batch 64, accuracy {100 * q['accuracy_change']:+.2f} points "
                   f"(compress {point['seconds']:.0f}s, fine-tune {point['tradeoff']['facts']['fine_tune'].get('epochs_run', 0)}"
                   " epochs).")
    out += ["", "Magnitude pruning is stored dense: its zeros take the room and time of any weight, so it is "
            "neither smaller nor faster; only removing units (structured) or int8 changes size and speed."]
    return "\n".join(out) + "\n"


def main() -> None:
    from loopml.compress.prune import compress_pruned

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a small subset: a smoke run, not the measurement")
    parser.add_argument("--epochs", type=int, default=8, help="the original's epochs (early stopping may end sooner)")
    parser.add_argument("--fine-tune-epochs", type=int, default=3)
    args = parser.parse_args()
    if not realdata.available("adult"):
        print("adult: not in ../shared/datasets, skipped")
        return
    torch.set_num_threads(1)
    epochs = 2 if args.quick else args.epochs
    rounds = {1: 30, 64: 5} if args.quick else {1: 300, 64: 60}
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder, fit_seconds = train_original(work, args.quick, epochs)
        print(f"original: {fit_seconds:.1f}s", flush=True)
        original = loopml.load(folder)
        for i, (name, structured, quantize) in enumerate(POINTS):
            start = time.perf_counter()
            done = compress_pruned(original, folder, {"folder": "adult 3x512 MLP"}, 0.5, work / f"point{i}",
                                   structured=structured, epochs=args.fine_tune_epochs, quantize=quantize, rounds=rounds,
                                   threads=1)
            points.append({"name": name, "seconds": time.perf_counter() - start, "tradeoff": done.table})
            print(f"{name}: {points[-1]['seconds']:.1f}s", flush=True)
    result = {"quick": args.quick, "fit_seconds": fit_seconds,
              "train_rows": points[0]["tradeoff"]["facts"]["fine_tune"].get("train_rows"),
              "test_rows": points[0]["tradeoff"]["test_rows"],
              "settings": {"data": "adult official split", "hidden": HIDDEN, "epochs": epochs, "seed": 0,
                           "fine_tune_epochs": args.fine_tune_epochs, "fraction": 0.5, "threads": 1,
                           "rounds": {str(k): v for k, v in rounds.items()}},
              "points": points}
    name = "prune_quick" if args.quick else "prune"
    path = write_result(name, result)
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    print("results:", path)


if __name__ == "__main__":
    main()
