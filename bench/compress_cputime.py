"""Thread-CPU time beside wall time for bench.compress's pair (torch fp32 vs dynamic-int8), for a loaded machine.

    python -m bench.compress_cputime [--rounds1 100] [--rounds64 16]

Wall-clock p50s on a shared 2-core machine swing with the load (batch-64 ratio 1.8-2.3x over runs); each
call's CPU time of the calling thread (both models run on it: torch ``set_num_threads(1)``, ONNX Runtime
``intra_op_num_threads=1``) does not count the time the thread waits to be scheduled. Same cached
fine-tune as bench.compress (run that first), same interleaving. Results: bench/results/compress_cputime.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench.common import write_result  # noqa: E402
from bench.compress import CACHE, cpu_flags  # noqa: E402


def main() -> None:
    import torch

    from loopml.compress.quantize import compress, original_splits
    from loopml.compress.tradeoff import _with_threads, runner

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds1", type=int, default=100)
    parser.add_argument("--rounds64", type=int, default=16)
    args = parser.parse_args()
    folder = CACHE / "sms_spam-minilm-e2-l48" / "minilm"
    if not (folder / "config.yaml").is_file():
        print("no cached fine-tune: run python -m bench.compress first")
        return
    original = loopml.load(folder)
    test = original_splits(original, None, None, None)["test"]
    result: dict = {"cpu_flags": cpu_flags(), "test_rows": len(test), "batches": {}}
    with tempfile.TemporaryDirectory() as work:
        compressed = loopml.load(compress(original, folder, {"folder": "x"}, "dynamic-int8", Path(work) / "q",
                                          rounds={1: 3, 64: 1}).path)
        torch.set_num_threads(1)
        for m in (original, compressed):
            m.learner.task = _with_threads(m.learner.task, 1)
        (prep_o, run_o), (prep_c, run_c) = runner(original), runner(compressed)
        n = len(test)
        for batch, count in ((1, args.rounds1), (64, args.rounds64)):
            rows = [test.iloc[np.arange(i * batch, i * batch + batch) % n] for i in range(count)]
            inputs = {"fp32": [prep_o(r) for r in rows], "int8": [prep_c(r) for r in rows]}
            run = {"fp32": run_o, "int8": run_c}
            for name in run:
                run[name](inputs[name][0])  # warm-up
            wall: dict[str, list[float]] = {"fp32": [], "int8": []}
            cpu: dict[str, list[float]] = {"fp32": [], "int8": []}
            for i in range(count):
                for name in ("fp32", "int8") if i % 2 == 0 else ("int8", "fp32"):
                    w, c = time.perf_counter(), time.thread_time()
                    run[name](inputs[name][i])
                    cpu[name].append((time.thread_time() - c) * 1000.0)
                    wall[name].append((time.perf_counter() - w) * 1000.0)
            p50 = {f"{kind}_{name}_ms": float(np.median(v)) for kind, d in (("wall", wall), ("cpu", cpu))
                   for name, v in d.items()}
            p50["faster_wall"] = p50["wall_fp32_ms"] / p50["wall_int8_ms"]
            p50["faster_cpu"] = p50["cpu_fp32_ms"] / p50["cpu_int8_ms"]
            result["batches"][str(batch)] = p50 | {"rounds": count}
            print(f"batch {batch}: wall p50 fp32 {p50['wall_fp32_ms']:.1f} int8 {p50['wall_int8_ms']:.1f} ms "
                  f"({p50['faster_wall']:.2f}x); thread-CPU p50 fp32 {p50['cpu_fp32_ms']:.1f} int8 "
                  f"{p50['cpu_int8_ms']:.1f} ms ({p50['faster_cpu']:.2f}x)", flush=True)
    print("results:", write_result("compress_cputime", result))


if __name__ == "__main__":
    main()
