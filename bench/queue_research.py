"""Issue 13 research (brief B13): which queue strategy needs the fewest labels on california_north.

The same scenario, split, retrain (``loop_shift.Refit``: v1's rows + the labels, each ``WEIGHT`` times) and
measure (labels to 80% of the loss, interpolated on the budget grid) as ``bench/loop_shift.py``, without the
loop and warm-start parts, with candidate strategies plugged in beside the queue's own. A curve stops at the
first budget past the goal (the interpolation reads nothing after it).

    PYTHONPATH=. .venv/bin/python -m bench.queue_research [--seeds 3] [--only name,name] [--weight 3]
                                                          [--continue-rounds 100]

Prints strategy x seed labels-to-80%-of-the-loss, the mean and random / mean. Writes nothing. With the
default retrain it reproduces loop_shift.json's california figures exactly (random 137, diverse 100).
``--continue-rounds N``: idea 3, boosting continues from v1 instead of a refit (``Continue``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

import loopml
from bench import loop_shift as ls
from loopml.loop import queue
from loopml.registry import Store

BUDGETS = (25, 50, 100, 200, 400, 800)


def psi_weights(frame: pd.DataFrame, ref: dict) -> dict[str, float]:
    """Each reference column's PSI between training and this window."""
    out = {}
    for col, r in ref.get("columns", {}).items():
        if col in frame.columns and r["kind"] != "text":
            out[col] = queue.drift.psi(r["histogram"], queue._histogram(frame[col], r))
    return out


def encode_weighted(frame: pd.DataFrame, ref: dict, weights: dict[str, float]) -> np.ndarray:
    """``queue.encode`` with each column's block scaled by sqrt(weight) (distance² scales by the weight)."""
    parts = []
    for col in ref.get("columns", {}):
        if col not in frame.columns:
            continue
        block = queue.encode(frame[[col]], {"columns": {col: ref["columns"][col]}})
        parts.append(block * np.sqrt(weights.get(col, 0.0)))
    return np.hstack(parts)


def cover(x: np.ndarray, known: np.ndarray, n: int, seed: int, pick: str = "centre",
          score: np.ndarray | None = None) -> list[int]:
    """k-means over window + labelled rows (k = n + labelled), per uncovered cluster its row nearest the centre
    (or, ``pick='score'``, its highest-``score`` row), biggest cluster first."""
    from sklearn.cluster import KMeans

    both = np.vstack([x, known])
    k = min(n + len(known), len(np.unique(both, axis=0)))
    fit = KMeans(k, n_init=1, max_iter=20, random_state=seed).fit(both)
    labels, centres = fit.labels_, fit.cluster_centers_
    covered = set(labels[len(x):].tolist())
    dist = ((x - centres[labels[: len(x)]]) ** 2).sum(axis=1)
    picks = []
    for c in range(k):
        members = np.flatnonzero(labels[: len(x)] == c)
        if c in covered or not len(members):
            continue
        best = members[score[members].argmax()] if pick == "score" else members[dist[members].argmin()]
        picks.append((int(best), len(members)))
    picks.sort(key=lambda p: -p[1])
    out = [i for i, _ in picks[:n]]
    rest = [i for i in np.random.default_rng(seed).permutation(len(x)) if i not in set(out)]
    return out + rest[: n - len(out)]


Ranker = Callable[..., list]


def queue_strategy(name: str, v1_reference: bool = False) -> Ranker:
    """The queue's own strategy; ``v1_reference``: against v1's reference (as this harness's candidates read it)
    instead of the ranking model's own (the retrained one after the first round, as the product does)."""
    def rank(model, frame, n, seed, labelled, ctx):
        ref = ctx["ref"] if v1_reference else None
        return [r["index"] for r in queue.rank_candidates(model, frame, n, name, seed=seed, labelled=labelled,
                                                          reference=ref)]
    return rank


