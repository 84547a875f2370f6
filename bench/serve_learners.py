"""Serving a tree ensemble vs the single MLP (bench/results/serve_learners.json), in one run.

adult (official train split): the default network, and an ensemble learner (Caruana over k-fold
bagged LightGBM + XGBoost + CatBoost), each registered and served by `loopml serve` (1 worker,
1 thread), one record per request, closed-loop load generator in its own process at c=1 and
c=64. The goal: the ensemble's req/s at c=64 ≥ 0.7× the MLP's, measured in the same run. Also
the in-process batched ceiling of each (records/s through the runner, batches of 64).

    python -m bench.serve_learners [--seconds 8] [--folds 3]
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
from bench.common import write_result  # noqa: E402
from bench.serve import ceiling, load, start_server  # noqa: E402
from loopml.registry import Store  # noqa: E402


def ensemble_config(folds: int) -> dict:
    members = [{"type": "bagged", "folds": folds, "member": {"type": t}} for t in ("lightgbm", "xgboost", "catboost")]
    return {"type": "ensemble", "members": members}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()
    if not realdata.available("adult"):
        sys.exit("adult is not in ../shared/datasets")
    train, _ = realdata.adult()
    target = "income"
    records = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
               for r in train.drop(columns=[target]).iloc[:64].to_dict("records")]
    results: dict = {"seconds_per_point": args.seconds}
    with tempfile.TemporaryDirectory(prefix="loopml-serve-learners-") as tmp:
        tmp = Path(tmp)
        store_url = f"sqlite:///{tmp / 'store.db'}"
        store = Store(store_url, str(tmp / "artifacts"))
        body = tmp / "body.json"
        body.write_text(json.dumps(records[0]))
        for name, learner in (("mlp", {"type": "network"}), ("ensemble", ensemble_config(args.folds))):
            start = time.perf_counter()
            model = loopml.Model({"target": target, "learner": learner}).fit(train, progress=False)
            fit_s = time.perf_counter() - start
            store.register(name, path=model.save(tmp / name))
            store.promote(name, 1)
            served = loopml.load(f"{name}:1", store=store_url)
            point = {"fit_s": fit_s, "test_metrics": model.metrics.get("test", {}),
                     "ceiling_records_per_s": ceiling(served, records, args.seconds)}
            proc, url = start_server(f"{name}@production", store_url)
            try:
                for c in (1, 64):
                    point[f"c{c}"] = load(url, f"/v1/models/{name}/predict", body, c, args.seconds)
                    p = point[f"c{c}"]
                    print(f"{name} c={c}: {p['rps']:.0f} req/s, p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, "
                          f"errors {p['errors']}", flush=True)
            finally:
                proc.terminate()
                proc.wait(60)
            print(f"{name}: fit {fit_s:.1f}s, ceiling {point['ceiling_records_per_s']:.0f} records/s", flush=True)
            results[name] = point
    results["ratio_c64_ensemble_vs_mlp"] = results["ensemble"]["c64"]["rps"] / results["mlp"]["c64"]["rps"]
    print(f"ensemble / mlp req/s at c=64: {results['ratio_c64_ensemble_vs_mlp']:.2f} (goal ≥ 0.7)")
    print("results:", write_result("serve_learners", results))


if __name__ == "__main__":
    main()
