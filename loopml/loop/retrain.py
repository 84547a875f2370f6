"""Retraining from feedback, and the gate that decides whether the candidate replaces the champion.

The candidate trains on the champion's training rows (rebuilt from the split record in its model
directory: files' rows and earlier turns' feedback) plus the new feedback but a share held back
(``holdout_mask``). Both models are then scored on that held-back window and on the champion's original
test rows (never trained on); the candidate is promoted only if it wins on the window by the policy's
margin, is right significantly more often there (McNemar), and does not lose more than the
tolerance on the original test set. Every decision is recorded with its numbers.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError
from scipy.stats import binomtest

from loopml.errors import LoopmlError
from loopml.loop.policy import Policy
from loopml.loop.training_data import RETRAIN_SPLIT_COLUMN as SPLIT_COLUMN
from loopml.registry.faults import pause_point


def holdout_mask(rows: int, held: int, how: str = "spread") -> np.ndarray:
    """Which of ``rows`` labels (in arrival order) are held back: ``held`` of them, the newest or spread evenly.

    Spread, because labels from the queue arrive in its rank order: the newest are its lowest-ranked picks, unlike
    the ones learned from. On `make demo` (adult, 600 queue labels) the newest 180 showed v2 no better than v1
    (0.589 both) while v2 gained 3 points on unseen shifted people; every third label judged 0.533 → 0.650."""
    if how == "newest":
        return np.arange(rows) >= rows - held
    position = np.arange(rows + 1) * held // max(rows, 1)  # held · i / rows, floored: steps up `held` times
    return np.diff(position) > 0


def should_retrain(store, name: str, policy: Policy) -> tuple[bool, str]:
    """Whether the policy's trigger fires now, and why."""
    from loopml.loop.rollout import list_rollouts

    on_trial = list_rollouts(store, name, ("trial",))
    if on_trial:  # a candidate on live trial: judge it before training another (a watch does not block)
        return False, f"version {on_trial[-1]['candidate_version']} is on {on_trial[-1]['mode']} trial"
    # labels count from the last retrain's decision: a rollout's, a watch's or the loop's own rows do not reset it
    # a failed retrain does not consume its labels either: once its cause is fixed they still trigger one
    decisions = [d for d in store.list_gate_decisions(name) if d.get("kind") in (None, "retrain")
                 and not (d.get("numbers") or {}).get("failed")]
    # from when that retrain read the feedback, not when it decided: labels that came in while it trained are new
    since = float((decisions[-1].get("numbers") or {}).get("feedback_read_at") or decisions[-1]["at"]) if decisions \
        else 0.0
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
    # coerce: the champion's own rows may hold values its training read as missing (a stray 'n/a'
    # in a number column); the gate scores them the same way instead of refusing them
    metrics = model.evaluate(frame, coerce=True)
    if metric not in metrics:
        raise LoopmlError(f"gate metric '{metric}' is not available for this model (have: {', '.join(metrics)})")
    if model.preprocessor.target.kind == "number":
        return metrics[metric], np.zeros(len(frame), dtype=bool)
    correct = np.array([str(p) == str(a) for p, a in zip(model.predict(frame, coerce=True), frame[target], strict=True)])
    return metrics[metric], correct


def mcnemar(first: np.ndarray, second: np.ndarray) -> tuple[int, int, float]:
    """One-sided McNemar on paired right/wrong rows: is ``first`` right significantly more often than ``second``?
    (rows only ``first`` got right, rows only ``second`` got right, p-value)."""
    only_first, only_second = int((first & ~second).sum()), int((second & ~first).sum())
    discordant = only_first + only_second
    p_value = float(binomtest(only_first, discordant, 0.5, alternative="greater").pvalue) if discordant else 1.0
    return only_first, only_second, p_value


def describe_outcome(name: str, decision: dict) -> str:
    """A retrain's result as one line: ``candidate clf:4 PROMOTED: …`` / ``on trial`` / ``rejected`` / ``no candidate``."""
    if decision.get("candidate_version") is None:
        return f"no candidate: {decision['reason']}"
    verdict = "PROMOTED" if decision["promoted"] else "on trial" if decision.get("trial") else "rejected"
    return f"candidate {name}:{decision['candidate_version']} {verdict}: {decision['reason']}"


