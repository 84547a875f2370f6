"""The trade-off table of a compression: size on disk, latency, and the task metric, original vs compressed.

Latency is the model's core call alone (each model preprocesses the same raw rows with its own
preprocessor, outside the timing: a distilled student reads other features than its teacher), at
batch 1 and batch 64, measured in the same process with one thread each
(torch ``set_num_threads(1)``, ONNX Runtime ``intra_op_num_threads=1``), the two models' runs
interleaved (ABAB..., the order flipped each round) so that machine noise falls on both alike.
The metric is computed on the original model's test split (validation when it has no test rows).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: the headline metric per task kind (every scalar metric is kept too)
HEADLINE = {"binary": "accuracy", "category": "accuracy", "number": "rmse"}
FIELDS = ("model", "network_bytes", "bundle_bytes", "p50_ms_batch1", "p99_ms_batch1", "p50_ms_batch64",
          "p99_ms_batch64", "metric", "value")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def network_bytes(folder: Path, learner_files: list[str]) -> int:
    return sum((Path(folder) / name).stat().st_size for name in learner_files if (Path(folder) / name).is_file())


def runner(model) -> tuple[Any, Any]:
    """(prepare, run) of a model: its own preprocessing of raw rows (outside the timing) and its core call
    (an ONNX graph's session, a network's forward pass, any other learner's ``predict_scores``)."""
    import torch

    learner = model.learner
    if callable(getattr(learner, "feed", None)):  # an ONNX graph (onnx_network)
        return (lambda frame: learner.feed(model.preprocessor.transform(frame))), learner.run
    network = model.network
    if network is not None:
        network.eval()

        def forward(inputs: dict) -> None:
            with torch.inference_mode():
                network(inputs)

        return model.preprocessor.transform, forward
    return model.inputs, learner.predict_scores


def latencies(original, compressed, frame: pd.DataFrame, rounds: dict[int, int], threads: int = 1) -> dict:
    """{batch: {"original": [ms...], "compressed": [ms...]}}: interleaved timings of the two models."""
    import torch

    n = len(frame)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    tasks = [(m.learner, m.learner.task) for m in (original, compressed)]
    for learner, task in tasks:
        learner.task = _with_threads(task, threads)
    (prepare_original, run_original), (prepare_compressed, run_compressed) = runner(original), runner(compressed)
    out: dict[int, dict[str, list[float]]] = {}
    try:
        for batch, count in rounds.items():
            times: dict[str, list[float]] = {"original": [], "compressed": []}
            rows = [frame.iloc[np.arange(i * batch, i * batch + batch) % n] for i in range(count)]
            batches = [prepare_original(r) for r in rows]
            feeds = [prepare_compressed(r) for r in rows]
            run_original(batches[0])  # warm-up: first calls pay for lazy initialisation
            run_compressed(feeds[0])
            for i, (b, f) in enumerate(zip(batches, feeds, strict=True)):
                order: list[tuple[str, Any, Any]] = [("original", run_original, b), ("compressed", run_compressed, f)]
                for name, fn, arg in order if i % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    fn(arg)
                    times[name].append((time.perf_counter() - start) * 1000.0)
            out[batch] = times
    finally:
        torch.set_num_threads(previous)
        for learner, task in tasks[:1]:  # the original is the caller's model: its own threads back
            learner.task = task
    return out


def _with_threads(task: Any, threads: int) -> Any:
    import dataclasses

    return dataclasses.replace(task, threads=threads) if dataclasses.is_dataclass(task) else task


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def tradeoff(original, compressed, test: pd.DataFrame, split: str, sizes: dict, *, rounds: dict[int, int] | None = None,
             threads: int = 1, labels: tuple[str, str] | None = None) -> dict:
    """The table (a dict for compress.json): one row per model with every field in FIELDS."""
    rounds = rounds or {1: 200, 64: 30}
    kind = original.preprocessor.target.kind
    headline = HEADLINE[kind]
    metrics = {"original": original.evaluate(test), "compressed": compressed.evaluate(test)}
    timed = latencies(original, compressed, test, rounds, threads)
    rows = []
    labels = labels or ("original (torch fp32)", f"compressed ({sizes['method']}, onnxruntime)")
    for who, label in zip(("original", "compressed"), labels, strict=True):
        row: dict[str, Any] = {"model": label, "network_bytes": sizes[f"{who}_network_bytes"],
                               "bundle_bytes": sizes[f"{who}_bundle_bytes"]}
        for batch in (1, 64):
            ms = np.asarray(timed[batch][who])
            row[f"p50_ms_batch{batch}"] = float(np.percentile(ms, 50))
            row[f"p99_ms_batch{batch}"] = float(np.percentile(ms, 99))
        row["metric"], row["value"] = headline, float(metrics[who].get(headline, float("nan")))
        row["metrics"] = _scalars(metrics[who])
        per_class = metrics[who].get("per_class")
        if isinstance(per_class, dict):
            row["per_class_f1"] = {str(c): float(v["f1"]) for c, v in per_class.items() if isinstance(v, dict) and "f1" in v}
        rows.append(row)
    a, b = rows
    return {
        "method": sizes["method"], "split": split, "test_rows": len(test), "threads": threads,
        "timing": {"what": "the model's core call alone on rows each model preprocessed itself, interleaved, same process",
                   "rounds": {str(k): v for k, v in rounds.items()}},
        "rows": rows,
        "ratios": {"smaller_network": a["network_bytes"] / max(b["network_bytes"], 1),
                   "smaller_bundle": a["bundle_bytes"] / max(b["bundle_bytes"], 1),
                   "faster_batch1": a["p50_ms_batch1"] / max(b["p50_ms_batch1"], 1e-9),
                   "faster_batch64": a["p50_ms_batch64"] / max(b["p50_ms_batch64"], 1e-9),
                   f"{headline}_change": b["value"] - a["value"]},
    }


def lines(table: dict) -> list[str]:
    """One printed line per row (and one for the ratios)."""
    out = []
    for r in table["rows"]:
        out.append(f"{r['model']}: network {r['network_bytes'] / 1e6:.2f} MB (bundle {r['bundle_bytes'] / 1e6:.2f} MB); "
                   f"batch 1 p50 {r['p50_ms_batch1']:.3f} ms p99 {r['p99_ms_batch1']:.3f} ms; batch 64 p50 "
                   f"{r['p50_ms_batch64']:.3f} ms p99 {r['p99_ms_batch64']:.3f} ms; {r['metric']} {r['value']:.4f} "
                   f"on {table['test_rows']} {table['split']} rows")
    q = table["ratios"]
    change = next(k for k in q if k.endswith("_change"))
    out.append(f"compressed vs original ({table['threads']} thread): {q['smaller_network']:.2f}x smaller network, "
               f"{q['faster_batch1']:.2f}x faster at batch 1, {q['faster_batch64']:.2f}x at batch 64, "
               f"{change.removesuffix('_change')} {q[change]:+.4f}")
    return out
