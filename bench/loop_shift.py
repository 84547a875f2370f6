"""The loop on natural shifts (bench/results/loop_shift.json and .md), run by ``python -m bench.loop``.

Two scenarios on real data (../shared/datasets, read in place; the source slice is written to a temporary
CSV because a retrain rebuilds the champion's rows from the file it was trained on):

- california_housing: v1 trained on the southern half (latitude < median), traffic = the northern half; R².
- adult (adult.data + adult.test): v1 trained on education HS-grad or less (education-num <= 9), traffic =
  people with more schooling; accuracy. (age < 35 → age >= 35 was screened out: see ``screen_age``.)

Per scenario, the shifted rows are shuffled (per seed) into a held-out part (only ever measured on) and a
pool (the traffic that can be labelled). Measured:

1. loss: v1 on its own test rows (source distribution) vs v1 on held-out shifted rows; and the
   ceiling: the same learner on v1's data + the whole labelled pool (what labels can recover at most).
2. the loop: ``FEEDBACK`` pool rows arrive as feedback, the unattended worker (``loopml loop``) — or
   ``loopml.loop.retrain`` when the worker is not installed — retrains, gates and promotes; the share of
   the loss the promoted v2 recovers on held-out shifted rows.
3. warm start vs scratch, with a small network (``NET_EPOCHS`` epochs): the same feedback, one retrain
   each way; train seconds and the recovered metric.
4. labels needed to recover 80% of the loss: labels chosen in rounds from the pool with
   ``loopml.loop.queue.rank_candidates`` (uncertainty, diverse, random), each round retrains on v1's data +
   the chosen labels (as a retrain does) and is measured on held-out shifted rows; the label count at 80%
   is interpolated linearly between budget-grid points. Mean over seeds, and random / strategy.

The main learner is LightGBM (``LEARNER``): ~1 s of boosting per fit, most of a fit is loopml's own
evaluation; the whole bench takes ~15 min on 2 cores. ``--quick`` runs every step on small sizes and one
budget grid of (50, 200) as a smoke test: it prints, and writes no results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

import loopml
from bench import realdata
from bench.common import RESULTS, write_result
from loopml.loop.policy import load_policy
from loopml.loop.retrain import candidate_config, retrain
from loopml.loop.training_data import RETRAIN_SPLIT_COLUMN, champion_splits
from loopml.registry import Store

ROOT = Path(__file__).resolve().parents[1]
LEARNER = {"type": "lightgbm", "learning_rate": 0.1}
NET_EPOCHS = 8
FEEDBACK = 600
#: feedback batches the loop gets at most, one decision after each, until it promotes
ROUNDS = 4
WEIGHT = 3
STRATEGIES = ("uncertainty", "diverse", "random")


@dataclass
class Scenario:
    name: str
    target: str
    metric: str
    shift: str
    frames: Callable[[], tuple[pd.DataFrame, pd.DataFrame]]
    held: int
    pool: int
    budgets: tuple[int, ...]
    learner: dict


def california() -> tuple[pd.DataFrame, pd.DataFrame]:
    df = realdata.california_housing()
    median = df["latitude"].median()
    return df[df["latitude"] < median], df[df["latitude"] >= median]


def adult_frame() -> pd.DataFrame:
    train, test = realdata.adult()
    return pd.concat([train, test], ignore_index=True)


def adult() -> tuple[pd.DataFrame, pd.DataFrame]:
    df = adult_frame()
    low = df["education-num"] <= 9
    return df[low], df[~low]


SCENARIOS = (
    Scenario("california_north", "median_house_value", "r2", "trained on latitude < median (34.26), traffic from "
             "latitude >= median", california, 4000, 6000, (25, 50, 100, 200, 400, 800, 1600), LEARNER),
    Scenario("adult_education", "income", "accuracy", "trained on education-num <= 9 (HS-grad or less; adult.data + "
             "adult.test), traffic from education-num > 9", adult, 10000, 8000, (25, 50, 100, 200, 400, 800, 1600),
             LEARNER),
)


def policy_dict(metric: str, **extra) -> dict:
    return {"trigger": {"min_feedback": FEEDBACK - 100, "on_drift": False},
            "data": {"feedback_weight": WEIGHT, "holdout_fraction": 0.3},
            "gate": {"metric": metric, "margin": 0.01, "max_test_regression": 0.02},
            "loop": {"interval_s": 2}, **extra}


def records(frame: pd.DataFrame, target: str) -> list[dict]:
    return [{k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in frame.drop(columns=[target]).to_dict("records")]


def feed(store: Store, name: str, frame: pd.DataFrame, target: str) -> None:
    labels = frame[target].tolist()
    for inputs, label in zip(records(frame, target), labels, strict=True):
        store.add_feedback(name, label.item() if hasattr(label, "item") else label, inputs=inputs)


def score(model, frame: pd.DataFrame, metric: str) -> float:
    return float(model.evaluate(frame, coerce=True)[metric])


def split_shifted(shifted: pd.DataFrame, sc: Scenario, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(held-out, pool) for one seed."""
    rows = shifted.sample(frac=1.0, random_state=seed)
    return rows.iloc[: sc.held], rows.iloc[sc.held : sc.held + sc.pool]


