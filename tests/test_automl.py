"""AutoML in a time budget and ``loopml tune``: budget kept, leaderboard, too-small budget, resumable study."""

import json
import time

import numpy as np
import pandas as pd
import pytest

from loopml.cli import main
from loopml.errors import LoopmlError

BUDGET = 8.0


@pytest.fixture(scope="module", autouse=True)
def _warm_imports():
    """Import the libraries first: the budget test measures AutoML's time, not this box's cold imports."""
    import catboost  # noqa: F401
    import lightgbm  # noqa: F401
    import optuna  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import xgboost  # noqa: F401


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(list("xyz"), n)})
    df["y"] = np.where(df.a + df.b * (df.c == "x") + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    return df


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("automl") / "train.csv"
    _table(500).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fitted(data_file):
    import loopml

    model = loopml.Model(target="y", time_budget=BUDGET, preset="best")
    start = time.monotonic()
    model.fit(data_file, progress=False, cache_dir=False)
    return model, time.monotonic() - start


def test_budget_is_respected(fitted):
    model, seconds = fitted
    assert seconds <= BUDGET * 1.1 + 1.0, f"Model.fit took {seconds:.1f}s for a {BUDGET}s budget"
    assert model.config.learner.type == "automl"
    assert model.info["training"]["seconds_since_start"] <= BUDGET


def test_leaderboard_is_sorted_and_saved(fitted, tmp_path):
    import loopml

    model, _ = fitted
    board = model.info["training"]["leaderboard"]
    assert len(board) >= 2 and sum(r["chosen"] for r in board) == 1
    scores = [r["score"] for r in board]
    assert scores == sorted(scores) and board[0]["metric"] == "log_loss"  # lower log loss first
    for row in board:
        assert {"name", "learner", "params", "score", "fit_seconds", "predict_seconds_per_row"} <= set(row)
        assert row["fit_seconds"] >= 0 and row["predict_seconds_per_row"] > 0
    assert board[0]["name"] != "lightgbm" or board[0]["learner"] == "lightgbm"
    path = model.save(tmp_path / "m")
    assert json.loads((path / "leaderboard.json").read_text()) == board
    frame = _table(40, seed=1).drop(columns="y")
    again = loopml.load(path)
    assert np.array_equal(again.predict_proba(frame).to_numpy(), model.predict_proba(frame).to_numpy())


def test_fast_preset_fits_no_bagged_member(data_file):
    """Preset fast at the learner level, its budget started after preparation."""
    import loopml
    from loopml.learners import LEARNERS, Budget, Context, FitData
    from loopml.prepare import prepare
    from loopml.train.run import learner_task, view_splits

    config = loopml.Model(target="y", time_budget=3.0, preset="fast").config
    prepared = prepare(config, data_file, cache_dir=False)
    pre = prepared.preprocessor
    cls = LEARNERS.get("automl")
    splits = view_splits(config, prepared, pre, cls)
    budget = Budget(3.0)
    learner = cls(config.learner, learner_task(config, pre), Context(config, pre))
    learner.fit(FitData(splits["train"], splits["validation"]), budget)
    assert time.monotonic() - budget.started <= 3.0
    stages = {r["stage"].split(" ")[0] for r in learner.leaderboard}
    assert "bagged" not in stages and "portfolio" in stages
    assert learner.info["preset"] == "fast"


def test_too_small_budget_says_the_minimum_and_saves_nothing(data_file, tmp_path, capsys):
    out = tmp_path / "model"
    code = main(["train", "--data", str(data_file), "--target", "y", "--time-budget", "0.5", "--no-track",
                 "--no-cache", "-q", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "too small" in err and "minimum" in err and "Traceback" not in err
    assert not (out / "manifest.json").exists() and not (out / "leaderboard.json").exists()


def test_bad_preset_names_the_nearest():
    import loopml

    with pytest.raises(LoopmlError, match="did you mean 'best'"):
        loopml.Model(target="y", time_budget=10, preset="bets")


def test_tune_study_resumes_in_sqlite(tmp_path, capsys):
    import optuna

    data = tmp_path / "t.csv"
    _table(240, seed=2).to_csv(data, index=False)
    store = f"sqlite:///{tmp_path / 'store' / 'registry.db'}"
    out = tmp_path / "best.yaml"
    argv = ["tune", "--data", str(data), "--target", "y", "--learner", "lightgbm", "--trials", "2", "--folds", "2",
            "--store", store, "--study", "s1", "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert main(argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "ran trials 2..3" in err and "4 in the study" in err
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'store' / 'registry-studies.db'}")
    trials = optuna.load_study(study_name="s1", storage=storage).trials
    assert [t.number for t in trials] == list(range(4))
    # every finished trial reported once per fold (what the pruner reads)
    assert all(len(t.intermediate_values) == 2 for t in trials if t.state.name == "COMPLETE")
    import yaml

    section = yaml.safe_load(out.read_text())["learner"]
    assert section["type"] == "lightgbm" and "num_leaves" in section
    # the store's own database is untouched by the study (Optuna's tables live beside it)
    from loopml.registry import Store

    assert Store(store).url  # still opens: no foreign alembic revision in it


def test_tune_unknown_learner_names_the_nearest(tmp_path, capsys):
    data = tmp_path / "t.csv"
    _table(50).to_csv(data, index=False)
    code = main(["tune", "--data", str(data), "--target", "y", "--learner", "lightgbn", "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean 'lightgbm'" in err


def test_mostly_numeric_tables_get_a_pairwise_member_costed_by_its_columns():
    from loopml.features.views import TableView
    from loopml.learners.automl import AutoMLLearner
    from loopml.learners.base import FitData, Split
    from loopml.learners.portfolio import portfolio

    table = {"number", "category"}
    assert portfolio(table, "best", numeric_share=0.8)["lightgbm_pairwise"]["pairwise"] == 8
    assert list(portfolio(table, "best", numeric_share=0.8))[:3] == ["lightgbm", "xgboost", "lightgbm_pairwise"]
    assert "lightgbm_pairwise" not in portfolio(table, "best", numeric_share=0.3)
    assert "lightgbm_pairwise" not in portfolio(table, "fast", numeric_share=1.0)
    # 4 numeric + 1 categorical column: 6 pairs x 4 operations = 24 more columns on 5
    view = TableView(np.zeros((3, 5)), list("abcde"), {4: 3}, list("abcde"))
    data = FitData(Split({"table": view}, np.zeros(3)), Split({"table": view}, np.zeros(3)))
    assert AutoMLLearner._column_growth({"type": "lightgbm", "pairwise": 8}, data) == pytest.approx(1 + 24 / 5)
    thin = {"type": "lightgbm", "pairwise": 8, "colsample_bytree": 0.5}
    assert AutoMLLearner._column_growth(thin, data) == pytest.approx(0.5 * 29 / 5)
    assert AutoMLLearner._column_growth({"type": "lightgbm"}, data) == 1.0
