"""Shadow and canary rollouts, and the watch after a promotion (issue 13).

A candidate that passed the gate under ``rollout: shadow`` or ``rollout: canary(P)`` is registered
without moving the alias and goes on *trial*: the server (``loopml.serve.rollout``) has it predict
beside the champion (shadow: its rows logged with ``served`` False, never returned) or answer a
sticky P% of the requests (canary). Each loop cycle ``advance_rollouts`` compares the live labels on
the candidate's own predictions with the champion's over the same period (shadow: the same inputs,
paired, McNemar as the gate; canary: two samples, Fisher's exact test; regression: squared errors,
a one-sided t-test). With ``min_live_labels`` it is promoted unless it is worse than the champion by
more than ``watch_margin``, significantly; then it is *watched*, as is a ``direct`` promotion: once
``watch_min_labels`` labels on its predictions show it significantly worse than the previous
champion was (its newest labels before the promotion) by the margin, the alias rolls back by
itself; when ``watch_until`` passes without that, it is kept.

Every state change is one transaction: the rollout row moves only from the state it was read in
(two workers never both act on it), the alias moves only while it points where the rollout expects,
and a decision row (kind ``rollout`` or ``watch``) records the change with its numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import sqlalchemy as sa
from scipy.stats import fisher_exact, ttest_ind, ttest_rel

from loopml.loop.retrain import mcnemar
from loopml.registry import db

ACTIVE = ("trial", "watching")
TRIAL_MODES = ("shadow", "canary")
_ACTOR = "loopml rollout"


class _Stale(Exception):
    """The rollout or the alias changed since it was read: leave it to the next cycle."""


# -- the rollouts table --------------------------------------------------------------------------
def insert_rollout(c, name: str, *, alias: str, candidate: int, champion: int | None, mode: str,
                   percent: float | None = None, state: str = "trial", watch_until: float | None = None,
                   numbers: dict | None = None) -> int:
    """Start a rollout inside an open writing transaction ``c``. An older trial of the same alias is
    cancelled (with its decision row): one candidate is on trial at a time, the newest."""
    now = time.time()
    older = c.execute(sa.select(db.rollouts).where(db.rollouts.c.model_name == name, db.rollouts.c.alias == alias,
                                                   db.rollouts.c.state == "trial")).all()
    for row in older:
        c.execute(db.rollouts.update().where(db.rollouts.c.id == row.id).values(state="cancelled", updated_at=now))
        _decision(c, dict(row._mapping), "rollout", False, f"trial of version {row.candidate_version} cancelled: "
                  f"version {candidate} replaces it", {"state": "cancelled", "rollout_id": row.id}, now)
    result = c.execute(db.rollouts.insert().values(
        model_name=name, alias=alias, candidate_version=candidate, champion_version=champion, mode=mode,
        percent=percent if mode == "canary" else None, state=state, started_at=now, updated_at=now,
        watch_until=watch_until, numbers=numbers or {}))
    return int(result.inserted_primary_key[0])


def end_watches(c, name: str, alias: str, promoted: int) -> None:
    """Inside the transaction that promoted ``promoted``: a watch still running on ``name@alias`` ends now, with its
    decision row (it watched a version that no longer serves, so it can give no verdict; the audit says why)."""
    now = time.time()
    watching = c.execute(sa.select(db.rollouts).where(db.rollouts.c.model_name == name, db.rollouts.c.alias == alias,
                                                      db.rollouts.c.state == "watching")).all()
    for row in watching:
        if row.candidate_version == promoted:
            continue
        ended = c.execute(db.rollouts.update().where(db.rollouts.c.id == row.id, db.rollouts.c.state == "watching")
                          .values(state="cancelled", updated_at=now)).rowcount
        if ended == 1:
            _decision(c, dict(row._mapping), "rollout", False, f"watch of v{row.candidate_version} ended early: "
                      f"v{promoted} promoted", {"state": "cancelled", "rollout_id": row.id, "promoted": promoted}, now)


def start_rollout(store, name: str, *, alias: str, candidate: int, champion: int | None, mode: str,
                  percent: float | None = None, state: str = "trial", watch_until: float | None = None,
                  numbers: dict | None = None) -> int:
    """Start a rollout in its own transaction (see ``insert_rollout``); its id."""
    with store.writer.begin() as c:
        store._lock_model_row(c, name)
        return insert_rollout(c, name, alias=alias, candidate=candidate, champion=champion, mode=mode,
                              percent=percent, state=state, watch_until=watch_until, numbers=numbers)


def starts_rollout(name: str, alias: str, champion: int, rollout) -> Callable:
    """For ``register_decided(then=...)``: in the registering transaction, a candidate sent on trial
    starts its trial; one promoted at once (``direct``) starts its watch (none when ``watch_s`` is 0)."""

    def then(c, version: int, outcome: dict) -> None:
        if outcome.get("trial"):
            insert_rollout(c, name, alias=alias, candidate=version, champion=champion, mode=rollout.mode,
                           percent=rollout.percent)
            return
        if outcome.get("promoted"):
            end_watches(c, name, alias, version)
        if outcome.get("promoted") and rollout.watch_s > 0:
            now = time.time()
            insert_rollout(c, name, alias=alias, candidate=version, champion=champion, mode="direct",
                           state="watching", watch_until=now + rollout.watch_s, numbers={"promoted_at": now})

    return then


def list_rollouts(store, name: str, states: tuple[str, ...] | None = None) -> list[dict]:
    query = sa.select(db.rollouts).where(db.rollouts.c.model_name == name).order_by(db.rollouts.c.id)
    if states:
        query = query.where(db.rollouts.c.state.in_(states))
    with store.engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(query)]


def get_rollout(store, rollout_id: int) -> dict | None:
    with store.engine.connect() as c:
        row = c.execute(sa.select(db.rollouts).where(db.rollouts.c.id == rollout_id)).first()
    return dict(row._mapping) if row is not None else None


def active_trial(store, name: str, alias: str) -> dict | None:
    """The candidate on trial for ``name@alias`` (the server polls this), or None."""
    query = (sa.select(db.rollouts).where(db.rollouts.c.model_name == name, db.rollouts.c.alias == alias,
                                          db.rollouts.c.state == "trial", db.rollouts.c.mode.in_(TRIAL_MODES))
             .order_by(db.rollouts.c.id.desc()).limit(1))
    with store.engine.connect() as c:
        row = c.execute(query).first()
    return dict(row._mapping) if row is not None else None


def _decision(c, r: dict, kind: str, promoted: bool, reason: str, numbers: dict, now: float) -> None:
    c.execute(db.gate_decisions.insert().values(
        model_name=r["model_name"], candidate_version=r["candidate_version"], champion_version=r["champion_version"],
        promoted=promoted, reason=reason, numbers=numbers, at=now, kind=kind))


def _transition(store, r: dict, state: str, *, kind: str, promoted: bool, reason: str, numbers: dict,
                move_to: int | None = None, action: str = "promote", expect: int | None = None,
                watch_until: float | None = None) -> bool:
    """Move rollout ``r`` from the state it was read in to ``state``, with its decision row and (``move_to``)
    the alias move, all or nothing. False when another worker got there first or the alias moved meanwhile."""
    now = time.time()
    name, alias = r["model_name"], r["alias"]
    try:
        with store.writer.begin() as c:
            store._lock_model_row(c, name)
            values = {"state": state, "updated_at": now, "numbers": {**(r.get("numbers") or {}), **numbers}}
            if watch_until is not None:
                values["watch_until"] = watch_until
            moved = c.execute(db.rollouts.update().where(db.rollouts.c.id == r["id"], db.rollouts.c.state == r["state"])
                              .values(**values)).rowcount
            if moved != 1:
                raise _Stale
            if move_to is not None:
                current = c.execute(sa.select(db.aliases.c.version).where(
                    db.aliases.c.name == name, db.aliases.c.alias == alias)).scalar()
                if current != expect:
                    raise _Stale
                c.execute(db.aliases.update().where(db.aliases.c.name == name, db.aliases.c.alias == alias)
                          .values(version=move_to, updated_at=now))
                c.execute(db.alias_events.insert().values(name=name, alias=alias, action=action, from_version=current,
                                                          to_version=move_to, actor=_ACTOR, reason=reason, at=now))
            _decision(c, r, kind, promoted, reason, {**numbers, "state": state, "rollout_id": r["id"]}, now)
    except _Stale:
        return False
    return True


# -- live labels ---------------------------------------------------------------------------------
def _latest_per_prediction(feedback: list[dict]) -> list[dict]:
    """One label per prediction (the latest wins); feedback on inputs alone judges no prediction."""
    by_id: dict[str, dict] = {}
    for f in feedback:
        if f.get("prediction_id") and f.get("prediction_outputs"):
            by_id[f["prediction_id"]] = f
    return sorted(by_id.values(), key=lambda f: f["id"])


def labelled(store, name: str, version: int, since: float = 0.0, until: float | None = None,
             newest: int | None = None) -> list[dict]:
    """Feedback on ``version``'s own predictions (its snapshot names the version), labelled in ``since``..``until``;
    with ``newest``, only the newest that many. One query on the feedback table: cost follows the answer."""
    f = db.feedback
    query = (sa.select(f.c.id, f.c.prediction_id, f.c.label, f.c.created_at, f.c.prediction_outputs)
             .where(f.c.model_name == name, f.c.model_version == version, f.c.prediction_id.is_not(None),
                    f.c.created_at >= since).order_by(f.c.id.desc()))
    if until is not None:
        query = query.where(f.c.created_at < until)
    if newest:
        query = query.limit(newest)
    with store.engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(query)]
    return _latest_per_prediction(rows[::-1])


def shadow_outputs(store, name: str, version: int, prediction_ids: list[str]) -> dict[str, dict]:
    """The outputs of ``version``'s shadow predictions, by the id of the answered prediction each shadows."""
    p = db.predictions
    found: dict[str, dict] = {}
    with store.engine.connect() as c:
        for start in range(0, len(prediction_ids), 500):
            chunk = prediction_ids[start:start + 500]
            for row in c.execute(sa.select(p.c.shadow_of, p.c.outputs).where(
                    p.c.model_name == name, p.c.model_version == version, p.c.served.is_(sa.false()),
                    p.c.shadow_of.in_(chunk))):
                found[row.shadow_of] = row.outputs
    return found


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _regression(rows: list[dict]) -> bool:
    first = rows[0]["prediction_outputs"]
    return first.get("probabilities") is None and _is_number(first.get("prediction"))