def drifted_cover(power: float = 1.0, floor: float = 0.0, cap: float | None = None) -> Ranker:
    """Covering with each column weighted by PSI**power (+ floor), PSI capped at ``cap``."""
    def rank(model, frame, n, seed, labelled, ctx):
        ref = ctx["ref"]
        w = psi_weights(frame, ref)
        w = {c: (min(v, cap) if cap else v) ** power + floor for c, v in w.items()}
        ctx.setdefault("printed", set())
        if "w" not in ctx["printed"]:
            ctx["printed"].add("w")
            print("   weights:", {c: round(v, 3) for c, v in w.items()})
        x = encode_weighted(frame, ref, w)
        known = encode_weighted(labelled, ref, w) if labelled is not None else np.zeros((0, x.shape[1]))
        return [frame.index[i] for i in cover(x, known, n, seed)]
    return rank


def column_cover(columns: dict[str, float]) -> Ranker:
    """Covering over the named columns only (weights given)."""
    def rank(model, frame, n, seed, labelled, ctx):
        ref = ctx["ref"]
        x = encode_weighted(frame, ref, columns)
        known = encode_weighted(labelled, ref, columns) if labelled is not None else np.zeros((0, x.shape[1]))
        return [frame.index[i] for i in cover(x, known, n, seed)]
    return rank


def output_cover(input_weight: float = 1.0, output_weight: float = 1.0, psi: bool = False) -> Ranker:
    """Covering over the standardised inputs plus v1's (the current model's) prediction as one more axis."""
    def rank(model, frame, n, seed, labelled, ctx):
        ref = ctx["ref"]
        base = psi_weights(frame, ref) if psi else {c: 1.0 for c in ref["columns"]}
        w = {c: v * input_weight for c, v in base.items()}
        pred = np.asarray(model.predict(frame, coerce=True), dtype=np.float64).reshape(-1)
        x = encode_weighted(frame, ref, w)
        scale = ctx["target_std"]
        x = np.hstack([x, (pred / scale * np.sqrt(output_weight))[:, None]])
        if labelled is not None:
            lp = np.asarray(model.predict(labelled, coerce=True), dtype=np.float64).reshape(-1)
            known = np.hstack([encode_weighted(labelled, ref, w), (lp / scale * np.sqrt(output_weight))[:, None]])
        else:
            known = np.zeros((0, x.shape[1]))
        return [frame.index[i] for i in cover(x, known, n, seed)]
    return rank


def tree_spread(last: int = 50) -> Ranker:
    """A single booster's own doubt: the spread of the last ``last`` trees' contributions, density-weighted
    by covering (the highest-spread row of each uncovered cluster)."""
    def rank(model, frame, n, seed, labelled, ctx):
        ref = ctx["ref"]
        booster = model.learner.model
        x_model = model.inputs(frame)
        total = booster.num_trees()
        # per-tree outputs via consecutive predictions (cheap for a few hundred trees on 5000 rows)
        cum = np.stack([booster.predict(x_model.x, raw_score=True, num_iteration=i)
                        for i in range(max(total - last, 1), total + 1)], axis=1)
        per_tree = np.diff(cum, axis=1)
        s = per_tree.std(axis=1) + np.abs(per_tree).mean(axis=1)
        w = {c: 1.0 for c in ref["columns"]}
        xe = encode_weighted(frame, ref, w)
        known = encode_weighted(labelled, ref, w) if labelled is not None else np.zeros((0, xe.shape[1]))
        return [frame.index[i] for i in cover(xe, known, n, seed, pick="score", score=s)]
    return rank


