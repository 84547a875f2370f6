"""The loop over many turns, and retrains racing each other (bench/results/loop_turns.json).

Turns: a champion trained from a CSV file, then T turns of (600 feedback rows from an upstream
system that renamed its category values again -> `loopml retrain`), unattended; each turn must be
gated and decided (and here, promoted). Races: R rounds of K `loopml retrain` processes started at
once against one champion; every round must end with exactly one promotion, the others saying the
lock is held or the champion moved. On SQLite, and on PostgreSQL with --postgres URL.

    python -m bench.loop_turns [--turns 5] [--rounds 5] [--racers 4] [--postgres postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import yaml  # noqa: E402

import loopml  # noqa: E402
from bench.common import write_result  # noqa: E402
from loopml.registry import Store  # noqa: E402

POLICY = {"data": {"holdout_fraction": 0.3, "min_holdout": 30, "feedback_weight": 3},
          "gate": {"metric": "accuracy", "margin": 0.01, "max_test_regression": 0.02}, "train": {"training": {"epochs": 12}}}


def make(n: int, seed: int, turn: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    kind = rng.choice(["alpha", "beta", "gamma"], size=n)
    score = a - 0.7 * b + np.where(kind == "alpha", 2.5, np.where(kind == "beta", -2.5, 0.0))
    df = pd.DataFrame({"a": a, "b": b, "kind": kind, "label": np.where(score + rng.normal(scale=0.4, size=n) > 0, "pos", "neg")})
    if turn:
        df["kind"] = df["kind"].map({"alpha": f"T{turn}a", "beta": f"T{turn}b", "gamma": f"T{turn}c"})
    return df


def feed(store: Store, frame: pd.DataFrame) -> None:
    for row in frame.to_dict("records"):
        label = row.pop("label")
        store.add_feedback("clf", label, inputs=row)


def fresh_store(url: str | None, root: Path) -> str:
    if url is None:
        return f"sqlite:///{root / f'{uuid.uuid4().hex[:8]}.db'}"
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1)).begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    return sa.engine.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)


def retrain_command(url: str, policy: Path) -> list[str]:
    return [sys.executable, "-m", "loopml", "retrain", "clf", "--store", url, "--policy", str(policy)]


def turns(champion: Path, url: str, policy: Path, artifacts: Path, n: int) -> dict:
    store = Store(url, str(artifacts))
    store.register("clf", path=champion)
    store.promote("clf", 1)
    env = {**os.environ, "LOOPML_ARTIFACTS": str(artifacts)}
    seconds, verdicts = [], []
    for turn in range(1, n + 1):
        feed(store, make(600, 100 + turn, turn))
        start = time.perf_counter()
        out = subprocess.run(retrain_command(url, policy), env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        seconds.append(time.perf_counter() - start)
        last = (out.stdout + out.stderr).strip().splitlines()[-1:]
        verdicts.append(f"rc={out.returncode}: {last[0] if last else ''}")
    decided = [d for d in store.list_gate_decisions("clf") if d["candidate_version"] is not None]
    return {"turns": n, "verdicts": verdicts, "decided": len(decided), "seconds_per_turn": seconds,
            "production_version": store.alias_version("clf", "production")}


def race(champion: Path, url: str, policy: Path, artifacts: Path, racers: int) -> dict:
    store = Store(url, str(artifacts))
    store.register("clf", path=champion)
    store.promote("clf", 1)
    feed(store, make(600, 7, 1))
    env = {**os.environ, "LOOPML_ARTIFACTS": str(artifacts)}
    procs = [subprocess.Popen(retrain_command(url, policy), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(racers)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    promotions = [e for e in store.alias_history("clf", "production") if e["actor"] == "loopml retrain"]
    lost = sum("another retrain" in o or "champion moved" in o for o in outputs)
    decided = [d for d in store.list_gate_decisions("clf") if d["candidate_version"] is not None]
    return {"promotions": len(promotions), "candidates_decided": len(decided), "lost_lock_or_cas": lost,
            "exit_codes": [p.returncode for p in procs],
            "last_lines": [o.strip().splitlines()[-1:] for o in outputs]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--racers", type=int, default=4)
    parser.add_argument("--postgres", default=None)
    parser.add_argument("--out", default="loop_turns")
    args = parser.parse_args()
    result: dict = {"turns": {}, "races": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "train.csv"
        make(900, 0).to_csv(data, index=False)
        champion = loopml.Model(target="label", training={"epochs": 10}).fit(data, progress=False, cache_dir=False) \
            .save(root / "champion")
        policy = root / "policy.yaml"
        policy.write_text(yaml.safe_dump(POLICY))
        backends = {"sqlite": None, **({"postgresql": args.postgres} if args.postgres else {})}
        for backend, base in backends.items():
            result["turns"][backend] = turns(champion, fresh_store(base, root), policy, root / f"art-{backend}", args.turns)
            rounds = [race(champion, fresh_store(base, root), policy, root / f"art-{backend}-{i}", args.racers)
                      for i in range(args.rounds)]
            result["races"][backend] = {"rounds": rounds, "racers": args.racers,
                                        "rounds_with_exactly_one_promotion": sum(r["promotions"] == 1 for r in rounds)}
            print(backend, result["turns"][backend]["verdicts"], [r["promotions"] for r in rounds], flush=True)
    print(write_result(args.out, result))


if __name__ == "__main__":
    main()
