"""Numeric cores of the queue's choices: the encoding rows are compared in, spreading a ranking, k-means
covering and the variance a label settles. They take encoded rows and return positions.

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


def spread(x: np.ndarray, order: np.ndarray, n: int) -> tuple[list[int], int]:
    """The first ``n`` positions of ``order``, one passed over while its row of ``x`` lies within the median
    nearest-neighbour distance (over ``x``) of a position already taken; the passed-over ones top the list up,
    in order, when too few are left. Also how many lead the list before the passed-over ones."""
    from sklearn.neighbors import NearestNeighbors

    near = float(np.median(NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)[0][:, 1]))
    picked: list[int] = []
    passed: list[int] = []
    for i in order:
        if len(picked) == n:
            break
        if picked and float(((x[picked] - x[i]) ** 2).sum(axis=1).min()) <= near**2:
            passed.append(int(i))
        else:
            picked.append(int(i))
    return picked + passed[: n - len(picked)], len(picked)


def cover(x: np.ndarray, known: np.ndarray, n: int, seed: int) -> list[tuple[int, int]]:
    """k-means over ``x`` and ``known`` together (k = n + known rows); per cluster no known row is in, its row of
    ``x`` nearest the centre and the cluster's size, biggest first."""
    from sklearn.cluster import KMeans

    both = np.vstack([x, known])
    k = min(n + len(known), len(np.unique(both, axis=0)))
    if k < 1:
        return []
    fit = KMeans(k, n_init=1, max_iter=20, random_state=seed).fit(both) if k > 1 else None
    labels = fit.labels_ if fit is not None else np.zeros(len(both), int)
    centres = fit.cluster_centers_ if fit is not None else both.mean(axis=0, keepdims=True)
    covered = set(labels[len(x):].tolist())
    dist = ((x - centres[labels[: len(x)]]) ** 2).sum(axis=1)
    picks = []
    for c in range(k):
        members = np.flatnonzero(labels[: len(x)] == c)
        if c not in covered and len(members):
            picks.append((int(members[dist[members].argmin()]), len(members)))
    return sorted(picks, key=lambda p: -p[1])


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
    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
        return np.exp(-0.5 * np.maximum(d, 0.0))

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
