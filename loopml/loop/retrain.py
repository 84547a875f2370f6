"""Retraining from feedback, and the gate that decides whether the candidate replaces the champion.

The candidate trains on the champion's training rows plus the older feedback; the newest feedback is
held back. Both models are then scored on that held-back window and on the champion's original test
rows (never trained on); the candidate is promoted only if it wins on the window by the policy's
margin, is right significantly more often there (McNemar), and does not lose more than the
tolerance on the original test set. Every decision is recorded with its numbers.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from loopml.errors import LoopmlError
from loopml.loop.policy import Policy

SPLIT_COLUMN = "__loopml_split__"


def feedback_frame(feedback: list[dict], target: str) -> pd.DataFrame:
    """One row per distinct input (the latest label wins), oldest first, with feedback id and time."""
    latest: dict[str, dict] = {}
    for f in feedback:
        if f.get("inputs") is None:
            continue
        key = json.dumps(f["inputs"], sort_keys=True, default=str)
        latest.pop(key, None)  # re-insert so order follows the latest label
        latest[key] = {**f["inputs"], target: f["label"], "_feedback_id": f["id"], "_at": f["created_at"]}
    return pd.DataFrame(list(latest.values()))


def original_split(champion, data_path: str) -> dict[str, pd.DataFrame]:
    """The champion's train/validation/test rows, split again exactly as its training split them."""
    from loopml.data.read import read_table
    from loopml.data.split import split_frame

    cfg = champion.config
    target = champion.preprocessor.target.column
    df = read_table(data_path, cfg.data).reset_index(drop=True)
    df = df[df[target].notna()]
    parts, _ = split_frame(df, target, cfg.split, champion.preprocessor.target.kind != "number")
    return parts


def should_retrain(store, name: str, policy: Policy) -> tuple[bool, str]:
    """Whether the policy's trigger fires now, and why."""
    decisions = store.list_gate_decisions(name)
    since = decisions[-1]["at"] if decisions else 0.0
    new = store.list_feedback(name, since)
    if len(new) >= policy.trigger.min_feedback:
        return True, f"{len(new)} new feedback labels (≥ {policy.trigger.min_feedback})"
    windows = store.list_drift_windows(name, limit=1)
    enough = len(new) >= 2 * policy.data.min_holdout
    if policy.trigger.on_drift and windows and windows[0]["drift"] and windows[0]["created_at"] > since and enough:
        return True, f"drift in {', '.join(windows[0]['results'].get('drifted', []))}"
    live = windows[0]["results"].get("live", {}) if windows else {}
    threshold = policy.trigger.live_accuracy_below
    if threshold is not None and live.get("accuracy") is not None and live["accuracy"] < threshold and enough:
        return True, f"live accuracy {live['accuracy']:.3f} < {threshold}"
    return False, f"{len(new)} new feedback labels, no trigger"


def _scores(model, frame: pd.DataFrame, metric: str) -> tuple[float, np.ndarray]:
    target = model.preprocessor.target.column
    metrics = model.evaluate(frame)
    if metric not in metrics:
        raise LoopmlError(f"gate metric '{metric}' is not available for this model (have: {', '.join(metrics)})")
    if model.preprocessor.target.kind == "number":
        return metrics[metric], np.zeros(len(frame), dtype=bool)
    correct = np.array([str(p) == str(a) for p, a in zip(model.predict(frame), frame[target], strict=True)])
    return metrics[metric], correct


def gate(champion, candidate, window: pd.DataFrame, test: pd.DataFrame, policy: Policy) -> tuple[bool, str, dict]:
    g = policy.gate
    champ_window, champ_right = _scores(champion, window, g.metric)
    cand_window, cand_right = _scores(candidate, window, g.metric)
    champ_test, _ = _scores(champion, test, g.metric)
    cand_test, _ = _scores(candidate, test, g.metric)
    only_candidate = int((cand_right & ~champ_right).sum())
    only_champion = int((champ_right & ~cand_right).sum())
    discordant = only_candidate + only_champion
    p_value = float(binomtest(only_candidate, discordant, 0.5, alternative="greater").pvalue) if discordant else 1.0
    numbers = {"metric": g.metric, "window_rows": len(window), "test_rows": len(test),
               "champion_window": champ_window, "candidate_window": cand_window,
               "champion_test": champ_test, "candidate_test": cand_test,
               "only_candidate_right": only_candidate, "only_champion_right": only_champion, "mcnemar_p": p_value}
    gain, regression = cand_window - champ_window, champ_test - cand_test
    if gain < g.margin:
        why = f"{g.metric} on held-back feedback {cand_window:.4f} vs {champ_window:.4f}: gain {gain:+.4f} < margin {g.margin}"
        return False, why, numbers
    if candidate.preprocessor.target.kind != "number" and p_value >= g.significance:
        return False, f"gain {gain:+.4f} on held-back feedback is not significant (McNemar p={p_value:.3f})", numbers
    if regression > g.max_test_regression:
        return False, (f"{g.metric} on the original test set falls {champ_test:.4f} → {cand_test:.4f} "
                       f"(more than {g.max_test_regression})"), numbers
    return True, (f"{g.metric} on held-back feedback {champ_window:.4f} → {cand_window:.4f} (p={p_value:.3f}); "
                  f"original test {champ_test:.4f} → {cand_test:.4f}"), numbers


