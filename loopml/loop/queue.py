"""The labelling queue: which logged predictions a label would help most, each with a one-line reason.

Strategies (``STRATEGIES``):
- ``uncertainty``: classifiers by the margin between the two most probable classes (entropy breaks
  ties); regressors by how much the ensemble's or bagged folds' members disagree, or — for a learner
  without members — by the doubt a label settles (``covering.settle``: a Gaussian-process prior over the
  drift-weighted inputs and the prediction, conditioned on the rows already labelled), and the reason says which.
- ``drift``: inputs whose values are rare under the training reference, a column weighted up by how
  far it drifts in the candidate window (its PSI), so drifted regions come first.
- ``diverse``: k-means on the standardised, encoded inputs of the most uncertain rows, the most
  uncertain row of each cluster: spread out, not ten copies of one hard case. For a model with no doubt
  to rank by (a regressor without members), kernel herding over the window and the labelled rows (inputs
  weighted by their drift, plus the model's prediction): each pick makes the labelled rows look more like
  the traffic, densest regions no label covers yet first.
- ``random``: seeded, the baseline the others are measured against.

Every strategy drops repeated inputs (identical rows appear once: a second label on the same case
teaches a retrain nothing) and ranks best first; ``uncertainty`` also passes over near-twins of a row
it already picked. Rarity and encoding read the model's reference
statistics (``loopml.loop.drift``), the model's own probabilities decide uncertainty.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import LoopmlError
from loopml.loop import covering, drift
from loopml.loop.covering import category_index, encode

STRATEGIES = ("uncertainty", "drift", "diverse", "random")
#: the newest this many unlabelled predictions are ranked
WINDOW = 5000
#: drift boost: 0 for a value at least this common in training, 1 from VERY_RARE down (log scale between)
RARE, VERY_RARE = 0.05, 0.001
#: diverse: the k-means pool holds the most uncertain POOL_FACTOR x n rows (at least MIN_POOL)
POOL_FACTOR, MIN_POOL = 20, 1000
#: a covering space (diverse and uncertainty without doubt) holds at most this many labelled rows
REPRESENTATIVE_POOL = 10_000


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise LoopmlError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    return strategy


def rank_candidates(model: Any, frame: pd.DataFrame, n: int, strategy: str = "uncertainty", *, seed: int = 0,
                    reference: dict | None = None, labelled: pd.DataFrame | None = None) -> list[dict]:
    """Up to ``n`` rows of ``frame`` as ``{"index", "score", "reason"}``, best first (``index``: the frame's label).
    ``labelled``: inputs that already have a label (``diverse`` covers the regions they leave uncovered, and for a
    regressor without members ``uncertainty`` counts them as settled)."""
    check_strategy(strategy)
    if n < 1:
        raise LoopmlError(f"n must be at least 1 (got {n})")
    ref = reference if reference is not None else (model.reference or {})
    frame = _model_columns(model, frame)
    if not len(frame):
        return []
    frame = frame[_first_copies(frame)]  # the first copy of an input: the newest when the frame is newest first
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(len(frame))[:n]
        return [_row(frame.index[i], 1.0 - rank / max(len(frame), 1), f"random pick (seed {seed})")
                for rank, i in enumerate(order)]
    if strategy == "drift":
        scores, reasons = rarity(frame, ref, weighted=True)
        return _top(frame, scores, reasons, n)
    if strategy in ("diverse", "uncertainty") and not has_doubt(model):
        known = _model_columns(model, labelled) if labelled is not None and len(labelled) else None
        choose = _representative if strategy == "diverse" else _settle
        return choose(model, frame, n, ref, seed, known)
    scores, reasons = uncertainty(model, frame, ref)
    if strategy == "uncertainty":
        return _spread(frame, scores, reasons, n, ref)
    return _diverse(frame, scores, reasons, n, ref, seed)


def feedback_queue(store: Any, name: str, n: int = 50, strategy: str = "uncertainty", alias: str = "production",
                   window: int = WINDOW, *, model: Any = None, seed: int = 0, ranked_by: int | None = None) -> list[dict]:
    """The logged, answered predictions of ``name`` without feedback (newest ``window``), ranked by the
    ``alias`` version (or ``model``, already loaded: the server passes the one it serves, and its version
    as ``ranked_by``). A row predicted by another version says whose doubt its reason is."""
    check_strategy(strategy)
    if model is None:
        import loopml

        resolved = store.resolve(f"{name}@{alias}")
        model, ranked_by = loopml.load(resolved["path"]), int(resolved["version"])
    rows = store.unlabelled_predictions(name, last=window)
    if not rows:
        return []
    frame = pd.DataFrame([r["inputs"] if isinstance(r["inputs"], dict) else {} for r in rows])
    labelled = store.labelled_inputs(name, last=window)
    if labelled:  # a twin of a labelled case teaches a retrain nothing either: it leaves the queue with it
        frame = frame[_not_labelled(model, frame, pd.DataFrame(labelled))]
    ranked = rank_candidates(model, frame, n, strategy, seed=seed,
                             labelled=pd.DataFrame(labelled) if labelled and strategy in ("diverse", "uncertainty")
                             else None)
    out = []
    for r in ranked:
        row = rows[r["index"]]
        outputs = row["outputs"] if isinstance(row["outputs"], dict) else {}
        # inputs logged as a list or a string (not by loopml's server) are read as no inputs, and shown as such
        inputs = row["inputs"] if isinstance(row["inputs"], dict) else {}
        out.append({"prediction_id": row["id"], "inputs": inputs, "prediction": outputs.get("prediction"),
                    "probabilities": outputs.get("probabilities"), "model_version": row["model_version"],
                    "created_at": row["created_at"], "score": r["score"],
                    # the logged prediction is its own version's; the ranking is the current model's doubt
                    "reason": r["reason"] if ranked_by is None or row["model_version"] == ranked_by
                    else f"by version {ranked_by}: {r['reason']}"})
    return out


# -- the scores ------------------------------------------------------------------------------------

def uncertainty(model: Any, frame: pd.DataFrame, ref: dict) -> tuple[np.ndarray, list[str]]:
    """Higher = a label helps more: the model's own doubt (classes: 1 - margin, a little entropy breaking
    ties; numbers: member spread scaled to [0, 1]) plus ``drift_boost`` — a model is often confident and
    wrong where the traffic moved away from its training data, and its doubt alone would never look there."""
    target = model.preprocessor.target
    x = model.inputs(frame)
    if target.kind != "number":
        with np.errstate(over="ignore"):  # exp of a huge logit saturates to p = 0/1, as predict does; no warning line
            _, proba = target.decode(np.asarray(model.learner.predict_scores(x)))
        top = np.argsort(-proba, axis=1)[:, :2]
        p1, p2 = np.take_along_axis(proba, top, axis=1).T
        margin = p1 - p2
        entropy = -(proba * np.log(np.clip(proba, 1e-12, 1.0))).sum(axis=1) / math.log(proba.shape[1])
        classes = [str(c) for c in target.classes]
        doubt = (1.0 - margin) + 0.01 * entropy
        reasons = [f"margin {_margin(m)} between {classes[a]} and {classes[b]}" for m, (a, b) in zip(margin, top, strict=True)]
    else:
        members = member_predictions(model.learner, x)
        if len(members) < 2:
            scores, lines = rarity(frame, ref, weighted=True)
            return scores, [f"novelty (no ensemble members to disagree): {r}" for r in lines]
        values = np.stack([target.decode(np.asarray(s))[0] for s in members])
        spread = values.std(axis=0)
        doubt = spread / (spread.max() or 1.0)
        reasons = [f"{len(members)} members disagree: spread {_fmt(s)} (mean {_fmt(m)})"
                   for s, m in zip(spread, values.mean(axis=0), strict=True)]
    boost, lines = drift_boost(frame, ref)
    reasons = [f"{r}; {line}" if b > 0 else r for r, b, line in zip(reasons, boost, lines, strict=True)]
    return doubt + boost, reasons


def has_doubt(model: Any) -> bool:
    """Whether the model can say how unsure it is: a classifier's probabilities, or a regressor's members."""
    return model.preprocessor.target.kind != "number" or len(member_predictions(model.learner, None, count=True)) >= 2


def drift_boost(frame: pd.DataFrame, ref: dict) -> tuple[np.ndarray, list[str]]:
    """In [0, 1] per row: how rare its value is (p ≥ 5%: 0, p ≤ 0.1% or outside the range: 1) in a column that drifts
    in this window (PSI past the warning level, noise allowed for), times PSI / 0.2 (at most 1: a column
    that drifts counts in full).
    Zero everywhere when nothing drifts, so an undrifted window is ranked by doubt alone."""
    boost = np.zeros(len(frame))
    lines = [""] * len(frame)
    for col, r in ref.get("columns", {}).items():
        if col not in frame.columns or r["kind"] == "text":
            continue
        current, observations = _histogram(frame[col], r, counts_too=True)
        value = drift.psi(r["histogram"], current)
        if drift.level(value, drift.noise(len(current), observations)) == "ok":
            continue
        p, beyond = _value_share(frame[col], r)
        rare = np.log10(RARE / np.maximum(p, 1e-6)) / np.log10(RARE / VERY_RARE) + beyond / 3.0
        part = min(value / drift.DRIFT, 1.0) * np.clip(rare, 0.0, 1.0)
        for i in np.flatnonzero(part > boost):
            lines[i] = _rare_line(col, frame[col].iloc[i], p[i], r) + f" (drifted column, PSI {value:.2f})"
        boost = np.maximum(boost, part)
    return boost, lines


def member_predictions(learner: Any, x: Any, count: bool = False) -> list:
    """Raw scores of an ensemble's members or a bagged learner's folds; [] for a learner without members.
    ``count``: only find the members (one placeholder each), predict nothing."""
    from loopml.learners.multiview import member_params, select_view

    def view(v: Any, cls: type, params: Any) -> Any:
        return None if count else select_view(v, cls, params)

    def scores(m: Any, v: Any) -> Any:
        return m if count else np.asarray(m.predict_scores(v))

    final = getattr(learner, "final", None)  # automl: the chosen learner
    if final is not None:
        return member_predictions(final, view(x, type(final), final.params), count)
    members = getattr(learner, "members", None)
    if members:
        if len(members) == 1:
            return member_predictions(members[0], view(x, type(members[0]), members[0].params), count)
        return [scores(m, view(x, type(m), m.params)) for m in members]
    folds = getattr(learner, "models", None)
    if isinstance(folds, dict) and len(folds) >= 2 and getattr(learner, "full", None) is None:
        cls, params = member_params(learner.params.member)
        shared = view(x, cls, params)
        return [scores(m, shared) for m in folds.values()]
    return []


def rarity(frame: pd.DataFrame, ref: dict, weighted: bool) -> tuple[np.ndarray, list[str]]:
    """Per row, its rarest value under the training reference: score -log10(p) (times 1 + the column's
    PSI in this window when ``weighted``), and a line naming the column, the value and p."""
    columns = {c: r for c, r in ref.get("columns", {}).items() if c in frame.columns and r["kind"] != "text"}
    if not columns:
        return np.zeros(len(frame)), ["no reference statistics to compare with"] * len(frame)
    names = list(columns)
    scores = np.zeros((len(frame), len(names)))
    shares = np.ones((len(frame), len(names)))
    for j, col in enumerate(names):
        r = columns[col]
        values = frame[col]
        p, beyond = _value_share(values, r)
        shares[:, j] = p
        weight = 1.0 + (drift.psi(r["histogram"], _histogram(values, r)) if weighted else 0.0)
        scores[:, j] = (-np.log10(np.maximum(p, 1e-6)) + beyond) * weight
    best = scores.argmax(axis=1)
    rows = np.arange(len(frame))
    reasons = [_rare_line(names[j], frame[names[j]].iloc[i], shares[i, j], columns[names[j]])
               for i, j in zip(rows, best, strict=True)]
    return scores[rows, best], reasons


def _histogram(values: pd.Series, r: dict, counts_too: bool = False) -> Any:
    """``drift.histogram``, dates as days (their reference is binned as numbers, as ``drift.column_drift`` reads it)."""
    if r["kind"] == "date":
        return drift.histogram(drift._days(values), {**r, "kind": "number"}, counts_too=counts_too)
    return drift.histogram(values, r, counts_too=counts_too)


def _value_share(values: pd.Series, r: dict) -> tuple[np.ndarray, np.ndarray]:
    """The share of training rows as extreme as each value (numbers: the nearer tail of the reference
    sample; categories: the value's share, for one outside the top values at most the rarest listed),
    and for numbers outside the sample's range how far outside, in training standard deviations."""
    n = len(values)
    beyond = np.zeros(n)
    if r["kind"] in ("number", "date"):
        numbers = drift._days(values) if r["kind"] == "date" else pd.to_numeric(values, errors="coerce")
        x = numbers.to_numpy(dtype=np.float64)
        sample = np.sort(np.asarray(r["sample"], dtype=np.float64))
        missing = np.isnan(x)
        below = np.searchsorted(sample, x, side="right") / len(sample)  # share <= x
        above = 1.0 - np.searchsorted(sample, x, side="left") / len(sample)  # share >= x
        p = np.minimum(below, above)
        p = np.where(missing, r["histogram"][-1], p)
        std = r.get("std") or 1.0
        beyond = np.where(missing, 0.0, np.maximum(sample[0] - x, 0.0) + np.maximum(x - sample[-1], 0.0)) / std
        beyond = np.nan_to_num(beyond)
        return np.maximum(p, 0.0), beyond
    from loopml.features.base import canonical_keys

    hist = np.asarray(r["histogram"], dtype=np.float64)
    known = {k: hist[i] for k, i in category_index(r).items()}
    listed = len(r["values"])
    # a value outside the top values is rarer than the rarest listed, and at most the whole "other" bucket
    unlisted = min(hist[listed], hist[:listed].min(initial=1.0))
    p = np.array([hist[-1] if k is None else known.get(k, unlisted) for k in canonical_keys(values)], dtype=np.float64)
    return p, beyond


def _rare_line(col: str, value: object, p: float, r: dict) -> str:
    from loopml.features.base import canonical_key

    key = canonical_key(value)
    if key is None:
        return f"{col} missing ({_pct(p)} of training rows)"
    shown = _short(value)
    number = r["kind"] in ("number", "date")
    if p <= 0:
        return f"{col}={shown} is outside the training range" if number else f"{col}={shown} was not seen in training"
    if p >= 0.1:
        return f"no rare values (the rarest: {col}={shown}, p={_pct(p)})"
    bound = "≤" if not number and key not in category_index(r) else "="
    return f"{col}={shown} is rare in training (p{bound}{_pct(p)})"


def _diverse(frame: pd.DataFrame, weight: np.ndarray, reasons: list[str], n: int, ref: dict, seed: int) -> list[dict]:
    """k-means on the encoded inputs of the most uncertain rows; per cluster its most uncertain row.

    Greedy k-center (farthest first) was tried first: it picks outliers — the extremes of a drifted
    region — and on a synthetic shift needed more labels than random. Cluster representatives cover
    where the rows are, not where they end."""
    from sklearn.cluster import KMeans

    pool_size = min(len(frame), max(POOL_FACTOR * n, MIN_POOL))
    pool = np.argsort(-weight, kind="stable")[:pool_size]
    x = encode(frame.iloc[pool], ref)
    w = weight[pool]
    distinct = len(np.unique(x, axis=0))
    k = min(n, distinct)
    if k < 1:
        return []
    labels = KMeans(k, n_init=1, max_iter=20, random_state=seed).fit(x).labels_ if k > 1 else np.zeros(len(x), int)
    picks = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if len(members):
            picks.append((int(members[w[members].argmax()]), len(members)))
    picks.sort(key=lambda p: -w[p[0]])
    out = [_row(frame.index[pool[i]], float(w[i]), f"stands for {size} similar row{'s' if size != 1 else ''}; "
                                                   f"{reasons[pool[i]]}") for i, size in picks]
    # rows the encoding cannot tell apart (text is left out, unseen categories share one code) are still
    # distinct inputs: fewer clusters than n are topped up with the most uncertain of the rest
    chosen = {i for i, _ in picks}
    rest = [i for i in range(len(pool)) if i not in chosen][: max(n - len(out), 0)]
    return out + [_row(frame.index[pool[i]], float(w[i]), reasons[pool[i]]) for i in rest]


def _representative(model: Any, frame: pd.DataFrame, n: int, ref: dict, seed: int,
                    labelled: pd.DataFrame | None) -> list[dict]:
    """For a model without doubt to rank by (a regressor without members): the rows that make the labelled set look
    most like the traffic (``covering.herd``: kernel herding over a window sample and the labelled rows), densest
    unlabelled regions first. The space: each input column's encoding scaled by its PSI in this window (a column
    that did not move hardly separates rows), plus the model's prediction (in target standard deviations).

    Novelty as the ranking picks the extremes of the drifted region; on california (trained south, traffic
    north; bench/queue_research.py, 6 seeds) it needed 6x the labels random did, k-means cluster centres in this
    space 0.71x, herding 0.56x."""
    rng = np.random.default_rng(seed)
    space = _Space(model, frame, ref, labelled, covering.SETTLE_CANDIDATES, rng)
    length = covering.length_scale(space.x)
    picks = covering.herd(space.x / length, space.known / length, n)
    stands_for = covering.nearest_counts(space.x, space.known, [i for i, _ in picks]) * (len(frame) / len(space.x))
    out = []
    for (i, share), rows in zip(picks, stands_for, strict=True):
        out.append(_row(frame.index[space.pool[i]], share, f"typical of ~{rows:.0f} unlabelled row"
                        f"{'s' if round(rows) != 1 else ''} nearer to it than to any label or other pick "
                        f"({space.region(i)}; the model has no members to disagree, so the queue asks for labels that "
                        "look like the traffic)"))
    # past the sample: topped up at random
    return out + _random_rest(frame, {space.pool[i] for i, _ in picks}, n - len(out), rng,
                              "random pick: past the rows sampled")


def _settle(model: Any, frame: pd.DataFrame, n: int, ref: dict, seed: int, labelled: pd.DataFrame | None) -> list[dict]:
    """``uncertainty`` for a regressor without members: the rows whose label settles the most doubt
    (``covering.settle``) in ``_representative``'s space, the labelled rows counted as settled."""
    rng = np.random.default_rng(seed)
    space = _Space(model, frame, ref, labelled, covering.SETTLE_CANDIDATES, rng)
    length = covering.length_scale(space.x)
    per_row = len(frame) / len(space.x)  # a candidate stands for this many window rows
    picks = covering.settle(space.x / length, space.known / length, n)
    out = [_row(frame.index[space.pool[i]], gain * per_row, f"a label here settles {_rows_worth(gain * per_row)} "
                f"(its own {own:.2f} of 1; {space.region(i)}; no ensemble members to disagree, so the doubt is a "
                "kernel's over the drift-weighted inputs and the prediction)") for i, gain, own in picks]
    return out + _random_rest(frame, {space.pool[i] for i, _, _ in picks}, n - len(out), rng,
                              "random pick: past the rows scored")


def _rows_worth(rows: float) -> str:
    if rows < 0.5:
        return "less than one row's doubt (the rows like it are labelled or settled)"
    return f"the doubt of ~{rows:.0f} row{'s' if round(rows) != 1 else ''}"


class _Space:
    """The covering space of a window sample (``pool``: positions in the frame) and of the labelled rows: each
    input column's encoding scaled by sqrt(its PSI in the window), plus the prediction in target sds."""

    def __init__(self, model: Any, frame: pd.DataFrame, ref: dict, labelled: pd.DataFrame | None, size: int,
                 rng: np.random.Generator) -> None:
        self.pool = np.sort(rng.permutation(len(frame))[:size])
        self.weights = _psi_weights(frame, ref)
        scale = _prediction_scale(model, ref)
        self.window = frame.iloc[self.pool]
        self.predicted = _predicted(model, self.window)
        self.x = _covering_space(self.window, self.predicted, ref, self.weights, scale)
        if labelled is not None:
            labelled = labelled.iloc[:REPRESENTATIVE_POOL]
            self.known = _covering_space(labelled, _predicted(model, labelled), ref, self.weights, scale)
        else:
            self.known = np.zeros((0, self.x.shape[1]))
        self.drifted = [c for c, _ in sorted(self.weights.items(), key=lambda cw: -cw[1])[:2] if self.weights[c] > 0]

    def region(self, i: int) -> str:
        return _region(self.window.iloc[i], self.drifted, self.predicted[i])


def _random_rest(frame: pd.DataFrame, chosen: set, n: int, rng: np.random.Generator, reason: str) -> list[dict]:
    rest = [i for i in rng.permutation(len(frame)) if i not in chosen][: max(n, 0)]
    return [_row(frame.index[i], 0.0, reason) for i in rest]


def _psi_weights(frame: pd.DataFrame, ref: dict) -> dict[str, float]:
    """Each reference column's PSI between training and this window (as ``drift`` weighs columns); all 1 when
    no column moved at all (a window like training: plain covering)."""
    weights = {col: drift.psi(r["histogram"], _histogram(frame[col], r))
               for col, r in ref.get("columns", {}).items() if col in frame.columns and r["kind"] != "text"}
    return weights if any(w > 0 for w in weights.values()) else dict.fromkeys(weights, 1.0)


def _prediction_scale(model: Any, ref: dict) -> float:
    """The target's training standard deviation (the spread of the training predictions without it)."""
    std = model.preprocessor.target.state.get("std")
    if std and std != 1.0:
        return float(std)
    return float((ref.get("predictions") or {}).get("std") or 1.0)


def _predicted(model: Any, frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(model.predict(frame, coerce=True), dtype=np.float64).reshape(-1)


def _covering_space(frame: pd.DataFrame, predicted: np.ndarray, ref: dict, weights: dict[str, float],
                    scale: float) -> np.ndarray:
    """``encode`` with each column's block scaled by sqrt(its weight) (its share of a squared distance scales by
    the weight), and the prediction / ``scale`` as the last column."""
    parts = [encode(frame[[col]], {"columns": {col: ref["columns"][col]}}) * np.sqrt(weights[col])
             for col in ref.get("columns", {}) if col in weights and col in frame.columns]
    return np.hstack([*parts, np.nan_to_num(predicted / scale)[:, None]])


def _region(row: pd.Series, columns: list[str], predicted: float) -> str:
    """Where a cluster lies: its typical row's values in the most drifted columns and the model's prediction."""
    from loopml.features.base import canonical_key

    values = ", ".join(f"{c}={_short(row[c])}" if canonical_key(row[c]) is not None else f"{c} missing" for c in columns)
    return f"around {values}, predicted {_fmt(predicted)}" if values else f"around predicted {_fmt(predicted)}"


# -- helpers ---------------------------------------------------------------------------------------

def _model_columns(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """The model's input columns (absent ones missing), values it cannot read as missing."""
    from loopml.data.validate import check_inputs

    features = model.preprocessor.features
    cols = {c: (frame[c] if c in frame.columns else pd.Series([None] * len(frame), index=frame.index, dtype=object))
            for c in features}
    out = pd.DataFrame(cols, index=frame.index)
    return check_inputs(out, features, coerce=True)[0]


def _not_labelled(model: Any, frame: pd.DataFrame, labelled: pd.DataFrame) -> np.ndarray:
    """True for the rows of ``frame`` whose inputs (as the model reads them) no labelled row has."""
    from loopml.features.base import canonical_keys

    both = _model_columns(model, pd.concat([frame, labelled], ignore_index=True))
    keys = list(zip(*(canonical_keys(both[c]) for c in both.columns), strict=True))
    done = set(keys[len(frame):])
    return np.array([k not in done for k in keys[: len(frame)]], dtype=bool)


def _first_copies(frame: pd.DataFrame) -> np.ndarray:
    """True for the first row of each distinct input (by the features' canonical keys: 1, 1.0 and "1" are one)."""
    from loopml.features.base import canonical_keys

    seen: set = set()
    keep = np.zeros(len(frame), dtype=bool)
    for i, key in enumerate(zip(*(canonical_keys(frame[c]) for c in frame.columns), strict=True)):
        if key not in seen:
            seen.add(key)
            keep[i] = True
    return keep


def _spread(frame: pd.DataFrame, scores: np.ndarray, reasons: list[str], n: int, ref: dict) -> list[dict]:
    """``_top``, a row passed over while its encoded inputs lie within the window's median nearest-neighbour
    distance of a row already picked with the same text (near-twins teach a retrain one
    thing); the passed-over rows top the list up, in doubt order, when too few are left. On adult (trained HS-grad
    or less; bench/queue_research.py, 6 seeds) plain margin order needed 190 labels to 80% of the recoverable loss,
    spread 107, random 286."""
    order = np.argsort(-scores, kind="stable")
    if len(frame) < 3:
        return _top(frame, scores, reasons, n)
    picked, lead = covering.spread(encode(frame, ref), order, n, covering.blind_groups(frame, ref))
    out = [_row(frame.index[i], float(scores[i]), reasons[i]) for i in picked[:lead]]
    last = out[-1]["score"] if out else 0.0
    for i in picked[lead:]:  # near-twins last: scored no higher than the row above, so scores stay ordered
        last = min(last, float(scores[i]))
        out.append(_row(frame.index[i], last, f"{reasons[i]}; a near-twin of a row ranked above"))
    return out


def _top(frame: pd.DataFrame, scores: np.ndarray, reasons: list[str], n: int) -> list[dict]:
    order = np.argsort(-scores, kind="stable")[:n]
    return [_row(frame.index[i], float(scores[i]), reasons[i]) for i in order]


def _row(index: Any, score: float, reason: str) -> dict:
    index = index.item() if isinstance(index, np.generic) else index
    return {"index": index, "score": round(score, 6) if math.isfinite(score) else 0.0, "reason": reason}


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%" if p >= 0.001 else f"{100 * p:.2f}%"


def _margin(m: float) -> str:
    return f"{m:.2f}" if m >= 0.01 else f"{m:.4f}"


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _short(value: object, limit: int = 40) -> str:
    text = _fmt(value) if isinstance(value, float) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"

