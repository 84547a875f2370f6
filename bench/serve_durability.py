"""Prediction-log durability under kill -9 (bench/results/serve_durability.json), a tabular model
(adult), the server in its own process on loopback with a SQLite store:

  (a) ``--runs`` times: mixed batch traffic (1, 200 and 1,000 records per request, each answered
      request followed by feedback on one of its ids) from ``--clients`` threads, the server
      killed with SIGKILL after ``--seconds``, restarted (it replays the dead server's spool), then
      stopped cleanly; acknowledged vs found predictions and feedback, and whether every stored
      feedback's prediction resolves. Once more with ``--log-durability none`` (the old behaviour)
      for comparison, unless ``--no-baseline``;
  (b) one-record requests at concurrency 64 (the load generator in its own process, closed loop),
      with ``--log-durability`` fsync, spool and none, in the same run: req/s and p99.

    python -m bench.serve_durability [--runs 3] [--seconds 8] [--load-seconds 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import write_result  # noqa: E402
from bench.serve import load, start_server  # noqa: E402
from loopml.registry import Store, db  # noqa: E402

SIZES = (1, 200, 1000)


def _records(features, start: int, n: int) -> list[dict]:
    rows = features.iloc[[(start + i) % len(features) for i in range(n)]]
    return [{k: None if v != v else (v.item() if hasattr(v, "item") else v) for k, v in r.items()}  # NaN: missing
            for r in rows.to_dict("records")]


def kill_run(ref: str, store_url: str, features, clients: int, seconds: float, durability: str) -> dict:
    proc, url = start_server(ref, store_url, "--log-durability", durability)
    predicted, feedback, refused, stop = [], [], [0], threading.Event()
    bodies = {size: _records(features, 17 * size, size) for size in SIZES}

    def client(worker: int) -> None:
        i = worker
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/models/adult/predict", json=bodies[SIZES[i % 3]])
                    if r.status_code != 200:
                        refused[0] += 1
                        continue
                    ids = [p["prediction_id"] for p in r.json()["predictions"]]
                    predicted.extend(ids)
                    f = c.post("/v1/feedback", json={"prediction_id": ids[i % len(ids)], "label": ">50K"})
                    if f.status_code == 201:
                        feedback.append((f.json()["feedback_id"], ids[i % len(ids)]))
                except httpx.HTTPError:
                    return  # killed
                i += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    stop.set()
    for t in threads:
        t.join()
    started = time.perf_counter()
    again, _ = start_server(ref, store_url, "--log-durability", durability)  # replays the spool of the killed one
    again.send_signal(signal.SIGTERM)
    again.wait(120)
    restart_s = time.perf_counter() - started
    engine = db.create_engine(store_url)
    with engine.connect() as c:
        logged = {r[0] for r in c.execute(sa.select(db.predictions.c.id))}
        stored = {r.id: r for r in c.execute(sa.select(db.feedback.c.id, db.feedback.c.prediction_id))}
    engine.dispose()
    found_feedback = [fid for fid, _ in feedback if fid in stored]
    dangling = sum(1 for fid, pid in feedback if fid in stored and pid not in logged)
    result = {"durability": durability, "acknowledged_predictions": len(predicted),
              "found_predictions": len(set(predicted) & logged), "lost_predictions": len(set(predicted) - logged),
              "acknowledged_feedback": len(feedback), "found_feedback": len(found_feedback),
              "feedback_pointing_at_missing_prediction": dangling, "refused_requests": refused[0],
              "restart_and_replay_s": restart_s}
    print(f"kill -9 ({durability}): predictions {result['found_predictions']}/{len(predicted)} found, feedback "
          f"{len(found_feedback)}/{len(feedback)} found, {dangling} pointing at a missing prediction, "
          f"restart+replay {restart_s:.1f} s", flush=True)
    return result


def throughput(ref: str, store_url: str, features, durability: str, seconds: float, tmp: Path) -> dict:
    body = tmp / "one.json"
    body.write_text(json.dumps(_records(features, 0, 1)[0]))
    proc, url = start_server(ref, store_url, "--log-durability", durability)
    try:
        load(url, "/v1/models/adult/predict", body, 64, min(3.0, seconds))  # warm-up
        point = load(url, "/v1/models/adult/predict", body, 64, seconds)
    finally:
        proc.terminate()
        proc.wait(120)
    print(f"c=64 one record ({durability}): {point['rps']:.0f} req/s, p50 {point['p50_ms']:.1f} ms, "
          f"p99 {point['p99_ms']:.1f} ms, errors {point['errors']}", flush=True)
    return point


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="traffic before each kill -9")
    parser.add_argument("--load-seconds", type=float, default=10.0, help="per durability mode at c=64")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--output", default="serve_durability")
    args = parser.parse_args()
    train, _ = realdata.adult()
    features = train.drop(columns=["income"])
    results: dict = {"settings": vars(args), "kill_runs": [], "c64": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = loopml.Model({"target": "income", "training": {"seed": 0, "epochs": 2}}).fit(train, progress=False)
        model_dir = model.save(tmp / "adult-model")

        def fresh_store(label: str) -> str:
            url = f"sqlite:///{tmp / label / 'registry.db'}"
            store = Store(url, str(tmp / label / "artifacts"))
            store.register("adult", path=model_dir)
            store.promote("adult", 1)
            return url

        for run in range(args.runs):
            results["kill_runs"].append(kill_run("adult@production", fresh_store(f"kill{run}"), features, args.clients,
                                                 args.seconds, "fsync"))
        if not args.no_baseline:
            results["kill_baseline_none"] = kill_run("adult@production", fresh_store("kill-none"), features,
                                                     args.clients, args.seconds, "none")
        for durability in ("fsync", "spool", "none"):
            results["c64"][durability] = throughput("adult@production", fresh_store(f"load-{durability}"), features,
                                                    durability, args.load_seconds, tmp)
    runs = results["kill_runs"]
    results["summary"] = {
        "lost_predictions": sum(r["lost_predictions"] for r in runs),
        "acknowledged_predictions": sum(r["acknowledged_predictions"] for r in runs),
        "lost_feedback": sum(r["acknowledged_feedback"] - r["found_feedback"] for r in runs),
        "acknowledged_feedback": sum(r["acknowledged_feedback"] for r in runs),
        "c64_rps_fsync_vs_none": results["c64"]["fsync"]["rps"] / results["c64"]["none"]["rps"],
        "c64_p99_ms": {k: v["p99_ms"] for k, v in results["c64"].items()},
    }
    print(json.dumps(results["summary"], indent=1))
    print(f"written {write_result(args.output, results)}")


if __name__ == "__main__":
    main()