def gate(champion, candidate, window: pd.DataFrame, test: pd.DataFrame, policy: Policy) -> tuple[bool, str, dict]:
    g = policy.gate
    target = champion.preprocessor.target
    if g.metric == "roc_auc" and target.kind != "number":
        present = {str(v) for v in window[target.column]}
        if len(present) < len(target.classes):  # the window, not the model: no curve without every class in it
            return False, (f"roc_auc is undefined on the held-back feedback: it holds only {len(present)} of the "
                           f"{len(target.classes)} classes ({', '.join(sorted(present))}); not promoted"), \
                {"metric": g.metric, "window_rows": len(window), "test_rows": len(test)}
    champ_window, champ_right = _scores(champion, window, g.metric)
    cand_window, cand_right = _scores(candidate, window, g.metric)
    champ_test, _ = _scores(champion, test, g.metric) if len(test) else (None, None)  # no test split: window only
    cand_test, _ = _scores(candidate, test, g.metric) if len(test) else (None, None)
    only_candidate, only_champion, p_value = mcnemar(cand_right, champ_right)
    numbers = {"metric": g.metric, "window_rows": len(window), "test_rows": len(test),
               "champion_window": champ_window, "candidate_window": cand_window,
               "champion_test": champ_test, "candidate_test": cand_test,
               "only_candidate_right": only_candidate, "only_champion_right": only_champion, "mcnemar_p": p_value}
    gain, regression = cand_window - champ_window, champ_test - cand_test if len(test) else 0.0
    failed = []  # every check that fails, the first one leading the reason
    if gain < g.margin:
        failed.append(f"{g.metric} on held-back feedback {cand_window:.4f} vs {champ_window:.4f}: gain {gain:+.4f} "
                      f"< margin {g.margin}")
    elif candidate.preprocessor.target.kind != "number" and p_value >= g.significance:
        failed.append(f"gain {gain:+.4f} on held-back feedback is not significant (McNemar p={p_value:.3f})")
    if regression > g.max_test_regression:
        failed.append(f"{g.metric} on the original test set falls {champ_test:.4f} → {cand_test:.4f} "
                      f"(more than {g.max_test_regression})")
    if failed:
        return False, "; and ".join(failed), numbers
    tested = f"original test {champ_test:.4f} → {cand_test:.4f}" if len(test) else "no original test rows"
    # a regression gate has no paired right/wrong test (margin and test-set tolerance only): no p-value to quote
    tested_p = "" if candidate.preprocessor.target.kind == "number" else f" (p={p_value:.3f})"
    return True, f"{g.metric} on held-back feedback {champ_window:.4f} → {cand_window:.4f}{tested_p}; {tested}", numbers


def retrain(store, name: str, policy: Policy, reason: str = "manual", progress: bool = False) -> dict:
    """Train a candidate from the champion's data + new feedback, gate it, register it with its
    decision, promote it if it won and the champion did not move meanwhile.

    One retrain per model at a time (a lock in the store); a second one records that it did not
    start and returns. Any failure records a 'failed' decision and re-raises: no version is ever
    left without a decision.
    """
    from loopml.registry.gating import LockHeld, LockKeeper

    keeper = LockKeeper(store, name)
    try:
        keeper.acquire()
    except LockHeld as e:
        store.add_gate_decision(name, None, store.alias_version(name, policy.alias), False, str(e), {"skipped": "locked"})
        return {"promoted": False, "reason": str(e), "candidate_version": None, "locked": True}
    try:
        return _retrain(store, name, policy, reason, progress, keeper)
    except BaseException as e:  # recorded, then re-raised unchanged: the audit trail shows every attempt
        why = f"failed: {e}" if isinstance(e, LoopmlError) else f"failed: {type(e).__name__}: {e}"
        store.add_gate_decision(name, None, store.alias_version(name, policy.alias), False, why[:2000],
                                {"failed": True})
        raise
    finally:
        keeper.release()


