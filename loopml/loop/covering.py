"""Numeric cores of the queue's choices: the encoding rows are compared in, spreading a ranking, herding
(labels that look like the traffic) and the variance a label settles. They take encoded rows and return positions.

Settling (active learning Cohn, ALC), for a regressor without members: a unit RBF Gaussian-process prior
over the encoded rows, conditioned on the labelled ones; the next pick is the candidate whose label removes
the most posterior variance summed over all candidates, the picks so far counted as labelled. A far outlier
settles only itself, a typical row of a dense unlabelled region settles its neighbours: uncertainty that is
also representative. On california (trained south, traffic north; bench/queue_research.py, 6 seeds) it
needed 80 labels to 80% of the loss where random needed 132 and novelty (the rarest inputs first) 753.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from loopml.loop import drift

#: settle: candidates scored (a subsample of the window; the kernel is candidates²)
SETTLE_CANDIDATES = 2000
#: settle: greedy picks at most; a longer ranking continues by the posterior variance left after them
SETTLE_GREEDY = 500
#: settle: the kernel's reach, as the number of regions the candidates are split into
SETTLE_REGIONS = 50
#: settle: labelled rows conditioned on at most (those nearest to the candidates)
SETTLE_KNOWN = 1000
#: settle: the label noise relative to the prior variance (a label settles a row, not perfectly)
SETTLE_NOISE = 0.1


def encode(frame: pd.DataFrame, ref: dict) -> np.ndarray:
    """Numbers standardised by the training reference (median, std; missing: 0 and a flag), categories
    one-hot over the reference's values (+ other). Text is left out."""
    from loopml.features.base import canonical_keys

    parts = []
    for col, r in ref.get("columns", {}).items():
        if col not in frame.columns:
            continue
        values = frame[col]
        if r["kind"] in ("number", "date"):
            numbers = drift._days(values) if r["kind"] == "date" else pd.to_numeric(values, errors="coerce")
            x = numbers.to_numpy(dtype=np.float64)
            centre = float(np.median(r["sample"])) if r["sample"] else 0.0
            z = (x - centre) / (r.get("std") or 1.0)
            missing = np.isnan(z)
            parts += [np.clip(np.nan_to_num(z), -10, 10)[:, None], missing[:, None].astype(np.float64)]
        elif r["kind"] == "category":
            index = category_index(r)
            codes = np.array([index.get(k, len(index)) if k is not None else len(index) + 1
                              for k in canonical_keys(values)])
            parts.append(np.eye(len(index) + 2)[codes])
    if not parts:
        return np.zeros((len(frame), 1))
    return np.hstack(parts)


def category_index(r: dict) -> dict:
    """A category reference's values by canonical key, to their position (the one-hot column)."""
    from loopml.features.base import canonical_key

    return {canonical_key(v): i for i, v in enumerate(r["values"])}


def spread(x: np.ndarray, order: np.ndarray, n: int, groups: np.ndarray | None = None) -> tuple[list[int], int]:
    """The first ``n`` positions of ``order``, one passed over while its row of ``x`` lies within the median
    nearest-neighbour distance (over ``x``) of a position already taken in its group (``groups``: rows whose text the
    encoding leaves out are twins only when their text agrees too); the passed-over ones top the list up, in order,
    when too few are left. Also how many lead the list before the passed-over ones."""
    from sklearn.neighbors import NearestNeighbors

    near = float(np.median(NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)[0][:, 1]))
    groups = np.zeros(len(x), dtype=int) if groups is None else groups
    taken: dict[int, list[int]] = {}
    picked: list[int] = []
    passed: list[int] = []
    for i in order:
        if len(picked) == n:
            break
        same = taken.setdefault(int(groups[i]), [])
        if same and float(((x[same] - x[i]) ** 2).sum(axis=1).min()) <= near**2:
            passed.append(int(i))
        else:
            picked.append(int(i))
            same.append(int(i))
    return picked + passed[: n - len(picked)], len(picked)


def blind_groups(frame: pd.DataFrame, ref: dict) -> np.ndarray:
    """One group id per row for what ``encode`` leaves out: text, and columns without a reference (their values).
    Unseen categories stay one value here, as in the encoding: spreading over them as distinct values gave adult's
    `make demo` a weaker v2 (0.792 on the unseen people, against 0.823) — the picks bunched at the boundary."""
    from loopml.features.base import canonical_keys

    columns = ref.get("columns", {})
    parts = [canonical_keys(frame[col]) for col in frame.columns
             if columns.get(col) is None or columns[col]["kind"] == "text"]
    ids: dict[tuple, int] = {}  # tuples: a missing text and the text "None" stay apart, as do ("a b", "c"), ("a", "b c")
    return np.array([ids.setdefault(row, len(ids)) for row in zip(*parts, strict=True)] if parts else
                    np.zeros(len(frame)), dtype=int)