def _outcomes(rows: list[dict], regression: bool, outputs: list[dict] | None = None) -> np.ndarray:
    """Per row: right (classification) or the squared error (regression) of the prediction in ``outputs``
    (default: each feedback row's own snapshot)."""
    outputs = outputs if outputs is not None else [f["prediction_outputs"] for f in rows]
    if regression:
        return np.array([(float(o["prediction"]) - float(f["label"])) ** 2 for f, o in zip(rows, outputs, strict=True)])
    return np.array([str(o["prediction"]) == str(f["label"]) for f, o in zip(rows, outputs, strict=True)])


def compare(champion: np.ndarray, candidate: np.ndarray, *, regression: bool, paired: bool, margin: float,
            significance: float, labels: np.ndarray | None = None) -> dict:
    """Is ``candidate`` worse than ``champion`` by more than ``margin``, significantly? ``champion`` and
    ``candidate``: per-row right/wrong (classification, accuracy) or squared errors (regression, R² over
    the pooled ``labels``' variance); ``paired``: row i of both is the same input."""
    if regression:
        spread = float(np.var(labels)) if labels is not None and len(labels) > 1 else 0.0
        spread = spread if spread > 0 else 1.0
        champ_metric, cand_metric = 1 - champion.mean() / spread, 1 - candidate.mean() / spread
        if paired:
            p = ttest_rel(candidate, champion, alternative="greater").pvalue
        else:
            p = ttest_ind(candidate, champion, equal_var=False, alternative="greater").pvalue
        p = 1.0 if p is None or math.isnan(p) else float(p)  # no spread in the errors: nothing to conclude
        numbers = {"metric": "r2"}
    else:
        champ_metric, cand_metric = float(champion.mean()), float(candidate.mean())
        if paired:
            only_champion, only_candidate, p = mcnemar(champion, candidate)
            numbers = {"metric": "accuracy", "only_champion_right": only_champion, "only_candidate_right": only_candidate}
        else:
            table = [[int(champion.sum()), int((~champion).sum())], [int(candidate.sum()), int((~candidate).sum())]]
            p = float(fisher_exact(table, alternative="greater").pvalue)
            numbers = {"metric": "accuracy"}
    gap = float(champ_metric - cand_metric)
    numbers.update(champion=float(champ_metric), candidate=float(cand_metric), gap=gap, p_value=p,
                   champion_labels=len(champion), candidate_labels=len(candidate),
                   test="mcnemar" if paired and not regression else "fisher" if not regression
                   else "paired t" if paired else "welch t",
                   worse=bool(gap > margin and p < significance))
    return numbers