def _retrain(store, name: str, policy: Policy, reason: str, progress: bool, keeper) -> dict:
    import loopml
    from loopml.loop.feedback_rows import latest_across_turns, usable_feedback
    from loopml.loop.rollout import starts_rollout
    from loopml.loop.training_data import (
        champion_splits,
        combine,
        feedback_ids,
        feedback_media_root,
        feedback_part,
        media_columns,
        own_media_base,
    )
    from loopml.train.privacy import carry_spend

    champion_version = store.resolve(f"{name}@{policy.alias}")
    champion_number = int(champion_version["version"])
    champion = loopml.load(champion_version["path"])
    media_root = feedback_media_root(policy.data.media_root, champion)
    feedback_read_at = time.time()
    feedback = store.list_feedback(name)
    learned_ids = feedback_ids(champion.info.get("splits") or {})
    rows, skipped = usable_feedback(feedback, champion, exclude_ids=learned_ids, media_root=media_root)
    # a new label for an input an earlier turn learned replaces it (the latest label wins across turns)
    learned, _ = usable_feedback([f for f in feedback if int(f["id"]) in learned_ids], champion, media_root=media_root)
    rows, relabelled = latest_across_turns(rows, learned, list(champion.preprocessor.features))
    parts, record = champion_splits(store, name, champion, policy.data.training_data, drop_feedback=relabelled,
                                    media_root=media_root, skipped=skipped)  # + learned rows whose file is gone
    counts = {"feedback_read_at": feedback_read_at, "feedback_rows": len(rows), "feedback_skipped": dict(skipped),
              "feedback_skipped_total": int(sum(skipped.values())), "feedback_relabelled": len(relabelled)}
    n_holdout = int(round(len(rows) * policy.data.holdout_fraction))
    if n_holdout < policy.data.min_holdout or n_holdout >= len(rows):
        reason_text = (f"not enough feedback: {len(rows)} labelled rows, {n_holdout} to hold back (< {policy.data.min_holdout})"
                       if n_holdout < policy.data.min_holdout else
                       f"not enough feedback: all {len(rows)} labelled rows would be held back (holdout_fraction "
                       f"{policy.data.holdout_fraction}), none left to learn from")
        store.add_gate_decision(name, None, champion_number, False, reason_text, counts)
        return {"promoted": False, "reason": reason_text, "candidate_version": None, "numbers": counts}
    held = holdout_mask(len(rows), n_holdout, policy.data.holdout)
    learn, window = rows[~held], rows[held]
    columns = list(dict.fromkeys([*parts["train"].columns, *learn.columns.drop(["_feedback_id", "_at"])]))
    frames = [parts[split].reindex(columns=columns).assign(**{SPLIT_COLUMN: split}) for split in ("train", "validation", "test")]
    extra = learn.reindex(columns=columns).assign(**{SPLIT_COLUMN: "train"})
    frames += [extra] * policy.data.feedback_weight
    data = combine(frames, media_columns(champion))  # each part's media paths against its own base
    config, learner_note = candidate_config(champion, policy)
    config = carry_spend(config, champion)  # DP: the candidate's cumulative ε composes the lineage's spend
    # warm start reuses network weights; other learners (trees, linear, ensembles) refit from scratch
    warm = policy.start == "warm" and getattr(champion, "network", None) is not None
    started = time.time()
    candidate = loopml.Model(config)
    with own_media_base(candidate):  # data.media_root would replace the combined frame's base
        candidate.fit(data, progress=progress, track=f"retrain-{name}", store=store,
                      warm_start=champion if warm else None)
    candidate.info["splits"] = {**record, "train": [*record.get("train", []),
                                                    feedback_part(learn, policy.data.feedback_weight)]}
    with own_media_base(champion, candidate):
        promoted, why, numbers = gate(champion, candidate, window.drop(columns=["_feedback_id", "_at"]),
                                      parts["test"], policy)
    numbers.update(train_seconds=time.time() - started, learned_rows=len(learn), **counts)
    if keeper.lost:
        promoted, why = False, f"lock lost during training (another retrain took it over); not promoted. Gate: {why}"
    lineage = {"reason": reason, "parent_version": champion_number, "start": "warm" if warm else "scratch",
               "learner": config["learner"].get("type"), "learner_choice": learner_note,
               "feedback_ids": [int(i) for i in learn["_feedback_id"]],
               "feedback_from": float(learn["_at"].min()) if len(learn) else None,
               "feedback_to": float(learn["_at"].max()) if len(learn) else None,
               "held_back_ids": [int(i) for i in window["_feedback_id"]],
               "training_data": sorted({p["source"] for p in record.get("train", []) if p.get("source")}),
               "training_rows": len(parts["train"]) + len(extra) * policy.data.feedback_weight}
    with tempfile.TemporaryDirectory() as tmp:
        candidate.save(Path(tmp) / "candidate", report=True)  # tracked: the run now holds the artifact, report included
        pause_point("retrain.before_decide")
        outcome = store.register_decided(name, run=candidate.run_id, description=f"retrained: {reason}", lineage=lineage,
                                         champion_version=champion_number, alias=policy.alias, promote=promoted,
                                         reason=why, numbers=numbers, lock_token=keeper.token,
                                         trial=None if policy.rollout.mode == "direct" else policy.rollout.mode,
                                         then=starts_rollout(name, policy.alias, champion_number, policy.rollout))
    return {"promoted": outcome["promoted"], "trial": outcome.get("trial", False), "reason": outcome["reason"],
            "candidate_version": int(outcome["version"]["version"]), "champion_version": champion_number,
            "numbers": numbers}


