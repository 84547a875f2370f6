"""Numeric cores of the queue's choices for a regressor without members: k-means covering and the variance
a label settles. Both take already-encoded rows (``queue._covering_space``) and return positions.

Settling (active learning Cohn, ALC): a unit RBF Gaussian-process prior over the encoded rows, conditioned
on the labelled ones; the next pick is the candidate whose label removes the most posterior variance summed
over all candidates, the picks so far counted as labelled. A far outlier settles only itself, a typical row
of a dense unlabelled region settles its neighbours: uncertainty that is also representative. On california
(trained south, traffic north; bench/queue_research.py) it needed 0.70x the labels random did over 6 seeds,
where novelty (the rarest inputs first) needed 5.7x.
"""

from __future__ import annotations

import numpy as np

#: settle: candidates scored (a subsample of the window; the kernel is candidates²)
SETTLE_CANDIDATES = 2000
#: settle: greedy picks at most; a longer ranking continues by the posterior variance left after them
SETTLE_GREEDY = 500
#: settle: the kernel's reach, as the number of regions the candidates are split into
SETTLE_REGIONS = 50
#: settle: the label noise relative to the prior variance (a label settles a row, not perfectly)
SETTLE_NOISE = 0.1


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


def settle(x: np.ndarray, known: np.ndarray, n: int, noise: float = SETTLE_NOISE) -> list[tuple[int, float, float]]:
    """Up to ``n`` rows of ``x`` as (position, variance settled summed over ``x``, the row's own posterior
    variance before its label), best first; ``x`` and ``known`` scaled by ``length_scale`` already."""
    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
        return np.exp(-0.5 * np.maximum(d, 0.0))

    cov = kernel(x, x)
    if len(known):
        cross = kernel(x, known)
        cov -= cross @ np.linalg.solve(kernel(known, known) + noise * np.eye(len(known)), cross.T)
    out: list[tuple[int, float, float]] = []
    taken = np.zeros(len(x), dtype=bool)
    for _ in range(min(n, len(x), SETTLE_GREEDY)):
        own = np.clip(np.diag(cov), 0.0, None)
        gain = (cov**2).sum(axis=0) / (own + noise)
        gain[taken] = -np.inf
        j = int(gain.argmax())
        out.append((j, float(gain[j]), float(own[j])))
        taken[j] = True
        v = cov[:, j] / np.sqrt(own[j] + noise)
        cov -= np.outer(v, v)
    if len(out) < min(n, len(x)):  # past the greedy picks: the rows still least settled
        own = np.clip(np.diag(cov), 0.0, None)
        rest = [int(i) for i in np.argsort(-own, kind="stable") if not taken[i]]
        out += [(i, float(own[i]), float(own[i])) for i in rest[: n - len(out)]]
    return out
