"""`loopml compress --quantize dynamic-int8` on sms_spam's fine-tuned MiniLM (bench/pretrained_text's model).

    python -m bench.compress [--quick] [--method dynamic-int8] [--threads 1]

The model is bench/pretrained_text.py's fine-tuned run (all-MiniLM-L6-v2, top 2 layers trained,
lr 1e-4, max_length 48, 2 epochs, batch 32; default split: stratified, test 0.2, exact duplicates
dropped; seed 42), trained from a file so its split record points at real rows. Then the same
code as `loopml compress`: export to ONNX, quantise, and the trade-off table on the original test
split: network size, p50/p99 latency at batch 1 and 64 (one thread, interleaved, same process),
accuracy and spam F1 -- original (torch fp32) vs compressed (onnxruntime).

Acceptance (issue 15): >= 2x faster at batch 1 and batch 64, >= 3.5x smaller, <= 1 point accuracy lost.
``--quick``: a 400-row subset, 1 epoch, max_length 32, few latency rounds: a smoke run of the
pipeline, not the measurement (its figures are written, marked quick).
Results: bench/results/compress.json and compress.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import RESULTS, write_result  # noqa: E402
from bench.pretrained_text import SECTIONS  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache" / "compress"
ACCEPT = {"faster_batch1": 2.0, "faster_batch64": 2.0, "smaller_network": 3.5, "accuracy_points_lost": 1.0}


def fine_tuned(frame, folder: Path, epochs: int, max_length: int, batch_size: int) -> tuple[Path, float]:
    """bench/pretrained_text's fine-tuned MiniLM, trained from a parquet file, saved in ``folder``."""
    data = folder / "sms_spam.parquet"
    frame.to_parquet(data, index=False)
    encoder = {"type": "pretrained", "trainable": "top", "lr": 1e-4, "top_layers": 2}
    start = time.perf_counter()
    model = loopml.Model(target="label", **SECTIONS["sms_spam"],
                         features={"text": {"type": "text", "encoder": encoder, "max_length": max_length}},
                         training={"seed": 42, "epochs": epochs, "batch_size": batch_size})
    model.fit(str(data), progress=False, cache_dir=False)
    return model.save(folder / "minilm"), time.perf_counter() - start


def cached_fine_tuned(frame, work: Path, epochs: int, max_length: int, quick: bool) -> tuple[Path, float]:
    """The fine-tuned model, kept in bench/.cache (ignored by git) so a rerun skips the 10-20 min fine-tune;
    it trains in its final folder, so the split record it keeps points at the data file beside it."""
    if quick:
        return fine_tuned(frame, work, epochs, max_length, 32)
    cache = CACHE / f"sms_spam-minilm-e{epochs}-l{max_length}"
    if (cache / "minilm" / "config.yaml").is_file() and (cache / "fit.json").is_file():
        return cache / "minilm", float(json.loads((cache / "fit.json").read_text())["fit_seconds"])
    shutil.rmtree(cache, ignore_errors=True)  # a run killed mid-fine-tune left no fit.json: start again
    cache.mkdir(parents=True)
    _, seconds = fine_tuned(frame, cache, epochs, max_length, 32)
    (cache / "fit.json").write_text(json.dumps({"fit_seconds": seconds}))  # written last: the cache is complete
    return cache / "minilm", seconds


def original_splits_test(model):
    from loopml.compress.quantize import original_splits

    return original_splits(model, None, None, None)["test"]