def trial_evidence(store, r: dict) -> tuple[int, dict | None]:
    """(labels on the candidate's own predictions, the comparison with the champion once there are any)."""
    name, since = r["model_name"], r["started_at"]
    if r["mode"] == "shadow":
        champ_rows = labelled(store, name, r["champion_version"], since)
        shadows = shadow_outputs(store, name, r["candidate_version"], [f["prediction_id"] for f in champ_rows])
        rows = [f for f in champ_rows if f["prediction_id"] in shadows]
        if not rows:
            return 0, None
        regression = _regression(rows)
        champ = _outcomes(rows, regression)
        cand = _outcomes(rows, regression, [shadows[f["prediction_id"]] for f in rows])
        return len(rows), (champ, cand, regression, True, rows)
    cand_rows = labelled(store, name, r["candidate_version"], since)
    champ_rows = labelled(store, name, r["champion_version"], since)
    if not cand_rows or not champ_rows:
        return len(cand_rows), None
    regression = _regression(cand_rows)
    return len(cand_rows), (_outcomes(champ_rows, regression), _outcomes(cand_rows, regression), regression, False,
                            champ_rows + cand_rows)


def _labels(rows: list[dict], regression: bool) -> np.ndarray | None:
    return np.array([float(f["label"]) for f in rows]) if regression else None


