"""Monitoring cost against the size of the prediction log (bench/results/monitor_scale.json).

A small model is registered in a fresh SQLite store; synthetic prediction rows are bulk-inserted
until the log holds each size (10k, 100k, 1M rows by default). At each size, in a fresh process:

- ``served``: what the server's background task does every interval — ``monitor(last=1000)`` with
  the model it already serves (a windowed query, no bundle load);
- ``cli``: ``loopml monitor --last 1000`` — the same plus loading the bundle;
- ``full_scan`` (up to ``--full-scan-max`` rows): the old way, reading the whole log and slicing
  in Python, for comparison.

Seconds are the median over ``--repeats`` calls; memory is the growth of the process's peak RSS
during the first call.

    python -m bench.monitor_scale [--sizes 10000,100000,1000000] [--window 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402

KINDS = ("alpha", "beta", "gamma")


def _frame(n: int, seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    kind = rng.choice(KINDS, size=n)
    label = np.where(a - b + (kind == "alpha") > 0, "pos", "neg")
    return pd.DataFrame({"a": a, "b": b, "kind": kind, "label": label})


def setup(root: Path) -> str:
    import loopml
    from loopml.registry import Store

    model = loopml.Model(target="label", training={"epochs": 3}).fit(_frame(2000, 0), progress=False, cache_dir=False)
    url = f"sqlite:///{root / 'registry.db'}"
    store = Store(url, str(root / "artifacts"))
    store.register("m", path=model.save(root / "model"))
    store.promote("m", 1)
    return url


def fill(db: Path, start: int, stop: int, batch: int = 50_000) -> float:
    """Insert rows start..stop-1 straight through sqlite3 (the fastest way to a big log)."""
    import numpy as np

    began = time.perf_counter()
    rng = np.random.default_rng(start)
    connection = sqlite3.connect(db)
    for lo in range(start, stop, batch):
        n = min(batch, stop - lo)
        a, b, kind = rng.normal(size=n), rng.normal(size=n), rng.integers(0, 3, size=n)
        rows = [(f"{lo + i:032x}", "m", 1, 1_000_000.0 + (lo + i) * 0.01,
                 json.dumps({"a": float(a[i]), "b": float(b[i]), "kind": KINDS[kind[i]]}),
                 json.dumps({"prediction": "pos" if a[i] > b[i] else "neg", "probabilities": {"neg": 0.5, "pos": 0.5}}),
                 1.0) for i in range(n)]
        with connection:
            connection.executemany("INSERT INTO predictions (id, model_name, model_version, created_at, inputs, outputs,"
                                   " latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    connection.close()
    return time.perf_counter() - began


def measure(url: str, mode: str, window: int, repeats: int) -> dict:
    """One mode in a fresh process: median seconds per call, peak-RSS growth of the first call."""
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--url", url, "--window", str(window),
                          "--repeats", str(repeats)], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peak_rss_kb() -> int:
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_rss() -> int:
    """Forget the peak so far (imports peak higher than a small window), return the current RSS."""
    with contextlib.suppress(OSError):  # not Linux: the growth is measured against the import-time peak
        Path("/proc/self/clear_refs").write_text("5")
    return _peak_rss_kb()


def child(mode: str, url: str, window: int, repeats: int) -> None:
    import loopml
    from loopml.loop.monitor import monitor
    from loopml.registry import Store

    store = Store(url)
    served = None
    if mode == "served":
        version = store.resolve("m@production")
        served = (int(version["version"]), loopml.load(version["path"]))

    def once() -> int:
        if mode == "full_scan":  # what monitor did before: the whole log, sliced in Python
            rows = store.list_predictions("m", 0.0, time.time())[-window:]
            return len(rows)
        return monitor(store, "m", last=window, record=False, served=served)["rows"]

    before = _reset_peak_rss()
    seconds, rows = [], 0
    for _ in range(repeats):
        began = time.perf_counter()
        rows = once()
        seconds.append(time.perf_counter() - began)
        if len(seconds) == 1:
            grown = _peak_rss_kb() - before
    print(json.dumps({"seconds": statistics.median(seconds), "all_seconds": seconds, "rows": rows,
                      "peak_rss_growth_mb": round(grown / 1024, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-scan-max", type=int, default=100_000, help="largest log the old full scan is run on")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.url, args.window, args.repeats)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    runs = []
    with tempfile.TemporaryDirectory(prefix="loopml-monitor-scale-") as tmp:
        root = Path(tmp)
        url = setup(root)
        logged = 0
        for size in sizes:
            insert_s = fill(root / "registry.db", logged, size)
            logged = size
            run = {"logged_rows": size, "insert_seconds": round(insert_s, 2),
                   "served": measure(url, "served", args.window, args.repeats),
                   "cli": measure(url, "cli", args.window, args.repeats)}
            if size <= args.full_scan_max:
                run["full_scan"] = measure(url, "full_scan", args.window, args.repeats)
            runs.append(run)
            line = "  ".join(f"{m} {run[m]['seconds']:.3f}s +{run[m]['peak_rss_growth_mb']:.0f}MB"
                             for m in ("served", "cli", "full_scan") if m in run)
            print(f"{size:>9,} rows: {line}")
    flat = runs[-1]["served"]["seconds"] / max(runs[0]["served"]["seconds"], 1e-9)
    print(f"served monitor time, largest/smallest log: {flat:.2f}x")
    print("results:", write_result("monitor_scale", {"window": args.window, "repeats": args.repeats, "runs": runs,
                                                     "served_ratio_largest_to_smallest": flat}))


if __name__ == "__main__":
    main()