def _knn_scale(x: np.ndarray, n: int) -> float:
    """A length scale at which each of ``n`` picks covers about its share of the candidates: the median
    distance to the (len/n)-th nearest neighbour."""
    from sklearn.neighbors import NearestNeighbors

    k = int(min(len(x) - 1, max(2, len(x) // max(n, 1))))
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return float(np.median(dist[:, -1])) or 1.0


def _alc(xc: np.ndarray, xl: np.ndarray, n: int, noise: float, weight: np.ndarray | None = None) -> list[int]:
    """Greedy active learning Cohn: the candidate whose label most reduces the summed posterior variance over the
    candidates (each weighted by ``weight``), conditioned on the labelled rows and the picks so far. Unit RBF
    kernel on already scaled inputs."""
    def k(a, b):
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-0.5 * d)

    cov = k(xc, xc)
    if len(xl):
        kl = k(xc, xl)
        cov -= kl @ np.linalg.solve(k(xl, xl) + noise * np.eye(len(xl)), kl.T)
    w = np.ones(len(xc)) if weight is None else weight
    picks: list[int] = []
    for _ in range(min(n, len(xc))):
        gain = (w[:, None] * cov**2).sum(0) / (np.diag(cov) + noise)
        gain[picks] = -np.inf
        j = int(gain.argmax())
        picks.append(j)
        v = cov[:, j] / np.sqrt(cov[j, j] + noise)
        cov -= np.outer(v, v)
    return picks


def gp_rank(fit: bool = True, candidates: int = 1500, noise: float = 0.1, prediction: bool = True,
            error_weight: bool = False, min_fit: int = 10, cover_fitted: bool = False) -> Ranker:
    """Idea (b)+(c): ALC over a residual GP. Space: the covering's PSI-weighted encoding (+ v1's prediction in
    target sds); once ``min_fit`` labels exist and ``fit``, an ARD RBF GP on the labels' honest residuals
    (label - v1's logged prediction) rescales each axis by its fitted length scale. ``error_weight``: the
    candidates' variance weighted by the GP's expected squared residual (mean² + var). ``cover_fitted``: k-means
    covering in the fitted space instead of ALC."""
    def rank(model, frame, n, seed, labelled, ctx):
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        ref, v1 = ctx["ref"], ctx["v1"]
        rng = np.random.default_rng(seed)
        w = psi_weights(frame, ref)
        scale = ctx["target_std"]

        def space(f):
            x = encode_weighted(f, ref, w)
            if prediction:
                x = np.hstack([x, (np.asarray(v1.predict(f, coerce=True), dtype=np.float64).reshape(-1) / scale)[:, None]])
            return x

        idx = rng.permutation(len(frame))[:candidates]
        xc = space(frame.iloc[idx])
        xl = space(labelled) if labelled is not None else np.zeros((0, xc.shape[1]))
        keep = xc.std(axis=0) > 0
        xc, xl = xc[:, keep], xl[:, keep]
        weight, nz = None, noise
        if fit and len(xl) >= min_fit:
            resid = (ctx["known_y"].to_numpy(dtype=np.float64)
                     - np.asarray(v1.predict(labelled, coerce=True), dtype=np.float64).reshape(-1)) / scale
            base = _knn_scale(xc, n)
            kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(np.full(xc.shape[1], base), (1e-2 * base, 1e3 * base)) \
                + WhiteKernel(0.1, (1e-4, 10.0))
            gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed).fit(xl, resid)
            amp, ls_, white = gp.kernel_.k1.k1.constant_value, gp.kernel_.k1.k2.length_scale, gp.kernel_.k2.noise_level
            if "ls" not in ctx.setdefault("printed", set()):
                ctx["printed"].add("ls")
                print("   length scales / base:", np.round(ls_ / base, 2), "noise/amp", round(white / amp, 3))
            nz = float(np.clip(white / amp, 1e-3, 1.0))
            if error_weight:
                mean, std = gp.predict(xc, return_std=True)
                weight = mean**2 + std**2
            xc, xl = xc / ls_, xl / ls_
        else:
            s = _knn_scale(xc, n)
            xc, xl = xc / s, xl / s
        if cover_fitted:
            return [frame.index[idx[i]] for i in cover(xc, xl, n, seed)]
        return [frame.index[idx[i]] for i in _alc(xc, xl, n, nz, weight)]
    return rank


def oracle(kind: str = "cover") -> Ranker:
    """Cheats (reads the pool's labels): how few labels a ranking that knew v1's errors would need. ``top``:
    the largest |label - v1| first; ``cover``: covering (PSI-weighted inputs + prediction), the largest-error
    row of each uncovered cluster; ``weighted``: k-means weighted by the squared error."""
    def rank(model, frame, n, seed, labelled, ctx):
        from sklearn.cluster import KMeans

        v1 = ctx["v1"]
        err = np.abs(ctx["pool_y"].loc[frame.index].to_numpy(dtype=np.float64)
                     - np.asarray(v1.predict(frame, coerce=True), dtype=np.float64).reshape(-1))
        if kind == "top":
            return list(frame.index[np.argsort(-err)[:n]])
        ref = ctx["ref"]
        w = psi_weights(frame, ref)
        x = encode_weighted(frame, ref, w)
        known = encode_weighted(labelled, ref, w) if labelled is not None else np.zeros((0, x.shape[1]))
        if kind == "cover":
            return [frame.index[i] for i in cover(x, known, n, seed, pick="score", score=err)]
        fit = KMeans(n, n_init=1, max_iter=20, random_state=seed).fit(x, sample_weight=err**2 + 1e-9)
        d = ((x - fit.cluster_centers_[fit.labels_]) ** 2).sum(1)
        out = []
        for c in range(n):
            m = np.flatnonzero(fit.labels_ == c)
            if len(m):
                out.append(frame.index[m[d[m].argmin()]])
        return out
    return rank


def with_covering(name: str, value, strategy: str) -> Ranker:
    """The queue's ``strategy`` with ``loopml.loop.covering.<name>`` (a constant or a function) replaced by ``value``."""
    from loopml.loop import covering

    def rank(model, frame, n, seed, labelled, ctx):
        before = getattr(covering, name)
        setattr(covering, name, value)
        try:
            return queue_strategy(strategy)(model, frame, n, seed, labelled, ctx)
        finally:
            setattr(covering, name, before)
    return rank


def settle_regions(regions: int, strategy: str = "uncertainty") -> Ranker:
    """The queue's strategy with ``covering.SETTLE_REGIONS`` set to ``regions`` (how sensitive settling is to it)."""
    return with_covering("SETTLE_REGIONS", regions, strategy)


def clear_cover(strategy: str = "diverse") -> Ranker:
    """``diverse`` with herding replaced by deficit clearing: the deficit is the window's kernel mass less the
    labelled rows' (a label covers as much as a window row), each pick the row of the largest deficit, which then
    drops around it by the pick's own deficit times the kernel (one region cleared per pick; no n, no label count)."""
    from loopml.loop import covering

    def clearing(x, known, n):
        gram = covering.kernel(x, x)
        deficit = gram.mean(axis=1)
        for begin in range(0, len(known), 1000):
            deficit -= covering.kernel(x, known[begin : begin + 1000]).sum(axis=1) / len(x)
        taken, out, best = np.zeros(len(x), bool), [], np.inf
        for _ in range(min(n, len(x))):
            score = np.where(taken, -np.inf, deficit)
            j = int(score.argmax())
            best = min(best, float(max(deficit[j], 0.0)))
            out.append((j, best))
            taken[j] = True
            deficit = deficit - max(deficit[j], 0.0) * gram[:, j]
        return out

    return with_covering("herd", clearing, strategy)


def _settle_space(model, frame: pd.DataFrame, labelled: pd.DataFrame | None, seed: int):
    """The queue's covering space of a settle ranking and its kernel length scale."""
    from loopml.loop import covering

    known = queue._model_columns(model, labelled) if labelled is not None else None
    space = queue._Space(model, queue._model_columns(model, frame), model.reference, known,
                         covering.SETTLE_CANDIDATES, np.random.default_rng(seed))
    return space, covering.length_scale(space.x)


def settled_pool(factor: int = 5) -> Ranker:
    """diverse like the classifiers': k-means over the ``factor`` x n rows a label settles most (the greedy
    settle order), per cluster its best-settling row."""
    from loopml.loop import covering

    def rank(model, frame, n, seed, labelled, ctx):
        from sklearn.cluster import KMeans

        space, length = _settle_space(model, frame, labelled, seed)
        order = covering.settle(space.x / length, space.known / length, min(factor * n, len(space.x)))
        idx = np.array([i for i, _, _ in order])
        gain = np.array([g for _, g, _ in order])
        x = space.x[idx]
        labels = KMeans(n, n_init=1, max_iter=20, random_state=seed).fit(x).labels_
        picks = []
        for c in range(n):
            m = np.flatnonzero(labels == c)
            if len(m):
                picks.append(int(idx[m[gain[m].argmax()]]))
        return [frame.index[space.pool[i]] for i in picks]
    return rank


def cover_then_settle() -> Ranker:
    """k-means covering (diverse's clusters), per uncovered cluster the row that settles most (one greedy pass)."""
    from loopml.loop import covering

    def rank(model, frame, n, seed, labelled, ctx):
        from sklearn.cluster import KMeans

        space, length = _settle_space(model, frame, labelled, seed)
        full = covering.settle(space.x / length, space.known / length, len(space.x))
        gain = np.zeros(len(space.x))
        for rank_, (i, _, _) in enumerate(full):
            gain[i] = -rank_
        both = np.vstack([space.x, space.known])
        k = n + len(space.known)
        labels = KMeans(k, n_init=1, max_iter=20, random_state=seed).fit(both).labels_
        covered = set(labels[len(space.x):].tolist())
        picks = []
        for c in range(k):
            m = np.flatnonzero(labels[: len(space.x)] == c)
            if c not in covered and len(m):
                picks.append((int(m[gain[m].argmax()]), len(m)))
        picks.sort(key=lambda p: -p[1])
        return [frame.index[space.pool[i]] for i, _ in picks[:n]]
    return rank


def spread_uncertainty(quantile: float = 0.5) -> Ranker:
    """The queue's doubt order, a row skipped while it lies nearer than the window's ``quantile`` nearest-neighbour
    distance to a row already picked (spread without clustering)."""
    def rank(model, frame, n, seed, labelled, ctx):
        from sklearn.neighbors import NearestNeighbors

        f = queue._model_columns(model, frame)
        scores, _ = queue.uncertainty(model, f, model.reference)
        x = queue.encode(f, model.reference)
        dist, _ = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
        tau = float(np.quantile(dist[:, 1], quantile))
        picked: list[int] = []
        for i in np.argsort(-scores, kind="stable"):
            if len(picked) == n:
                break
            if not picked or np.sqrt(((x[picked] - x[i]) ** 2).sum(1)).min() > tau:
                picked.append(int(i))
        return [f.index[i] for i in picked]
    return rank


class Continue:
    """Idea 3: boosting continues from v1 (init_score = v1's raw score) on v1's training rows + the labels (each
    ``weight`` times), ``rounds`` more trees with v1's parameters; scored as v1 + the new trees. Ranking still
    reads v1 (the queue's covering needs only its columns and reference)."""

    def __init__(self, v1, base: pd.DataFrame, target: str, weight: int, rounds: int) -> None:
        self.v1, self.target, self.weight, self.rounds = v1, target, weight, rounds
        self.base = base[base[ls.RETRAIN_SPLIT_COLUMN] == "train"].drop(columns=[ls.RETRAIN_SPLIT_COLUMN])

    def raw(self, frame: pd.DataFrame, booster=None) -> np.ndarray:
        x = self.v1.inputs(queue._model_columns(self.v1, frame)).x
        out = np.asarray(self.v1.learner.model.predict(x, raw_score=True), dtype=np.float64)
        return out if booster is None else out + booster.predict(x, raw_score=True)

    def __call__(self, labelled: pd.DataFrame):
        import lightgbm as lgb

        data = pd.concat([self.base, *[labelled.reindex(columns=self.base.columns)] * self.weight], ignore_index=True)
        st = self.v1.preprocessor.target.state
        y = (data[self.target].to_numpy(dtype=np.float64) - st["mean"]) / st["std"]
        x = self.v1.inputs(queue._model_columns(self.v1, data)).x
        params = self.v1.learner.library_params()
        cats = sorted(self.v1.learner.categorical)
        ds = lgb.Dataset(x, label=y, init_score=self.raw(data), categorical_feature=cats,
                         feature_name=self.v1.learner.generic_names(), free_raw_data=True)
        return Continued(self, lgb.train(params, ds, num_boost_round=self.rounds))


class WarmRefit(ls.Refit):
    """The product's ``start: warm`` retrain (loopml.Model.fit(warm_start=v1): boosting continues from v1's trees
    on v1's preprocessing), on the retrain's rows; ``rounds``: policy ``train`` override n_estimators=rounds,
    early_stopping_rounds=0 (as ``Continue``); 0: the champion's own settings (early stopping on validation).
    ``warm=False``: the same config from scratch (to time it). Keeps each fit's train seconds in ``seconds``."""

    def __init__(self, store: Store, name: str, champion, metric: str, rounds: int, warm: bool = True) -> None:
        super().__init__(store, name, champion, metric)
        self.champion, self.warm, self.seconds = champion, warm, []
        if rounds:
            self.config["learner"] = {**self.config["learner"], "n_estimators": rounds, "early_stopping_rounds": 0}

    def __call__(self, labelled: pd.DataFrame):
        extra = labelled.reindex(columns=self.columns).assign(**{ls.RETRAIN_SPLIT_COLUMN: "train"})
        data = pd.concat([self.base, *[extra] * ls.WEIGHT], ignore_index=True)
        t = time.perf_counter()
        model = loopml.Model(self.config).fit(data, progress=False, cache_dir=False,
                                              warm_start=self.champion if self.warm else None)
        self.seconds.append(time.perf_counter() - t)
        return model


class Continued:
    def __init__(self, refit: Continue, booster) -> None:
        self.refit, self.booster = refit, booster

    def r2(self, frame: pd.DataFrame) -> float:
        from sklearn.metrics import r2_score

        st = self.refit.v1.preprocessor.target.state
        pred = self.refit.raw(frame, self.booster) * st["std"] + st["mean"]
        return float(r2_score(frame[self.refit.target], pred))


def run(strategies: dict[str, Ranker], seeds: int, weight: int, rounds: int = 0, warm: str = "",
        scenario: str = "california_north") -> dict:
    """``scenario`` adult_education: the goal is 80% of the recoverable loss (v1's data + the whole pool: the
    ceiling, one fit per seed), as loop_shift reports it there (80% of the loss is above the ceiling)."""
    ls.WEIGHT = weight
    sc = next(s for s in ls.SCENARIOS if s.name == scenario)
    tmp = Path(tempfile.mkdtemp(prefix="queue_research-"))
    source, shifted = sc.frames()
    csv = tmp / "source.csv"
    source.to_csv(csv, index=False)
    store = Store(f"sqlite:///{tmp / 's.db'}", str(tmp / "artifacts"))
    v1 = loopml.Model(target=sc.target, learner=sc.learner).fit(csv, progress=False, cache_dir=False, track=sc.name,
                                                                store=store)
    v1.save(tmp / "v1")
    store.register(sc.name, run=v1.run_id)
    store.promote(sc.name, 1)
    refit = ls.Refit(store, sc.name, v1, sc.metric)
    source_test = refit.base[refit.base[ls.RETRAIN_SPLIT_COLUMN] == "test"]
    if rounds and not warm:
        refit = Continue(v1, refit.base, sc.target, weight, rounds)
    elif warm:
        refit = WarmRefit(store, sc.name, v1, sc.metric, rounds, warm == "warm")
    held0, _ = ls.split_shifted(shifted, sc, 0)
    loss = v1.metrics["test"][sc.metric] - ls.score(v1, held0, sc.metric)
    south = None
    numeric = pd.api.types.is_numeric_dtype(source[sc.target])
    ctx = {"ref": v1.reference, "target_std": float(source[sc.target].std()) if numeric else 1.0, "v1": v1}
    print(f"v1 loss {loss:.4f} (weight {weight})", flush=True)
    table: dict = {}
    for name, ranker in strategies.items():
        table[name] = []
        for seed in range(seeds):
            held, pool = ls.split_shifted(shifted, sc, seed)
            start = ls.score(v1, held, sc.metric)
            goal = start + 0.8 * loss
            if scenario != "california_north":
                ceilings = ctx.setdefault("ceilings", {})
                if seed not in ceilings:
                    ceilings[seed] = ls.score(refit(pool), held, sc.metric)
                goal = start + 0.8 * (ceilings[seed] - start)
            model, chosen, points, t = v1, [], [], time.perf_counter()
            for budget in BUDGETS:
                left = pool.drop(index=chosen).drop(columns=[sc.target])
                known = pool.loc[chosen].drop(columns=[sc.target]) if chosen else None
                ctx["known_y"] = pool.loc[chosen, sc.target]
                ctx["pool_y"] = pool[sc.target]
                chosen += list(ranker(model, left, budget - len(chosen), seed, known, ctx))[: budget - len(chosen)]
                model = refit(pool.loc[chosen])
                if rounds and not warm:
                    points.append((len(chosen), model.r2(held)))
                    south = model.r2(source_test)
                    model = v1
                else:
                    points.append((len(chosen), ls.score(model, held, sc.metric)))
                if points[-1][1] >= goal:
                    break
            got = ls.labels_to(points, start, goal)
            table[name].append(got)
            print(f"  {name:18s} seed {seed}: {' '.join(f'{n}:{v:.3f}' for n, v in points)} goal {goal:.3f} → "
                  f"{got if got is None else round(got)} ({time.perf_counter() - t:.0f} s)"
                  + (f"; source test R² at the last point {south:.3f}" if south is not None else ""), flush=True)
    if warm:
        print(f"{warm} retrain seconds (model fit, loopml's evaluation included): mean "
              f"{np.mean(refit.seconds):.2f} over {len(refit.seconds)} fits, median {np.median(refit.seconds):.2f}")
    print("\n| strategy | " + " | ".join(f"seed {s}" for s in range(seeds))
          + " | mean (seeds 0-2) | random ÷ mean | mean (all) | random ÷ mean |")
    print("|---" * (seeds + 5) + "|")

    def mean(vals: list, k: int) -> float:
        return float(np.mean([BUDGETS[-1] if v is None else v for v in vals[:k]]))

    rand = table.get("random", [np.nan] * seeds)
    for name, vals in table.items():
        print(f"| {name} | " + " | ".join("-" if v is None else f"{v:.0f}" for v in vals)
              + f" | {mean(vals, 3):.0f} | {mean(rand, 3) / mean(vals, 3):.2f}× | {mean(vals, seeds):.0f} | "
              f"{mean(rand, seeds) / mean(vals, seeds):.2f}× |")
    return table


CANDIDATES: dict[str, Ranker] = {
    "random": queue_strategy("random"),
    "diverse": queue_strategy("diverse"),
    "uncertainty": queue_strategy("uncertainty"),
    "diverse_v1_reference": queue_strategy("diverse", v1_reference=True),
    "psi_cover": drifted_cover(),
    "psi_cover_sqrt": drifted_cover(power=0.5),
    "psi_cover_floor": drifted_cover(floor=0.1),
    "geo_cover": column_cover({"latitude": 1.0, "longitude": 1.0}),
    "geo_income_cover": column_cover({"latitude": 1.0, "longitude": 1.0, "median_income": 1.0}),
    "output_cover": output_cover(),
    "psi_output_cover": output_cover(psi=True),
    "tree_spread": tree_spread(),
    "alc_fixed": gp_rank(fit=False),
    "alc_fit": gp_rank(),
    "alc_fit_err": gp_rank(error_weight=True),
    "cover_fit": gp_rank(cover_fitted=True),
    "uncertainty_r25": settle_regions(25),
    "uncertainty_r100": settle_regions(100),
    "uncertainty_r200": settle_regions(200),
    "settled_pool": settled_pool(),
    "cover_then_settle": cover_then_settle(),
    "diverse_r10": settle_regions(10, "diverse"),
    "diverse_r200": settle_regions(200, "diverse"),
    "diverse_clear": clear_cover(),
    "spread50": spread_uncertainty(0.5),
    "spread90": spread_uncertainty(0.9),
    "oracle_top": oracle("top"),
    "oracle_cover": oracle("cover"),
    "oracle_weighted": oracle("weighted"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--scenario", default="california_north", choices=[s.name for s in ls.SCENARIOS])
    ap.add_argument("--weight", type=int, default=ls.WEIGHT)
    ap.add_argument("--continue-rounds", type=int, default=0, help="idea 3: boost on from v1 this many rounds")
    ap.add_argument("--warm", choices=("warm", "scratch"), default="",
                    help="retrain with the product's loopml.Model.fit(warm_start=v1) (or the same config from scratch, "
                         "timed); with --continue-rounds N: N rounds, no early stopping")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(CANDIDATES)
    run({n: CANDIDATES[n] for n in names}, args.seeds, args.weight, args.continue_rounds, args.warm, args.scenario)


if __name__ == "__main__":
    main()