# -- one step ------------------------------------------------------------------------------------
def advance_rollouts(store, name: str, policy=None, now: float | None = None) -> list[dict]:
    """Move every active rollout of model ``name`` one step (trial → watching/promoted or rejected;
    watching → kept or rolled_back; cancelled when the alias moved by other hands).

    ``policy``: a ``Policy`` (its ``rollout`` section's thresholds; default policy when None). ``now``:
    the time the watch deadline is checked against (tests simulate time). Returns one dict per state
    change made in this call.
    """
    from loopml.loop.policy import Policy

    rules = (policy or Policy()).rollout
    now = time.time() if now is None else now
    changes = []
    for r in list_rollouts(store, name, ACTIVE):
        step = _advance_trial(store, r, rules, now) if r["state"] == "trial" else _advance_watch(store, r, rules, now)
        if step is not None:
            changes.append(step)
    return changes


def _change(r: dict, state: str, reason: str, numbers: dict) -> dict:
    return {"rollout_id": r["id"], "model": r["model_name"], "alias": r["alias"], "mode": r["mode"],
            "candidate_version": r["candidate_version"], "champion_version": r["champion_version"],
            "from": r["state"], "to": state, "reason": reason, "numbers": numbers}


def _advance_trial(store, r: dict, rules, now: float) -> dict | None:
    name, alias, cand, champ = r["model_name"], r["alias"], r["candidate_version"], r["champion_version"]
    where = f"{name}@{alias}"
    moved, change = _cancel_if_moved(store, r, champ, "rollout", lambda current: (
        f"{r['mode']} trial of version {cand} cancelled: {where} moved to version {current} meanwhile"))
    if moved:
        return change
    count, evidence = trial_evidence(store, r)
    if evidence is None or count < rules.min_live_labels or len(evidence[0]) < min(rules.min_live_labels, 10):
        if now - r["started_at"] > rules.trial_max_s:
            reason = (f"{r['mode']} trial of version {cand} timed out after {rules.trial_max_s:g} s with {count} of "
                      f"{rules.min_live_labels} live labels; {where} stays on version {champ}")
            numbers = {"candidate_labels": count, "timed_out": True}
            ok = _transition(store, r, "rejected", kind="rollout", promoted=False, reason=reason, numbers=numbers)
            return _change(r, "rejected", reason, numbers) if ok else None
        _note(store, r, {"candidate_labels": count})
        return None
    champion, candidate, regression, paired, rows = evidence
    numbers = compare(champion, candidate, regression=regression, paired=paired, margin=rules.watch_margin,
                      significance=rules.significance, labels=_labels(rows, regression))
    summary = (f"live {numbers['metric']} of version {cand} {numbers['candidate']:.4f} vs champion {champ} "
               f"{numbers['champion']:.4f} on {numbers['candidate_labels']} / {numbers['champion_labels']} labels "
               f"({numbers['test']} p={numbers['p_value']:.3g}, margin {rules.watch_margin})")
    if numbers["worse"]:
        reason = f"{r['mode']} trial rejected, {where} stays on version {champ}: {summary}"
        ok = _transition(store, r, "rejected", kind="rollout", promoted=False, reason=reason, numbers=numbers)
        return _change(r, "rejected", reason, numbers) if ok else None
    state = "watching" if rules.watch_s > 0 else "promoted"
    numbers["promoted_at"] = now
    watch = f"; watched for {rules.watch_s:g} s" if state == "watching" else ""
    reason = f"{r['mode']} trial passed, {where} → version {cand}: {summary}{watch}"
    ok = _transition(store, r, state, kind="rollout", promoted=True, reason=reason, numbers=numbers, move_to=cand,
                     expect=champ, watch_until=now + rules.watch_s if state == "watching" else None)
    return _change(r, state, reason, numbers) if ok else None


