"""Serving throughput and latency (bench/results/serve.json): a text classifier (sms_spam, bag
encoder) and a tabular model (adult), one record per request, the load generator in its own process
on loopback, closed loop, at concurrency 1, 8, 32 and 64, against, in the same run:

  (a) the same model's in-process batched throughput (runner.predict on batches of 64 records);
  (b) the same server with batching off (--max-batch-size 1);
  (c) a hot swap during load (promote / rollback every 2 s) — errors counted.

    python -m bench.serve [--seconds 8]
    python -m bench.serve --only v2   # /v2 infer (Open Inference Protocol) next to /v1 at c=64: serve_v2.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import write_result  # noqa: E402
from loopml.registry import Store  # noqa: E402
from loopml.serve.runner import make_runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32, 64)


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ref: str, store: str, *args: str) -> tuple[subprocess.Popen, str]:
    port = _port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "loopml", "serve", ref, "--port", str(port), "--store", store,
                             "--threads", "1", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, wait_ready(proc, f"http://127.0.0.1:{port}", "/ready")


def wait_ready(proc: subprocess.Popen, url: str, path: str, seconds: float = 120.0) -> str:
    """``url`` once ``path`` answers 200; the server's stderr as the error if it never does."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(proc.stderr.read().decode()[-2000:])


def load(url: str, path: str, body_file: Path, concurrency: int, seconds: float) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.loadgen", url, path, str(body_file), "--concurrency",
                          str(concurrency), "--seconds", str(seconds)], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    return json.loads(out.stdout)


def ceiling(model, records: list[dict], seconds: float, batch: int = 64) -> float:
    """Records per second through the model's runner (torch for networks, native otherwise), batches of ``batch``."""
    runner = make_runner(model, threads=1)
    rows, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.predict(records[:batch])
        rows += batch
    return rows / (time.perf_counter() - start)


def bench_model(name: str, df, target: str, extra: dict, seconds: float, tmp: Path) -> dict:
    store_url = f"sqlite:///{tmp / f'{name}.db'}"
    store = Store(store_url, str(tmp / "artifacts"))
    for seed in (0, 1):
        model = loopml.Model({"target": target, **extra, "training": {"seed": seed}}).fit(df, progress=False)
        store.register(name, path=model.save(tmp / f"{name}-{seed}"))
    store.promote(name, 1)
    features = df.drop(columns=[target])
    records = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in features.iloc[:64].to_dict("records")]
    body = tmp / f"{name}.json"
    body.write_text(json.dumps(records[0]))
    path = f"/v1/models/{name}/predict"
    result = {"ceiling_records_per_s": ceiling(loopml.load(f"{name}:1", store=store_url), records, seconds)}
    print(f"{name}: in-process batched ceiling {result['ceiling_records_per_s']:.0f} records/s", flush=True)
    for label, args in (("batching", ()), ("no_batching", ("--max-batch-size", "1"))):
        proc, url = start_server(f"{name}@production", store_url, *args)
        try:
            points = {}
            for c in CONCURRENCY if label == "batching" else (32, 64):
                points[c] = load(url, path, body, c, seconds)
                p = points[c]
                print(f"{name} {label} c={c}: {p['rps']:.0f} req/s, p50 {p['p50_ms']:.1f} ms, p95 {p['p95_ms']:.1f} ms, "
                      f"p99 {p['p99_ms']:.1f} ms, errors {p['errors']}", flush=True)
            result[label] = points
            if label == "batching":
                result["hot_swap"] = swap_under_load(store, name, url, path, body, seconds)
        finally:
            proc.terminate()
            proc.wait(60)
    result["ratio_c64_vs_ceiling"] = result["batching"][64]["rps"] / result["ceiling_records_per_s"]
    result["ratio_c32_batching_vs_off"] = result["batching"][32]["rps"] / result["no_batching"][32]["rps"]
    print(f"{name}: c=64 / ceiling = {result['ratio_c64_vs_ceiling']:.3f}; c=32 batching on / off = "
          f"{result['ratio_c32_batching_vs_off']:.2f}×", flush=True)
    return result


def swap_under_load(store: Store, name: str, url: str, path: str, body: Path, seconds: float) -> dict:
    moves, stop = [], threading.Event()

    def mover() -> None:
        target = 2
        while not stop.wait(2.0):
            start = time.perf_counter()
            if target == 2:
                store.promote(name, 2, reason="bench swap")
            else:
                store.rollback(name, reason="bench rollback")
            while httpx.get(f"{url}/v1/models").json()[0]["version"] != target:
                time.sleep(0.02)
            moves.append(time.perf_counter() - start)
            target = 1 if target == 2 else 2

    thread = threading.Thread(target=mover)
    thread.start()
    point = load(url, path, body, 32, max(seconds, 9.0))
    stop.set()
    thread.join()
    print(f"{name} hot swap under c=32 load: {len(moves)} swaps, {point['errors']} errors, {point['rps']:.0f} req/s, "
          f"swap visible after {max(moves, default=0):.2f} s at most", flush=True)
    return {"swaps": len(moves), "errors": point["errors"], "rps": point["rps"], "p99_ms": point["p99_ms"],
            "swap_seconds_max": max(moves, default=None), "swap_seconds": moves}