def herd(x: np.ndarray, known: np.ndarray, n: int) -> list[tuple[int, float]]:
    """Up to ``n`` rows of ``x`` as (position, the share of ``x`` the row stands for that labels do not cover yet),
    best first: kernel herding, each pick the row that most lowers the kernel distance (MMD) between the labelled
    rows — ``known`` and the picks so far — and ``x`` (the window): the one where the window's kernel mass most
    exceeds the labelled rows'. ``x`` and ``known`` scaled by ``length_scale`` already.

    Dense regions first, one pick per region until the labels look like the traffic; a far outlier stands for
    little of the window and waits. On california (bench/queue_research.py, 6 seeds) 74 labels to 80% of the
    loss where k-means cluster centres needed 94 and random 132."""
    gram = kernel(x, x)
    mass = gram.mean(axis=1)  # the window's density at each row (x is the window, or a sample of it)
    pull = np.zeros(len(x))  # the labelled rows' kernel mass at each row, summed
    for begin in range(0, len(known), 1000):  # chunks: a 2,000 x 10,000 kernel is 160 MB
        pull += kernel(x, known[begin : begin + 1000]).sum(axis=1)
    # the labelled rows count at most as much as the batch: against thousands of labels each pick would move the
    # labelled set by 1/thousands, and a batch of 20 would pile into the one region the labels cover least. (So with
    # more labels than asked for, picks after the first depend on n; a fixed cap of 50 piled a batch of 6 into one
    # region, and clearing each pick's region instead of herding needed 131 labels on california, random 132)
    weight = min(1.0, n / len(known)) if len(known) else 1.0
    pull *= weight
    labelled, taken, out, best = weight * len(known), np.zeros(len(x), dtype=bool), [], np.inf
    for _ in range(min(n, len(x))):
        score = mass - pull / (labelled + 1)
        score[taken] = -np.inf
        j = int(score.argmax())
        best = min(best, float(max(score[j], 0.0)))  # the share not yet covered; ordered: later picks can gain a hair
        out.append((j, best))
        taken[j] = True
        pull += gram[:, j]
        labelled += 1
    return out


def nearest_counts(x: np.ndarray, known: np.ndarray, picks: list[int]) -> np.ndarray:
    """Per pick (a position in ``x``): how many rows of ``x`` are nearer to it than to any labelled row or other pick —
    the rows it stands for; the counts of all picks sum to at most ``len(x)``, rows a label is nearest to count for none."""
    from sklearn.neighbors import NearestNeighbors

    if not picks:
        return np.zeros(0)
    points = np.vstack([x[picks], known])
    owner = NearestNeighbors(n_neighbors=1).fit(points).kneighbors(x, return_distance=False)[:, 0]
    return np.bincount(owner, minlength=len(points))[: len(picks)].astype(np.float64)


def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The unit RBF kernel between the rows of ``a`` and ``b`` (scaled by the length scale already)."""
    d = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-0.5 * np.maximum(d, 0.0))


def length_scale(x: np.ndarray) -> float:
    """The RBF length scale: the median distance to the (rows / SETTLE_REGIONS)-th nearest neighbour, so a label
    settles about one region's worth of rows. Not from the number asked for: the first picks of a ranking are
    the same whether 1 or 500 rows are asked for."""
    from sklearn.neighbors import NearestNeighbors

    if len(x) < 2:
        return 1.0
    k = int(min(len(x) - 1, max(2, len(x) // SETTLE_REGIONS)))
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    scale = float(np.median(dist[:, -1]))
    return scale if scale > 0 else 1.0


def _nearest_known(x: np.ndarray, known: np.ndarray) -> np.ndarray:
    """At most SETTLE_KNOWN labelled rows: those nearest to the most candidates (the conditioning solve grows
    with the cube of the labelled rows; a label far from every candidate settles none of them anyway)."""
    if len(known) <= SETTLE_KNOWN:
        return known
    from sklearn.neighbors import NearestNeighbors

    nearest = NearestNeighbors(n_neighbors=1).fit(known).kneighbors(x, return_distance=False)[:, 0]
    counts = np.bincount(nearest, minlength=len(known))
    keep = np.argsort(-counts, kind="stable")[:SETTLE_KNOWN]
    return known[np.sort(keep)]


def settle(x: np.ndarray, known: np.ndarray, n: int, noise: float = SETTLE_NOISE) -> list[tuple[int, float, float]]:
    """Up to ``n`` rows of ``x`` as (position, variance settled summed over ``x``, the row's own posterior
    variance before its label), best first; ``x`` and ``known`` scaled by ``length_scale`` already."""
    known = _nearest_known(x, known)
    cov = kernel(x, x)
    if len(known):
        cross = kernel(x, known)
        cov -= cross @ np.linalg.solve(kernel(known, known) + noise * np.eye(len(known)), cross.T)
    out: list[tuple[int, float, float]] = []
    taken = np.zeros(len(x), dtype=bool)
    # the posterior after t picks is cov - V V^T (V: one column per pick), kept low-rank: each step costs one
    # matrix-vector product, not a pass over a fresh candidates² matrix (500 picks of 2000: 5 s before)
    steps = min(n, len(x), SETTLE_GREEDY)
    low = np.zeros((len(x), steps))
    diag = np.diag(cov).copy()
    squares = (cov**2).sum(axis=0)  # per candidate: its posterior covariance with every candidate, squared, summed
    best = np.inf
    # one BLAS thread: hundreds of small products, each a handoff between threads; on a busy machine (the
    # server's cores taken by predict, a benchmark) each handoff waited a time slice: 10x slower than one thread
    with threadpool_limits(1, user_api="blas"):
        for t in range(steps):
            own = np.clip(diag, 0.0, None)
            gain = np.clip(squares, 0.0, None) / (own + noise)
            gain[taken] = -np.inf
            j = int(gain.argmax())
            best = min(best, float(gain[j]))  # a later pick can settle a hair more (not submodular): scores stay ordered
            out.append((j, best, float(own[j])))
            taken[j] = True
            v = (cov[:, j] - low[:, :t] @ low[j, :t]) / np.sqrt(own[j] + noise)
            cv = cov @ v - low[:, :t] @ (low[:, :t].T @ v)  # the current posterior times v
            squares += v**2 * (v @ v) - 2.0 * v * cv
            diag -= v**2
            low[:, t] = v
    if len(out) < min(n, len(x)):  # past the greedy picks: the rows still least settled
        own = np.clip(diag, 0.0, None)
        rest = [int(i) for i in np.argsort(-own, kind="stable") if not taken[i]]
        out += [(i, min(best, float(own[i])), float(own[i])) for i in rest[: n - len(out)]]
    return out