def _advance_watch(store, r: dict, rules, now: float) -> dict | None:
    name, alias, new, old = r["model_name"], r["alias"], r["candidate_version"], r["champion_version"]
    where = f"{name}@{alias}"
    moved, change = _cancel_if_moved(store, r, new, "watch", lambda current: (
        f"watch of version {new} ended: {where} moved to version {current} ({_who_moved(store, name, alias)})"))
    if moved:
        return change
    since = float((r.get("numbers") or {}).get("promoted_at") or r["started_at"])
    new_rows = labelled(store, name, new, since)
    old_rows = labelled(store, name, old, 0.0, until=since, newest=max(2 * rules.watch_min_labels, 100)) if old else []
    numbers: dict = {"watch_labels": len(new_rows), "previous_labels": len(old_rows)}
    if len(new_rows) >= rules.watch_min_labels and old_rows:
        regression = _regression(new_rows)
        numbers = {**numbers, **compare(_outcomes(old_rows, regression), _outcomes(new_rows, regression),
                                        regression=regression, paired=False, margin=rules.watch_margin,
                                        significance=rules.significance,
                                        labels=_labels(old_rows + new_rows, regression))}
        if numbers["worse"]:
            reason = (f"rolled back {where} → version {old}: live {numbers['metric']} of version {new} "
                      f"{numbers['candidate']:.4f} on {len(new_rows)} labels vs {numbers['champion']:.4f} of version "
                      f"{old} before it ({numbers['test']} p={numbers['p_value']:.3g}, margin {rules.watch_margin})")
            ok = _transition(store, r, "rolled_back", kind="watch", promoted=False, reason=reason, numbers=numbers,
                             move_to=old, action="rollback", expect=new)
            return _change(r, "rolled_back", reason, numbers) if ok else None
    if r["watch_until"] is not None and now >= r["watch_until"]:
        judged = (f"live {numbers['metric']} {numbers['candidate']:.4f} vs {numbers['champion']:.4f} before "
                  f"(p={numbers['p_value']:.3g})" if "metric" in numbers else
                  f"{len(new_rows)} labels on its predictions, {len(old_rows)} on the previous version's: not enough to judge")
        reason = f"watch of {where} version {new} passed, kept: {judged}"
        ok = _transition(store, r, "kept", kind="watch", promoted=True, reason=reason, numbers=numbers)
        return _change(r, "kept", reason, numbers) if ok else None
    _note(store, r, numbers)
    return None


def _cancel_if_moved(store, r: dict, expected: int, kind: str, describe) -> tuple[bool, dict | None]:
    """When the alias no longer points at ``expected``, the rollout is cancelled (a decision row says why):
    (True, the change, or None when another worker cancelled it first); else (False, None)."""
    current = store.alias_version(r["model_name"], r["alias"])
    if current == expected:
        return False, None
    reason = describe(current)
    ok = _transition(store, r, "cancelled", kind=kind, promoted=False, reason=reason, numbers={})
    return True, (_change(r, "cancelled", reason, {}) if ok else None)


def _who_moved(store, name: str, alias: str) -> str:
    """The alias's last move in words: 'promote by loopml retrain' / 'rollback by alice'."""
    events = store.alias_history(name, alias)
    if not events:
        return "the alias was removed"
    e = events[0]
    return f"{e['action']} by {e['actor'] or 'unknown'}"


def _note(store, r: dict, numbers: dict) -> None:
    """Progress on an active rollout (labels so far), for ``loopml monitor`` and /metrics; no state change."""
    old = r.get("numbers") or {}
    if all(old.get(k) == v for k, v in numbers.items()):
        return
    with store.writer.begin() as c:
        c.execute(db.rollouts.update().where(db.rollouts.c.id == r["id"], db.rollouts.c.state == r["state"])
                  .values(numbers={**old, **numbers}, updated_at=time.time()))
