"""k-fold bagging and the Caruana ensemble as learners: OOF, weights, multi-view input, budget, save/load.

Small numpy learners defined here (one per view: table, sparse, tensors) stand in for the real
ones, so the ensemble's logic is tested exactly and fast; one test runs real LightGBM + XGBoost.
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import scipy.sparse
import torch
from pydantic import create_model

from loopml.errors import LoopmlError
from loopml.features.views import SparseView, TableView
from loopml.learners import LEARNERS, Budget, FitData, Learner, Split, Task
from loopml.learners.ensemble import EnsembleLearner, caruana, leaf_learners, needed_views
from loopml.learners.multiview import from_proba, load_member, loss, save_member, to_proba

TESTS = Path(__file__).resolve().parent


# -- tiny numpy learners, one per view ----------------------------------------------------------------

class _Numpy(Learner):
    """Gradient-descent logistic / softmax / least squares on chosen columns, early-stopped on validation."""

    accepts = frozenset({"number", "binary", "category"})

    def matrix(self, x) -> np.ndarray:
        raise NotImplementedError

    def _design(self, x) -> np.ndarray:
        m = np.nan_to_num(np.asarray(self.matrix(x), dtype=np.float64))
        if self.params.columns is not None:
            m = m[:, self.params.columns]
        return np.column_stack([m, np.ones(len(m))])

    def _raw(self, design: np.ndarray, w: np.ndarray, scale: float = 1.0) -> np.ndarray:
        s = design @ w * scale
        return s if self.task.kind == "category" else s[:, 0]

    def fit(self, data: FitData, budget: Budget) -> "_Numpy":
        self._reset()
        time.sleep(self.params.sleep)
        xt, xv = self._design(data.train.x), self._design(data.validation.x)
        yt, yv = np.asarray(data.train.y), np.asarray(data.validation.y)
        k = self.task.n_outputs
        w = np.zeros((xt.shape[1], k))
        target = np.eye(k)[yt.astype(int)] if self.task.kind == "category" else yt.reshape(-1, 1)
        best, self.w = np.inf, w.copy()
        for step in range(self.params.steps):
            s = xt @ w
            if self.task.kind == "binary":
                g = 1 / (1 + np.exp(-s)) - target
            elif self.task.kind == "category":
                e = np.exp(s - s.max(axis=1, keepdims=True))
                g = e / e.sum(axis=1, keepdims=True) - target
            else:
                g = s - target
            w = w - 0.5 * (xt.T @ g / len(xt) + 1e-3 * w)
            val = loss(to_proba(self._raw(xv, w), self.task.kind), yv, self.task.kind)
            self.history.append({"iteration": step + 1, "val_loss": val})
            if val < best:
                best, self.w = val, w.copy()
        self.info = {"best_val_loss": best, "seconds": 0.0}
        return self

    def predict_scores(self, x) -> np.ndarray:
        return self._raw(self._design(x), self.w, self.params.scale)  # scale: a miscalibrated member

    def save(self, folder: Path) -> None:
        (folder / "w.json").write_text(json.dumps(self.w.tolist()))

    @classmethod
    def load(cls, folder, params, task, context=None) -> "_Numpy":
        learner = cls(params, task, context)
        learner.w = np.asarray(json.loads((folder / "w.json").read_text()), dtype=np.float64)
        return learner


def _make(name: str, view: str, matrix) -> type[Learner]:
    params = create_model(
        f"{name}Params", __base__=Learner.Params, type=(Literal[name], name), columns=(list[int] | None, None),
        steps=(int, 60), scale=(float, 1.0), sleep=(float, 0.0),
    )
    return type(name, (_Numpy,), {"view": view, "Params": params, "matrix": matrix, "__module__": __name__})


TEST_LEARNERS = {
    "t_table": _make("t_table", "table", lambda self, x: x.x),
    "t_sparse": _make("t_sparse", "sparse", lambda self, x: x.x.toarray()),
    "t_tensors": _make("t_tensors", "tensors", lambda self, x: torch.stack([x[k] for k in sorted(x)], 1).numpy()),
}


def register() -> None:
    for name, cls in TEST_LEARNERS.items():
        if name not in LEARNERS:
            LEARNERS.register(name)(cls)


@pytest.fixture(scope="module", autouse=True)
def _test_learners():
    register()
    yield
    for name in TEST_LEARNERS:
        LEARNERS._items.pop(name, None)  # test-only names leave the registry with this module


# -- data ---------------------------------------------------------------------------------------------

def _views(x: np.ndarray) -> dict:
    cols = [f"f{i}" for i in range(x.shape[1])]
    return {
        "table": TableView(x, cols, {}, cols),
        "sparse": SparseView(scipy.sparse.csr_matrix(x.astype(np.float32)), [(c, i, i + 1) for i, c in enumerate(cols)]),
        "tensors": {c: torch.from_numpy(x[:, i].astype(np.float32)) for i, c in enumerate(cols)},
    }


def _data(kind: str, n: int = 500, seed: int = 0) -> tuple[FitData, dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 200, 4))
    z = 1.5 * x[:, 0] - x[:, 1] + 0.8 * x[:, 2] * x[:, 0] + rng.normal(scale=0.7, size=len(x))
    if kind == "binary":
        y = (z > 0).astype(np.float32)
    elif kind == "category":
        y = np.digitize(z, [-1.0, 1.0]).astype(np.int64)
    else:
        y = ((z - z.mean()) / z.std()).astype(np.float32)
    t, v, test = slice(0, n - 100), slice(n - 100, n), slice(n, n + 200)
    full = _views(x)
    rows = {name: np.arange(len(x))[s] for name, s in (("t", t), ("v", v), ("test", test))}
    from loopml.learners.multiview import take_rows

    data = FitData(Split(take_rows(full, rows["t"]), y[t]), Split(take_rows(full, rows["v"]), y[v]))
    return data, take_rows(full, rows["test"]), y[test]


def _task(kind: str, threads: int = 2) -> Task:
    return Task(kind, {"binary": 2, "category": 3, "number": 0}[kind], threads=threads, seed=3)


def _ensemble(members, kind="binary", **params) -> EnsembleLearner:
    return EnsembleLearner(EnsembleLearner.Params(members=members, **params), _task(kind))


# -- bagging --------------------------------------------------------------------------------------------

def test_bagged_keeps_oof_per_fold_and_predicts_the_mean_of_fold_probabilities():
    data, test_x, _ = _data("binary")
    cls = LEARNERS.get("bagged")
    bag = cls(cls.Params(member={"type": "t_table"}, folds=4), _task("binary")).fit(data, Budget())
    assert bag.info["folds_fitted"] == [0, 1, 2, 3] and bag.info["folds_skipped"] == []
    assert bag.oof_mask.all() and bag.oof.shape == (len(data.train),) and not np.isnan(bag.oof).any()
    # each row's OOF score is its own fold model's prediction, and the folds differ
    folds = [m.w for m in bag.models.values()]
    assert not np.allclose(folds[0], folds[1])
    fold_probs = [to_proba(m.predict_scores(test_x["table"]), "binary") for m in bag.models.values()]
    np.testing.assert_array_equal(bag.predict_scores(test_x), from_proba(np.mean(fold_probs, axis=0), "binary"))
    assert bag.info["oof_score"] == pytest.approx(loss(to_proba(bag.oof, "binary"), data.train.y, "binary"))
    assert {row["fold"] for row in bag.history} == {0, 1, 2, 3}


def test_parallel_folds_give_the_same_model_as_sequential_ones():
    data, test_x, _ = _data("category")
    cls = LEARNERS.get("bagged")
    params = cls.Params(member="t_table", folds=3)
    one = cls(params, _task("category", threads=1)).fit(data, Budget())
    two = cls(params, _task("category", threads=3)).fit(data, Budget())
    np.testing.assert_array_equal(one.oof, two.oof)
    np.testing.assert_array_equal(one.predict_scores(test_x), two.predict_scores(test_x))


def test_folds_that_will_not_fit_the_budget_are_skipped_and_recorded():
    data, test_x, _ = _data("binary")
    cls = LEARNERS.get("bagged")
    params = cls.Params(member={"type": "t_table", "sleep": 0.4}, folds=5)
    started = time.monotonic()
    bag = cls(params, _task("binary", threads=1)).fit(data, Budget(1.0))
    assert time.monotonic() - started < 1.6
    assert 1 <= len(bag.info["folds_fitted"]) <= 3 and bag.info["folds_skipped"]
    assert sorted(bag.info["folds_fitted"] + bag.info["folds_skipped"]) == [0, 1, 2, 3, 4]
    assert "budget" in bag.info["skip_reason"]
    assert 0 < bag.oof_mask.sum() < len(data.train) and np.isnan(bag.oof[~bag.oof_mask]).all()
    assert np.isfinite(bag.predict_scores(test_x)).all()


def test_include_validation_folds_over_train_and_validation_rows():
    data, _, _ = _data("number")
    cls = LEARNERS.get("bagged")
    bag = cls(cls.Params(member="t_sparse", folds=3, include_validation=True), _task("number")).fit(data, Budget())
    assert bag.oof.shape == (len(data.train) + len(data.validation),) and bag.oof_mask.all()


# -- the ensemble -----------------------------------------------------------------------------------------

def test_caruana_picks_the_best_prefix_with_replacement():
    y = np.array([0, 1, 1, 0, 1, 0, 1, 1], dtype=float)
    good = np.where(y == 1, 0.8, 0.2)
    bad = np.full(len(y), 0.5)
    weights, losses = caruana([bad, good], y, "binary", rounds=10)
    assert weights.tolist() == [0.0, 1.0] and len(losses) == 10
    assert losses[0] == pytest.approx(loss(good, y, "binary"))


def test_ensemble_over_three_views_weights_members_by_their_oof_predictions():
    data, test_x, y_test = _data("binary")
    members = [
        {"type": "t_table"},  # all columns: the strong one
        {"type": "t_sparse", "columns": [0, 2]},
        {"type": "t_tensors", "columns": [3]},  # only a noise column
    ]
    ens = _ensemble(members, folds=4).fit(data, Budget())
    rows = ens.info["members"]
    assert [r["name"] for r in rows] == ["bagged_t_table", "bagged_t_sparse", "bagged_t_tensors"]
    assert sum(r["weight"] for r in rows) == pytest.approx(1.0)
    assert rows[2]["weight"] == 0.0 and not rows[2]["saved"]  # noise member: weight 0, not kept
    assert rows[0]["weight"] >= rows[1]["weight"]
    assert ens.info["oof_score"] <= min(r["oof_score"] for r in rows) + 1e-12
    assert ens.info["metric"] == "log_loss" and len(ens.history) == 25
    acc = ((ens.predict_scores(test_x) > 0) == (y_test == 1)).mean()
    assert acc > 0.75  # the noise alone would give ~0.5
    assert needed_views(EnsembleLearner, ens.params) == ("tensors", "table", "sparse")
    assert [cls.registered_name for cls, _ in leaf_learners(EnsembleLearner, ens.params)] == ["t_table", "t_sparse", "t_tensors"]
    with pytest.raises(ValueError, match="needs the 'table' view"):
        ens.predict_scores(test_x["table"])  # a multi learner reads a dict keyed by view kind


def test_stacking_is_kept_only_when_it_beats_caruana_on_oof():
    data, test_x, _ = _data("binary")
    # both members are 4x overconfident: a weighted average cannot undo that, a logistic meta-learner can
    over = [{"type": "t_table", "scale": 4.0}, {"type": "t_sparse", "columns": [0, 1], "scale": 4.0}]
    ens = _ensemble(over, folds=3, stack=True).fit(data, Budget())
    assert ens.info["stack_cv"] < ens.info["caruana_cv"] and ens.info["mode"] == "stack"
    assert len(ens.members) == 2 and ens.meta is not None
    calibrated = [{"type": "t_table"}, {"type": "t_tensors", "columns": [3]}]
    plain = _ensemble(calibrated, folds=3, stack=True).fit(data, Budget())
    assert plain.info["mode"] == ("stack" if plain.info["stack_cv"] < plain.info["caruana_cv"] else "caruana")
    assert (plain.meta is None) == (plain.info["mode"] == "caruana")
    assert np.isfinite(ens.predict_scores(test_x)).all()


def test_holdout_mode_selects_on_validation_predictions():
    data, test_x, _ = _data("number")
    ens = _ensemble(["t_table", {"type": "t_table", "columns": [1]}], kind="number", folds=0).fit(data, Budget())
    assert ens.info["metric"] == "mse" and ens.info["selection_rows"] == len(data.validation)
    assert ens.info["members"][0]["type"] == "t_table"  # not wrapped in bagged
    assert ens.predict_scores(test_x).shape == (200,)


def test_from_fitted_builds_the_same_ensemble_as_fit():
    data, test_x, _ = _data("category")
    members = ["t_table", {"type": "t_sparse", "columns": [0]}]
    ens = _ensemble(members, kind="category", folds=3).fit(data, Budget())
    cls = LEARNERS.get("bagged")
    bags = [cls(cls.Params(member=m, folds=3), _task("category")).fit(data, Budget()) for m in members]
    again = EnsembleLearner.from_fitted(bags, _task("category"))
    np.testing.assert_array_equal(ens.weights, again.weights)
    np.testing.assert_array_equal(ens.predict_scores(test_x), again.predict_scores(test_x))


def test_member_errors_name_the_learner():
    with pytest.raises(LoopmlError, match="did you mean 't_table'"):
        EnsembleLearner.Params(members=["t_tabel"])
    with pytest.raises(LoopmlError, match="learner name or a mapping"):
        EnsembleLearner.Params(members=[3])
    with pytest.raises(ValueError, match="folds must be 0"):
        EnsembleLearner.Params(members=["t_table"], folds=1)


# -- save / load ------------------------------------------------------------------------------------------

_FRESH = """
import sys, numpy as np
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import test_ensemble as t
t.register()
from loopml.learners.multiview import load_member
for folder in sys.argv[2:]:
    kind, n = Path(folder).name.split("-")
    _, test_x, _ = t._data(kind, n=int(n))
    learner = load_member(Path(folder), t._task(kind), None)
    np.save(Path(folder).with_suffix(".npy"), learner.predict_scores(test_x), allow_pickle=False)