class Refit:
    """Fits 'v1's training rows + labelled rows' as a retrain builds them: v1's own train/validation/test
    split kept, the labels in train, each ``WEIGHT`` times."""

    def __init__(self, store: Store, name: str, champion, metric: str) -> None:
        self.config, _ = candidate_config(champion, load_policy(policy_dict(metric)))
        parts, _ = champion_splits(store, name, champion, None)
        self.columns = list(parts["train"].columns)
        self.base = pd.concat([parts[s].assign(**{RETRAIN_SPLIT_COLUMN: s}) for s in ("train", "validation", "test")],
                              ignore_index=True)

    def __call__(self, labelled: pd.DataFrame):
        extra = labelled.reindex(columns=self.columns).assign(**{RETRAIN_SPLIT_COLUMN: "train"})
        data = pd.concat([self.base, *[extra] * WEIGHT], ignore_index=True)
        return loopml.Model(self.config).fit(data, progress=False, cache_dir=False)


def label_curve(refit: Refit, champion, pool: pd.DataFrame, held: pd.DataFrame, sc: Scenario, strategy: str,
                seed: int) -> dict:
    from loopml.loop.queue import rank_candidates

    model, chosen, points = champion, [], []
    for budget in sc.budgets:
        left = pool.drop(index=chosen)
        ranked = rank_candidates(model, left.drop(columns=[sc.target]), budget - len(chosen), strategy, seed=seed,
                                 labelled=pool.loc[chosen].drop(columns=[sc.target]) if chosen else None)
        chosen += [r["index"] for r in ranked]
        model = refit(pool.loc[chosen])
        points.append([len(chosen), score(model, held, sc.metric)])
    return {"points": points}


def labels_to(points: list, start: float, goal: float) -> float | None:
    """Labels at which the curve (from (0, start)) first reaches ``goal``, linearly interpolated; None if never."""
    prev_n, prev_v = 0, start
    for n, v in points:
        if v >= goal:
            return float(prev_n + (n - prev_n) * (goal - prev_v) / (v - prev_v)) if v > prev_v else float(n)
        prev_n, prev_v = n, v
    return None


def worker_installed() -> bool:
    if find_spec("loopml.loop.worker") is None:
        return False
    out = subprocess.run([sys.executable, "-m", "loopml", "loop", "--help"], capture_output=True, cwd=ROOT, timeout=120)
    return out.returncode == 0