def cpu_flags() -> list[str]:
    """The SIMD extensions int8 speed depends on (VNNI doubles int8 GEMM throughput over AVX2's vpmaddubsw)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f)


def op_profile(original, work: Path, compressed: Path, test, threads: int) -> dict:
    """Share of onnxruntime kernel time per op type at batch 64, fp32 graph vs the quantised one: what bounds
    the batch-64 speed-up (the int8 GEMMs, when the CPU lacks VNNI)."""
    import collections

    import onnxruntime as ort

    from loopml.compress.quantize import export_fp32, trimmed_columns
    from loopml.learners.onnx_network import trim_padding

    rows = test.head(64)
    graphs = {"fp32": export_fp32(original, work / "profile"), "compressed": compressed / "model.onnx"}
    inputs, trim = original.preprocessor.transform(rows), trimmed_columns(original)
    out = {}
    for name, graph in graphs.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.enable_profiling = threads, True
        options.profile_file_prefix = str(work / f"profile-{name}")
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        names = dict(zip(original.preprocessor.features, [i.name for i in session.get_inputs()], strict=True))
        feed = trim_padding({names[c]: inputs[c].numpy() for c in original.preprocessor.features},
                            {names[c]: pad for c, pad in trim.items()})
        for _ in range(3):
            session.run(None, feed)
        spent: collections.Counter = collections.Counter()
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                spent[event["args"]["op_name"]] += event["dur"]
        total = sum(spent.values()) or 1
        out[name] = {op: round(100.0 * t / total, 1) for op, t in spent.most_common(8)}
    return out


def verdict(table: dict) -> dict:
    q = table["ratios"]
    lost = -100.0 * q["accuracy_change"]
    return {"faster_batch1": q["faster_batch1"] >= ACCEPT["faster_batch1"],
            "faster_batch64": q["faster_batch64"] >= ACCEPT["faster_batch64"],
            "smaller_network": q["smaller_network"] >= ACCEPT["smaller_network"],
            "accuracy_points_lost": lost <= ACCEPT["accuracy_points_lost"]}


def markdown(result: dict) -> str:
    t = result["tradeoff"]
    out = [f"# compress: {t['method']} on sms_spam, fine-tuned MiniLM{' (QUICK smoke run)' if result['quick'] else ''}", "",
           f"{t['test_rows']} {t['split']} rows; latency of the network alone, {t['threads']} thread, interleaved "
           f"({t['timing']['rounds']['1']} rounds at batch 1, {t['timing']['rounds']['64']} at batch 64).", "",
           "| model | network MB | p50 ms b1 | p99 ms b1 | p50 ms b64 | p99 ms b64 | accuracy | spam F1 |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in t["rows"]:
        out.append(f"| {r['model']} | {r['network_bytes'] / 1e6:.1f} | {r['p50_ms_batch1']:.2f} | {r['p99_ms_batch1']:.2f} | "
                   f"{r['p50_ms_batch64']:.1f} | {r['p99_ms_batch64']:.1f} | {r['value']:.4f} | "
                   f"{r.get('per_class_f1', {}).get('spam', float('nan')):.4f} |")
    q = t["ratios"]
    out += ["", f"{q['smaller_network']:.2f}x smaller, {q['faster_batch1']:.2f}x faster at batch 1, "
                f"{q['faster_batch64']:.2f}x at batch 64, accuracy {100 * q['accuracy_change']:+.2f} points.",
            "", "Acceptance: " + ", ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in result["acceptance"].items()),
            "", f"Quantised ops: {', '.join(t['facts'].get('quantized_ops', []))}.",
            "", f"CPU SIMD flags: {', '.join(result.get('cpu_flags') or ['unknown'])}. Share of onnxruntime kernel time "
                "per op at batch 64 (what bounds the batch-64 speed-up):"]
    for name, shares in (result.get("op_profile_batch64") or {}).items():
        out.append(f"- {name}: " + ", ".join(f"{op} {share:.1f}%" for op, share in shares.items()))
    return "\n".join(out) + "\n"


def main() -> None:
    from loopml.compress.quantize import compress

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a tiny subset: a smoke run, not the measurement")
    parser.add_argument("--method", default="dynamic-int8", choices=["dynamic-int8", "static-int8", "fp16"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not realdata.available("sms_spam"):
        print("sms_spam: not in ../shared/datasets, skipped")
        return
    frame = realdata.sms_spam()
    if args.quick:
        frame = realdata.subsample(frame, 400, "label", seed=0)
    epochs, max_length = (1, 32) if args.quick else (2, 48)
    rounds = {1: 20, 64: 3} if args.quick else {1: 300, 64: 40}
    with tempfile.TemporaryDirectory() as work:
        folder, fit_seconds = cached_fine_tuned(frame, Path(work), epochs, max_length, quick=args.quick)
        print(f"fine-tuned MiniLM: {fit_seconds:.1f}s", flush=True)
        original = loopml.load(folder)
        start = time.perf_counter()
        done = compress(original, folder, {"folder": "sms_spam fine-tuned MiniLM"}, args.method, Path(work) / "q",
                        rounds=rounds, threads=args.threads)
        compress_seconds = time.perf_counter() - start
        profile = op_profile(original, Path(work), Path(work) / "q", original_splits_test(original), args.threads)
    table = done.table
    result = {"quick": args.quick, "rows": len(frame), "fit_seconds": fit_seconds, "compress_seconds": compress_seconds,
              "settings": {"model": "minilm (all-MiniLM-L6-v2), trainable top 2 layers, lr 1e-4", "max_length": max_length,
                           "epochs": epochs, "batch_size": 32, "split": "default (stratified, test 0.2, duplicates "
                           "dropped), seed 42", "method": args.method, "threads": args.threads},
              "tradeoff": table, "acceptance": verdict(table), "acceptance_thresholds": ACCEPT,
              "cpu_flags": cpu_flags(), "op_profile_batch64": profile}
    path = write_result("compress", result)
    (RESULTS / "compress.md").write_text(markdown(result))
    print(markdown(result))
    print("results:", path)


if __name__ == "__main__":
    main()
