"""The loop, end to end on adult (bench/results/loop.json).

v1 is trained on the official adult training file and served. The traffic then comes from a source
whose upstream system re-coded its fields (categories become opaque codes, capital-gain is sent in
thousands, sex as M/F) — the same people, a shifted input distribution. 6,000 such rows are replayed
through the HTTP API, 10% of them get their true label through /v1/feedback, monitoring flags drift,
the policy's trigger fires, a candidate is trained, gated and promoted, and the server hot-swaps.
Accuracy is measured on shifted rows never replayed. Then: a rollback under load, and the drift
flag's false-alarm rate on 20 windows of unshifted traffic (and its hit rate on 20 shifted windows).

Natural shifts (bench/results/loop_shift.json, .md; bench/loop_shift.py holds them): california_housing
trained on its southern half, traffic from the northern half (R²); adult trained on age < 35, traffic
from age >= 35 (accuracy).

    python -m bench.loop [--only recoded|shift] [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import write_result  # noqa: E402
from bench.serve import start_server  # noqa: E402
from loopml.loop.drift import window_drift  # noqa: E402
from loopml.loop.monitor import monitor  # noqa: E402
from loopml.loop.policy import load_policy  # noqa: E402
from loopml.loop.retrain import retrain, should_retrain  # noqa: E402
from loopml.registry import Store  # noqa: E402

RECODED = ("workclass", "education", "marital-status", "occupation", "relationship")
POLICY = {"trigger": {"min_feedback": 500}, "data": {"feedback_weight": 3, "holdout_fraction": 0.3},
          "gate": {"metric": "accuracy", "margin": 0.01, "max_test_regression": 0.01}}


def shift(df: pd.DataFrame, codes: dict) -> pd.DataFrame:
    out = df.copy()
    for col in RECODED:
        out[col] = out[col].map(lambda v, c=col: codes[c].get(v, v) if isinstance(v, str) else v)
    out["capital-gain"] = pd.to_numeric(out["capital-gain"]) / 1000.0
    out["sex"] = out["sex"].map({"Male": "M", "Female": "F"})
    return out


def accuracy(model, frame: pd.DataFrame) -> float:
    return float(model.evaluate(frame)["accuracy"])


def records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in frame.drop(columns=["income"]).to_dict("records")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=("recoded", "shift"), default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="shift: small sizes, a smoke run (prints; writes no results)")
    parser.add_argument("--scenario", default=None, help="shift: re-measure only this scenario (california_north or "
                        "adult_education); the other keeps its stored figures")
    args = parser.parse_args()
    if args.only in (None, "recoded"):
        recoded()
    if args.only in (None, "shift"):
        from bench.loop_shift import run

        run(seeds=args.seeds, quick=args.quick, only=args.scenario)


def recoded() -> None:
    train, test = realdata.adult()
    codes = {c: {v: f"{c[:3].upper()}-{i:02d}" for i, v in enumerate(sorted(train[c].dropna().unique()))} for c in RECODED}
    test = test.sample(frac=1.0, random_state=0).reset_index(drop=True)
    replay, held = test.iloc[:6000], test.iloc[6000:]
    shifted_replay, shifted_held = shift(replay, codes), shift(held, codes)
    result: dict = {"policy": POLICY}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "adult_train.csv"
        train.to_csv(data, index=False)
        url = f"sqlite:///{tmp / 'registry.db'}"
        store = Store(url, str(tmp / "artifacts"))
        v1 = loopml.Model(target="income").fit(data, progress=False, track="adult-loop", store=store)
        v1.save(tmp / "v1")
        store.register("adult", run=v1.run_id, description="trained on adult.data")
        store.promote("adult", 1, reason="first model")
        result["v1_original"] = accuracy(v1, held)
        result["v1_shifted"] = accuracy(v1, shifted_held)
        print(f"v1: {result['v1_original']:.4f} on unshifted held-out rows, {result['v1_shifted']:.4f} on shifted ones",
              flush=True)

        proc, server = start_server("adult@production", url)
        try:
            client = httpx.Client(base_url=server, timeout=60)
            rng = np.random.default_rng(0)
            labelled = set(rng.choice(len(shifted_replay), size=len(shifted_replay) // 10, replace=False).tolist())
            started = time.perf_counter()
            sent = fed = 0
            for begin in range(0, len(shifted_replay), 50):
                chunk = shifted_replay.iloc[begin : begin + 50]
                answer = client.post("/v1/models/adult/predict", json=records(chunk)).json()
                sent += len(chunk)
                for offset, p in enumerate(answer["predictions"]):
                    if begin + offset in labelled:
                        r = client.post("/v1/feedback", json={"prediction_id": p["prediction_id"],
                                                              "label": chunk["income"].iloc[offset]})
                        fed += r.status_code == 201
            result["replay"] = {"rows": sent, "feedback": fed, "seconds": time.perf_counter() - started}
            print(f"replayed {sent} shifted rows through HTTP, {fed} labelled via /v1/feedback", flush=True)
            time.sleep(0.5)  # let the prediction log flush
            window = monitor(store, "adult", last=2000)
            result["monitor"] = {"drift": window["drift"], "drifted": window["drifted"], "live": window["live"],
                                 "psi": {c: round(d["psi"], 3) for c, d in window["columns"].items()}}
            print(f"monitor: drift={window['drift']} in {window['drifted']}; live {window['live']}", flush=True)
            policy = load_policy(POLICY)
            fire, why = should_retrain(store, "adult", policy)
            result["trigger"] = why
            print(f"trigger: {fire} ({why})", flush=True)
            decision = retrain(store, "adult", policy, reason=why) if fire else {"promoted": False, "reason": why}
            result["decision"] = decision
            print(f"gate: {'PROMOTED' if decision['promoted'] else 'rejected'} — {decision['reason']}", flush=True)
            swap_start = time.perf_counter()
            while client.get("/v1/models").json()[0]["version"] != decision.get("candidate_version"):
                if time.perf_counter() - swap_start > 30:
                    break
                time.sleep(0.05)
            result["swap_seconds"] = time.perf_counter() - swap_start
            v2 = loopml.load("adult@production", store=url)
            result["v2_shifted"] = accuracy(v2, shifted_held)
            result["v2_original"] = accuracy(v2, held)
            lost = result["v1_original"] - result["v1_shifted"]
            result["recovered_share"] = (result["v2_shifted"] - result["v1_shifted"]) / lost if lost > 0 else None
            print(f"v2: {result['v2_shifted']:.4f} on shifted rows ({result['v2_original']:.4f} unshifted); recovered "
                  f"{result['recovered_share']:.0%} of the {lost:.4f} lost", flush=True)
            result["rollback"] = rollback_under_load(store, server, records(shifted_held.iloc[:1])[0])
        finally:
            proc.terminate()
            proc.wait(60)
        result["false_alarms"] = alarm_rate(v1, held, shifted_held)
    print(f"written {write_result('loop', result)}")


def rollback_under_load(store: Store, server: str, record: dict) -> dict:
    failures, done, stop = [], [0], threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server, timeout=30) as client:
            while not stop.is_set():
                r = client.post("/v1/models/adult/predict", json=record)
                done[0] += 1
                if r.status_code != 200:
                    failures.append(r.status_code)

    threads = [threading.Thread(target=load) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    before = httpx.get(f"{server}/v1/models").json()[0]["version"]
    start = time.perf_counter()
    move = store.rollback("adult", reason="bench: rollback under load")
    while httpx.get(f"{server}/v1/models").json()[0]["version"] != move["to_version"]:
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    print(f"rollback under load: v{before} → v{move['to_version']} served after {seconds:.2f} s; {done[0]} requests, "
          f"{len(failures)} failed", flush=True)
    return {"from": before, "to": move["to_version"], "seconds": seconds, "requests": done[0], "failed": len(failures)}


def alarm_rate(model, unshifted: pd.DataFrame, shifted: pd.DataFrame, windows: int = 20, size: int = 500) -> dict:
    out = {}
    for name, frame in (("unshifted", unshifted), ("shifted", shifted)):
        flags = []
        for w in range(windows):
            sample = frame.sample(size, random_state=100 + w).drop(columns=["income"])
            flags.append(window_drift(sample, list(model.predict(sample)), model.reference)["drift"])
        out[name] = {"windows": windows, "rows_per_window": size, "flagged": int(sum(flags))}
    print(f"drift flag: {out['unshifted']['flagged']}/{windows} unshifted windows (false alarms), "
          f"{out['shifted']['flagged']}/{windows} shifted windows", flush=True)
    return out


if __name__ == "__main__":
    main()