"""


def test_saved_ensembles_predict_bit_identically_in_a_fresh_process(tmp_path):
    members = [{"type": "t_table", "scale": 3.0}, {"type": "t_sparse", "columns": [0, 1]}, "t_tensors"]
    cases = [("category", 500, members, False), ("binary", 500, members, True)]
    if {"lightgbm", "xgboost"} <= set(LEARNERS.names()):
        small = {"n_estimators": 60, "learning_rate": 0.2}
        cases.append(("binary", 800, [{"type": "lightgbm", **small}, {"type": "xgboost", **small}], False))
    expected = {}
    for kind, n, config, stack in cases:
        data, test_x, y_test = _data(kind, n=n)
        ens = _ensemble(config, kind=kind, folds=3, stack=stack).fit(data, Budget())
        folder = tmp_path / f"{kind}-{n}"
        save_member(ens, folder)
        saved = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert "ensemble.json" in saved and "members/0/member.json" in saved and "members/0/folds/2/member.json" in saved
        assert not any(p.endswith((".pkl", ".pickle", ".joblib")) for p in saved)
        loaded = load_member(folder, _task(kind), None)
        assert loaded.info["members"] == ens.info["members"]
        expected[folder] = ens.predict_scores(test_x)
        np.testing.assert_array_equal(loaded.predict_scores(test_x), expected[folder])
        if n == 800:  # the trees
            assert ens.info["mode"] == "caruana" and {r["type"] for r in ens.info["members"]} == {"bagged"}
            assert ((expected[folder] > 0) == (y_test == 1)).mean() > 0.75
            contrib = ens.members[0].contributions(test_x)
            assert contrib.shape == (200, 5)
            np.testing.assert_allclose(contrib.sum(axis=1), ens.members[0].predict_scores(test_x), atol=1e-9)
            whole = ens.contributions(test_x)
            np.testing.assert_allclose(whole.sum(axis=1), expected[folder], atol=1e-9)
            # the per-feature parts are the members' weighted ones (only the bias absorbs the probability averaging)
            parts = sum(w * m.contributions(test_x)[:, :-1] for w, m in zip(ens.weights, ens.members, strict=True))
            np.testing.assert_allclose(whole[:, :-1], parts, atol=1e-12)
    run = subprocess.run([sys.executable, "-c", _FRESH, str(TESTS), *map(str, expected)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    for folder, scores in expected.items():
        np.testing.assert_array_equal(np.load(folder.with_suffix(".npy"), allow_pickle=False), scores)


@pytest.mark.skipif("lightgbm" not in LEARNERS.names(), reason="tree learners not registered")
def test_refit_replaces_the_folds_by_one_model_on_every_row(tmp_path):
    data, test_x, y_test = _data("binary", n=800)
    cls = LEARNERS.get("bagged")
    member = {"type": "lightgbm", "n_estimators": 200, "learning_rate": 0.2, "early_stopping_rounds": 10}
    bag = cls(cls.Params(member=member, folds=3, refit=True), _task("binary")).fit(data, Budget())
    rounds = round(np.mean([f["best_iteration"] for f in bag.info["fold_info"]]))
    assert bag.info["refit"] == f"done: {rounds} rounds on {len(data.train)} rows"
    assert bag.models == {} and bag.full.info["best_iteration"] == rounds and bag.oof_mask.all()
    assert ((bag.predict_scores(test_x) > 0) == (y_test == 1)).mean() > 0.75
    save_member(bag, tmp_path / "bag")
    assert not (tmp_path / "bag" / "folds").exists()
    loaded = load_member(tmp_path / "bag", _task("binary"), None)
    np.testing.assert_array_equal(loaded.predict_scores(test_x), bag.predict_scores(test_x))
    plain = cls(cls.Params(member="t_table", folds=3, refit=True), _task("binary")).fit(data, Budget())
    assert plain.info["refit"].startswith("not done: t_table has no n_estimators") and len(plain.models) == 3