def retrain(store, name: str, policy: Policy, reason: str = "manual", progress: bool = False) -> dict:
    """Train a candidate from the champion's data + feedback, register it, gate it, maybe promote it."""
    import loopml
    from loopml.config import _deep_merge

    champion_version = store.resolve(f"{name}@{policy.alias}")
    champion = loopml.load(champion_version["path"])
    target = champion.preprocessor.target.column
    data_path = policy.data.training_data or champion.info.get("data_source")
    if not data_path or not Path(data_path).is_file():
        raise LoopmlError(f"cannot find the champion's training data ({data_path}); set data.training_data in the policy")
    rows = feedback_frame(store.list_feedback(name), target)
    n_holdout = int(round(len(rows) * policy.data.holdout_fraction))
    if n_holdout < policy.data.min_holdout:
        reason_text = f"not enough feedback: {len(rows)} labelled rows, {n_holdout} to hold back (< {policy.data.min_holdout})"
        store.add_gate_decision(name, None, int(champion_version["version"]), False, reason_text, {"feedback_rows": len(rows)})
        return {"promoted": False, "reason": reason_text, "candidate_version": None}
    learn, window = rows.iloc[: len(rows) - n_holdout], rows.iloc[len(rows) - n_holdout :]
    parts = original_split(champion, data_path)
    columns = list(parts["train"].columns)
    frames = [parts["train"].assign(**{SPLIT_COLUMN: "train"}), parts["validation"].assign(**{SPLIT_COLUMN: "validation"}),
              parts["test"].assign(**{SPLIT_COLUMN: "test"})]
    extra = learn.reindex(columns=columns).assign(**{SPLIT_COLUMN: "train"})
    frames += [extra] * policy.data.feedback_weight
    data = pd.concat(frames, ignore_index=True)
    config = champion.config.model_dump(mode="json")
    config["split"] = {**config["split"], "column": SPLIT_COLUMN}
    config = _deep_merge(config, policy.train)
    started = time.time()
    candidate = loopml.Model(config).fit(data, progress=progress, track=f"retrain-{name}", store=store,
                                         warm_start=champion if policy.start == "warm" else None)
    with tempfile.TemporaryDirectory() as tmp:
        candidate.save(Path(tmp) / "candidate")  # tracked: the run now holds the artifact
        lineage = {"reason": reason, "parent_version": int(champion_version["version"]), "start": policy.start,
                   "feedback_ids": [int(i) for i in learn["_feedback_id"]],
                   "feedback_from": float(learn["_at"].min()) if len(learn) else None,
                   "feedback_to": float(learn["_at"].max()) if len(learn) else None,
                   "held_back_ids": [int(i) for i in window["_feedback_id"]], "training_data": data_path,
                   "training_rows": len(parts["train"]) + len(extra) * policy.data.feedback_weight}
        version = store.register(name, run=candidate.run_id, description=f"retrained: {reason}",
                                 parent_version=int(champion_version["version"]), lineage=lineage)
    promoted, why, numbers = gate(champion, candidate, window.drop(columns=["_feedback_id", "_at"]),
                                  parts["test"], policy)
    numbers.update(train_seconds=time.time() - started, feedback_rows=len(rows), learned_rows=len(learn))
    if promoted:
        store.promote(name, version["version"], policy.alias, reason=f"gate passed: {why}", actor="loopml retrain")
    store.add_gate_decision(name, int(version["version"]), int(champion_version["version"]), promoted, why, numbers)
    return {"promoted": promoted, "reason": why, "candidate_version": int(version["version"]),
            "champion_version": int(champion_version["version"]), "numbers": numbers}