def v2_body(url: str, name: str, record: dict) -> dict:
    """One record as an Open Inference Protocol request: a one-row tensor per column, typed as the metadata says."""
    datatypes = {i["name"]: i["datatype"] for i in httpx.get(f"{url}/v2/models/{name}").json()["inputs"]}
    return {"inputs": [{"name": c, "shape": [1], "datatype": datatypes[c], "data": [v]} for c, v in record.items()
                       if c in datatypes]}


def bench_v2(df, target: str, seconds: float, tmp: Path, rounds: int = 5, concurrency: int = 64) -> dict:
    """/v2 infer next to /v1 predict: the same server process and model, one record per request, the same load
    generator at ``concurrency``, alternating /v1 and /v2 for ``rounds`` rounds (so a drift in the machine's
    load reaches both alike); the ratio is of the summed throughputs."""
    store_url = f"sqlite:///{tmp / 'v2.db'}"
    store = Store(store_url, str(tmp / "artifacts"))
    model = loopml.Model({"target": target, "training": {"seed": 0}}).fit(df, progress=False)
    store.register("adult", path=model.save(tmp / "adult-v2"))
    store.promote("adult", 1)
    record = {k: (v.item() if hasattr(v, "item") else v) for k, v in df.drop(columns=[target]).iloc[0].items()}
    proc, url = start_server("adult@production", store_url)
    try:
        bodies = {"v1": ("/v1/models/adult/predict", record), "v2": ("/v2/models/adult/infer", v2_body(url, "adult", record))}
        for label, (path, body) in bodies.items():  # both answer the same prediction before any load
            (tmp / f"{label}.json").write_text(json.dumps(body))
            assert httpx.post(f"{url}{path}", json=body).status_code == 200, label
        points: dict[str, list] = {"v1": [], "v2": []}
        for _ in range(rounds):
            for label, (path, _body) in bodies.items():
                p = load(url, path, tmp / f"{label}.json", concurrency, seconds)
                points[label].append(p)
                print(f"adult {label} c={concurrency}: {p['rps']:.0f} req/s, p50 {p['p50_ms']:.1f} ms, "
                      f"p99 {p['p99_ms']:.1f} ms, errors {p['errors']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    rps = {label: sum(p["ok"] for p in ps) / sum(p["seconds"] for p in ps) for label, ps in points.items()}
    result = {"concurrency": concurrency, "rounds": rounds, "seconds_per_point": seconds, "train_rows": len(df),
              "v1_rps": rps["v1"], "v2_rps": rps["v2"], "ratio_v2_vs_v1": rps["v2"] / rps["v1"],
              "errors": {label: sum(p["errors"] for p in ps) for label, ps in points.items()}, "points": points}
    print(f"adult c={concurrency}: /v2 {rps['v2']:.0f} req/s vs /v1 {rps['v1']:.0f} req/s = "
          f"{result['ratio_v2_vs_v1']:.3f}x (goal >= 0.8)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--only", default="text,tabular,minilm", help="also: v2 (/v2 infer next to /v1, adult)")
    args = parser.parse_args()
    parts = args.only.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sms = realdata.sms_spam() if {"text", "minilm"} & set(parts) else None
        dedup = {"split": {"duplicates": "drop"}}
        if "text" in parts:
            results["text_sms_spam"] = bench_model("sms", sms, "label", dedup, args.seconds, tmp)
        if "tabular" in parts:
            train, _ = realdata.adult()
            results["tabular_adult"] = bench_model("adult", train, "income", {}, args.seconds, tmp)
        if "minilm" in parts:  # compute-heavy: every request's text goes through all-MiniLM-L6-v2
            minilm = {**dedup, "features": {"text": {"type": "text", "encoder": {"type": "pretrained"}}}}
            subset = realdata.subsample(sms, 1000, "label")
            results["minilm_sms_spam"] = bench_model("minilm", subset, "label", minilm, args.seconds, tmp)
        if "v2" in parts:  # the Open Inference Protocol route against /v1, one server (bench/results/serve_v2.json)
            train, _ = realdata.adult()
            results["v2_adult"] = bench_v2(realdata.subsample(train, 2000, "income"), "income", args.seconds, tmp)
    name = "serve" if sorted(parts) == ["tabular", "text"] else f"serve_{'_'.join(parts)}"
    print(f"written {write_result(name, results)}")


if __name__ == "__main__":
    main()