def candidate_config(champion, policy: Policy) -> tuple[dict, str]:
    """The candidate's config (the champion's, on the retrain split, with the policy's overrides) and how
    its learner was chosen. ``policy.learner``: champion = the champion's learner choice -- its ``learner:``
    section, or for an AutoML champion the learner AutoML settled on (AutoML again when that choice is not
    one learner section); automl = AutoML again."""
    from loopml.config import _deep_merge
    from loopml.learners import LEARNERS

    config = champion.config.model_dump(mode="json")
    if "recipe" not in getattr(champion.config, "model_fields_set", {"recipe"}):
        config["recipe"] = "none"  # a model from before the recipes (train/recipes.py): retrained as it was trained
    config["split"] = {**config["split"], "column": SPLIT_COLUMN}
    chosen = config.get("learner") or {"type": "network"}
    if policy.learner == "automl":
        if "automl" not in LEARNERS:
            raise LoopmlError("policy learner: automl, but no automl learner is installed")
        config["learner"] = {"type": "automl"} if chosen.get("type") != "automl" else chosen
        note = "automl again (policy)"
    elif chosen.get("type") == "automl":
        choice = automl_choice(champion)
        if choice is not None:
            config["learner"] = choice
            config["automl"] = {**config.get("automl", {}), "time_budget": None}
            note = f"the champion's AutoML choice ({choice['type']})"
        else:
            note = "automl again (the champion's AutoML choice is not one learner section)"
    else:
        note = f"the champion's learner ({chosen.get('type')})"
    config = _deep_merge(config, policy.train)
    if policy.learner == "automl" and not (config.get("automl") or {}).get("time_budget"):
        raise LoopmlError("policy learner: automl needs a time budget: set train: {automl: {time_budget: SECONDS}} "
                          "in the policy (the champion's config has none)")
    return config, note


def automl_choice(champion) -> dict | None:
    """The ``learner:`` section that refits what an AutoML champion chose, without searching again:
    ``learner.info["choice"]`` ({"type", "params"}) when AutoML recorded it, else the leaderboard row it
    chose (its learner and parameters, when they validate as that learner's section); None otherwise."""
    from loopml.learners import LEARNERS

    info = getattr(getattr(champion, "learner", None), "info", None) or {}
    choice = info.get("choice")
    candidates = [choice] if isinstance(choice, dict) else []
    board = [r for r in (info.get("leaderboard") or champion.info.get("leaderboard") or []) if isinstance(r, dict)]
    # the row AutoML chose (``chosen``, or named by info["chosen"]); the best-ranked row as the last resort
    chosen = [r for r in board if r.get("chosen") is True or (info.get("chosen") and r.get("name") == info["chosen"])]
    candidates += [{"type": r.get("learner"), "params": r.get("params")} for r in (chosen or board[:1])]
    for c in candidates:
        kind, params = c.get("type") or c.get("learner"), c.get("params")
        if not (isinstance(kind, str) and kind in LEARNERS and kind != "automl" and isinstance(params, dict)):
            continue
        cls = LEARNERS.get(kind)
        section = {**{k: v for k, v in params.items() if k != "type"}, "type": kind}
        try:
            cls.Params.model_validate(section)
        except ValidationError:  # a leaderboard row's params are not (all) the learner's own settings
            continue
        return section
    return None