def loop_promotion(store: Store, url: str, artifacts: Path, sc: Scenario, pool: pd.DataFrame, tmp: Path,
                   rounds: int = ROUNDS) -> tuple[list[dict], str]:
    """Feedback arrives ``FEEDBACK`` pool rows at a time; after each batch, the loop's next decision. Until the
    first promotion (at most ``rounds`` batches). By the unattended worker when installed, else ``retrain``."""
    policy = policy_dict(sc.metric)
    decisions: list[dict] = []

    def next_decision(wait: Callable[[int], dict]) -> bool:
        batch = pool.iloc[len(decisions) * FEEDBACK : (len(decisions) + 1) * FEEDBACK]
        feed(store, sc.name, batch, sc.target)
        d = wait(len(decisions))
        decisions.append({"feedback": (len(decisions) + 1) * FEEDBACK, "promoted": bool(d["promoted"]),
                          "reason": d["reason"], "candidate_version": d["candidate_version"],
                          "numbers": d.get("numbers")})
        return decisions[-1]["promoted"]

    if not worker_installed():
        while len(decisions) < rounds and not next_decision(
                lambda _: retrain(store, sc.name, load_policy(policy), reason="bench: feedback arrived")):
            pass
        return decisions, "loopml.loop.retrain"
    path = tmp / f"{sc.name}-policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    env = {**os.environ, "LOOPML_ARTIFACTS": str(artifacts), "PYTHONPATH": str(ROOT)}
    log = (tmp / f"{sc.name}-worker.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "loopml", "loop", sc.name, "--policy", str(path), "--store", url],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def wait(seen: int) -> dict:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            decided = [d for d in store.list_gate_decisions(sc.name) if d["candidate_version"] is not None]
            if len(decided) > seen:
                return decided[seen]
            time.sleep(1)
        raise RuntimeError(f"the worker made no decision (exit {proc.poll()}); see {log.name}:\n"
                           + Path(log.name).read_text()[-2000:])

    try:
        while len(decisions) < rounds and not next_decision(wait):
            pass
        return decisions, "loopml loop (worker process)"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def loop_part(store: Store, url: str, artifacts: Path, sc: Scenario, pool: pd.DataFrame, held: pd.DataFrame,
              out: dict, tmp: Path) -> dict:
    started = time.perf_counter()
    decisions, via = loop_promotion(store, url, artifacts, sc, pool, tmp)
    last = decisions[-1]
    v2 = loopml.load(store.resolve(f"{sc.name}:{last['candidate_version']}")["path"])
    loop = {"via": via, "feedback_per_round": FEEDBACK, "policy": policy_dict(sc.metric),
            "seconds": time.perf_counter() - started, "decisions": decisions, "promoted": last["promoted"],
            "labels_at_first_promotion": last["feedback"] if last["promoted"] else None,
            "v2_shifted": score(v2, held, sc.metric), "v2_source_test": (last.get("numbers") or {}).get("candidate_test")}
    loop["recovered_share"] = (loop["v2_shifted"] - out["v1_shifted"]) / out["loss"] if out["loss"] > 0 else None
    for d in decisions:
        print(f"  by {via}: after {d['feedback']} labels: {'PROMOTED' if d['promoted'] else 'rejected'} "
              f"v{d['candidate_version']} — {d['reason']}", flush=True)
    print(f"  {sc.metric} on shifted rows {out['v1_shifted']:.4f} → {loop['v2_shifted']:.4f}: "
          f"{loop['recovered_share']:.0%} of the loss recovered", flush=True)
    return loop


def warm_vs_scratch(store: Store, sc: Scenario, source_csv: Path, feedback: pd.DataFrame, held: pd.DataFrame,
                    v1_shifted_net: list) -> dict:
    """A small network champion, the same feedback, one retrain from scratch and one warm-started."""
    net = loopml.Model(target=sc.target, training={"epochs": NET_EPOCHS}).fit(
        source_csv, progress=False, cache_dir=False, track=f"{sc.name}-net", store=store)
    net.save(source_csv.parent / f"{sc.name}-net")
    out = {"learner": f"network, {NET_EPOCHS} epochs", "v1_source_test": net.metrics["test"][sc.metric],
           "v1_shifted": score(net, held, sc.metric)}
    v1_shifted_net.append(out["v1_shifted"])
    for start in ("scratch", "warm"):
        name = f"{sc.name}-net-{start}"
        store.register(name, run=net.run_id)
        store.promote(name, 1)
        feed(store, name, feedback, sc.target)
        policy = load_policy(policy_dict(sc.metric, start=start, train={"training": {"epochs": NET_EPOCHS}}))
        started = time.perf_counter()
        decision = retrain(store, name, policy, reason=f"bench: {start}")
        seconds = time.perf_counter() - started
        candidate = loopml.load(store.resolve(f"{name}:{decision['candidate_version']}")["path"])
        out[start] = {"train_seconds": decision["numbers"]["train_seconds"], "retrain_seconds": seconds,
                      "promoted": decision["promoted"], "reason": decision["reason"],
                      "shifted": score(candidate, held, sc.metric),
                      "source_test": decision["numbers"].get("candidate_test")}
        lost = out["v1_source_test"] - out["v1_shifted"]
        out[start]["recovered_share"] = (out[start]["shifted"] - out["v1_shifted"]) / lost if lost > 0 else None
        print(f"  {start:7s}: {seconds:5.1f} s, {sc.metric} {out['v1_shifted']:.4f} → {out[start]['shifted']:.4f} "
              f"({'promoted' if decision['promoted'] else 'rejected'})", flush=True)
    return out


def scenario(sc: Scenario, tmp: Path, seeds: int) -> dict:
    source, shifted = sc.frames()
    source_csv = tmp / f"{sc.name}-source.csv"
    source.to_csv(source_csv, index=False)
    url = f"sqlite:///{tmp / f'{sc.name}.db'}"
    artifacts = tmp / f"{sc.name}-artifacts"
    store = Store(url, str(artifacts))
    started = time.perf_counter()
    v1 = loopml.Model(target=sc.target, learner=sc.learner).fit(source_csv, progress=False, cache_dir=False,
                                                                track=sc.name, store=store)
    v1.save(tmp / f"{sc.name}-v1")
    store.register(sc.name, run=v1.run_id, description="v1: source slice")
    store.promote(sc.name, 1, reason="first model")
    held, pool = split_shifted(shifted, sc, 0)
    out: dict = {"shift": sc.shift, "metric": sc.metric, "learner": sc.learner, "source_rows": len(source),
                 "shifted_rows": len(shifted), "held_out_rows": len(held), "pool_rows": len(pool),
                 "v1_fit_seconds": time.perf_counter() - started, "v1_source_test": v1.metrics["test"][sc.metric],
                 "v1_shifted": score(v1, held, sc.metric)}
    out["loss"] = out["v1_source_test"] - out["v1_shifted"]
    refit = Refit(store, sc.name, v1, sc.metric)
    print(f"{sc.name}: v1 {sc.metric} {out['v1_source_test']:.4f} on its test rows, {out['v1_shifted']:.4f} on "
          f"shifted rows (loss {out['loss']:.4f})", flush=True)

    out["loop"] = loop_part(store, url, artifacts, sc, pool, held, out, tmp)
    feedback = pool.iloc[:FEEDBACK]

    out["warm_vs_scratch"] = warm_vs_scratch(store, sc, source_csv, feedback, held, [])

    curves: dict = {s: [] for s in STRATEGIES}
    ceilings, starts = [], []
    for seed in range(seeds):
        held_s, pool_s = split_shifted(shifted, sc, seed)
        start = score(v1, held_s, sc.metric)
        ceiling = score(refit(pool_s), held_s, sc.metric)
        starts.append(start)
        ceilings.append(ceiling)
        for strategy in STRATEGIES:
            t = time.perf_counter()
            curve = label_curve(refit, v1, pool_s, held_s, sc, strategy, seed)
            curve.update(seed=seed, start=start, ceiling=ceiling, seconds=time.perf_counter() - t)
            # 80% of the loss the labels can recover (up to the ceiling), and of the loss as measured above
            curve["labels_to_80"] = labels_to(curve["points"], start, start + 0.8 * (ceiling - start))
            curve["labels_to_80_of_loss"] = labels_to(curve["points"], start, start + 0.8 * out["loss"])
            curves[strategy].append(curve)
            print(f"  seed {seed} {strategy:11s}: " + " ".join(f"{n}:{v:.3f}" for n, v in curve["points"])
                  + f"  (ceiling {ceiling:.3f}; {reached(curve['labels_to_80'], sc.budgets[-1])})", flush=True)
    out["ceiling_shifted"] = float(np.mean(ceilings))
    out["recoverable_loss"] = float(np.mean(ceilings) - np.mean(starts))
    out["loop"]["recovered_share_of_recoverable"] = (out["loop"]["v2_shifted"] - out["v1_shifted"]) / \
        (ceilings[0] - out["v1_shifted"])
    out["labels"] = {"budgets": list(sc.budgets), "seeds": seeds, "curves": curves,
                     "labels_to_80": summarise(curves, "labels_to_80", sc.budgets[-1]),
                     "labels_to_80_of_loss": summarise(curves, "labels_to_80_of_loss", sc.budgets[-1])}
    return out


def reached(labels: float | None, most: int) -> str:
    return f"80% at {labels:.0f} labels" if labels is not None else f"80% not reached by {most} labels"


def summarise(curves: dict, key: str, most: int) -> dict:
    """Mean labels-to-80% per strategy (a seed that never gets there counts as the largest budget, and
    the mean is then a lower bound), and random / strategy."""
    out = {}
    for strategy, runs in curves.items():
        values = [r[key] for r in runs]
        reached = [v for v in values if v is not None]
        out[strategy] = {"per_seed": values, "reached": f"{len(reached)}/{len(values)}",
                         "mean": float(np.mean([most if v is None else v for v in values])),
                         "lower_bound": len(reached) < len(values)}
    for strategy in STRATEGIES[:-1]:
        out[strategy]["random_over_strategy"] = out["random"]["mean"] / out[strategy]["mean"]
    return out


NOTES = ("With LightGBM (no ensemble members) the queue's `uncertainty` for a regressor is the doubt a label "
         "settles (loopml/loop/covering.py: a Gaussian-process prior over the drift-weighted inputs and the prediction, "
         "conditioned on the rows labelled so far; the next pick removes the most variance summed over the window). "
         "Until 2026-12-04 it was novelty (the rarest inputs under v1's training reference), which picked the "
         "northernmost blocks and needed 753 labels to random's 137 on california. `diverse` for such a regressor "
         "is kernel herding (each pick makes the labelled rows look more like the window; until 2026-12-04 18:00 "
         "k-means cluster centres, 83 labels). For adult (a classifier) `uncertainty` is the margin order passing "
         "over near-twins of rows already picked (plain margin order: 273 labels). A one-seed pilot with a bagged "
         "LightGBM (members that disagree) put member "
         "spread level with random at twice the cost per fit, so it is not used here. bench/queue_research.py "
         "measures candidate strategies on california in seconds (6 seeds).")


def markdown(result: dict) -> str:
    lines = ["# The loop on natural shifts", "", f"Written by `python -m bench.loop --only shift` on {result['when']} "
             f"({result['machine']['cpus']} CPUs). Main learner: LightGBM {LEARNER}; warm vs scratch: a network "
             f"({NET_EPOCHS} epochs). Labels-to-80%: mean over {result['seeds']} seeds, interpolated on the budget "
             "grid; 'of recoverable' = 80% of the way from v1 to the ceiling (v1's data + the whole labelled pool).", "",
             "| scenario | metric | v1 source test → shifted (loss) | ceiling | loop: v2 on shifted (recovered) | "
             "net scratch: s, metric | net warm: s, metric | labels to 80% of the loss: uncertainty / diverse / random "
             "(random÷each) | labels to 80% of recoverable: uncertainty / diverse / random (random÷each) |",
             "|" + "---|" * 9]
    for name, r in result["scenarios"].items():
        w = r["warm_vs_scratch"]
        when = f" (measured {r['measured']})" if "measured" in r else f" (measured {result['when'][:16]})"
        first = r["loop"].get("labels_at_first_promotion")
        promoted = f"promoted after {first} labels" if first else "(never promoted)"

        def labels(key: str, r=r) -> str:
            lab = r["labels"][key]
            if all(v is None for v in lab["random"]["per_seed"]):
                return f"not reached by {r['labels']['budgets'][-1]} labels (the ceiling is below it)"
            counts = " / ".join(f"{'≥' if lab[s]['lower_bound'] else ''}{lab[s]['mean']:.0f}" for s in STRATEGIES)
            ratios = ", ".join(f"{lab[s]['random_over_strategy']:.2f}×" for s in STRATEGIES[:-1])
            return f"{counts} ({ratios})"

        lines.append(
            f"| {name}{when} | {r['metric']} | {r['v1_source_test']:.3f} → {r['v1_shifted']:.3f} ({r['loss']:.3f}) | "
            f"{r['ceiling_shifted']:.3f} | {r['loop']['v2_shifted']:.3f} {promoted} "
            f"({r['loop']['recovered_share']:.0%} of the loss; "
            f"{r['loop']['recovered_share_of_recoverable']:.0%} of recoverable) | "
            f"{w['scratch']['train_seconds']:.1f}, {w['scratch']['shifted']:.3f} | {w['warm']['train_seconds']:.1f}, "
            f"{w['warm']['shifted']:.3f} | {labels('labels_to_80_of_loss')} | {labels('labels_to_80')} |")
    lines += ["", NOTES]
    if "screened_out" in result:
        a = result["screened_out"]["adult_age35"]
        lines += ["", f"adult trained on age < 35 was screened out: {a['v1_source_test']:.3f} on its own test rows → "
                  f"{a['v1_shifted']:.3f} on age >= 35, and the ceiling with 8,000 labels is {a['ceiling_shifted']:.3f}: "
                  "the loss is the older group being harder to predict, not unseen, so labels cannot recover it."]
    last = (f" The last run re-measured {result['remeasured']} only ({result['seconds_last'] / 60:.1f} min)."
            if "remeasured" in result else "")
    lines += ["", f"Total: {result['seconds'] / 60:.1f} min.{last} Per-seed curves and the loop's gate reasons are in "
              "loop_shift.json.", ""]
    return "\n".join(lines)


def screen_age(tmp: Path) -> dict:
    """adult trained on age < 35: most of its loss is not recoverable (older people are harder to tell apart,
    not unseen), so it cannot measure label efficiency; measured here to say so."""
    df = adult_frame()
    young, old = df[df["age"] < 35], df[df["age"] >= 35].sample(frac=1.0, random_state=0)
    held, pool = old.iloc[:10000], old.iloc[10000:18000]
    v1 = loopml.Model(target="income", learner=LEARNER).fit(young, progress=False, cache_dir=False)
    ceiling = loopml.Model(target="income", learner=LEARNER).fit(pd.concat([young, *[pool] * WEIGHT]), progress=False,
                                                                 cache_dir=False)
    out = {"shift": "trained on age < 35, traffic from age >= 35", "v1_source_test": v1.metrics["test"]["accuracy"],
           "v1_shifted": score(v1, held, "accuracy"), "ceiling_shifted": score(ceiling, held, "accuracy")}
    print(f"adult age<35 (screened out): {out['v1_source_test']:.4f} → {out['v1_shifted']:.4f}, ceiling with "
          f"{len(pool)} labels {out['ceiling_shifted']:.4f}", flush=True)
    return out


def run(seeds: int = 3, quick: bool = False, only: str | None = None) -> dict:
    """``only``: re-measure that scenario; the others keep their stored entries (each says when it was measured)."""
    global FEEDBACK
    started = time.perf_counter()
    scenarios = [s for s in SCENARIOS if only in (None, s.name)]
    if not scenarios:
        raise SystemExit(f"unknown scenario {only!r}; known: {', '.join(s.name for s in SCENARIOS)}")
    if quick:  # a smoke run: every step on small sizes
        FEEDBACK = 300
        scenarios = [Scenario(s.name, s.target, s.metric, s.shift, s.frames, 1500, 1500, (50, 200), s.learner)
                     for s in SCENARIOS]
    result: dict = {"seeds": seeds, "scenarios": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for sc in scenarios:
            result["scenarios"][sc.name] = {**scenario(sc, Path(tmp), seeds), "measured": time.strftime("%Y-%m-%d %H:%M")}
        if not quick and only is None:
            result["screened_out"] = {"adult_age35": screen_age(Path(tmp))}
    result["seconds"] = time.perf_counter() - started
    stored = RESULTS / "loop_shift.json"
    if only is not None and not quick and stored.exists():
        before = json.loads(stored.read_text())
        if before.get("seeds") != seeds:
            raise SystemExit(f"loop_shift.json has {before.get('seeds')} seeds; re-measure one scenario with as many")
        kept = {k: {"measured": before["when"][:16], **v} for k, v in before["scenarios"].items()}
        result = {**before, "scenarios": {**kept, **result["scenarios"]},
                  "seconds_last": result["seconds"], "remeasured": only}
    if quick:  # a smoke run is not a result: the table is only built, so its code runs too
        markdown({"when": "now", "machine": {"cpus": os.cpu_count()}, **json.loads(json.dumps(result))})
        print(f"quick run done in {result['seconds'] / 60:.1f} min; nothing written (results come from a full run)")
        return result
    path = write_result("loop_shift", result)
    (RESULTS / "loop_shift.md").write_text(markdown(json.loads(path.read_text())))
    print(f"written {path} and loop_shift.md ({result.get('seconds_last', result['seconds']) / 60:.1f} min)")
    return result
