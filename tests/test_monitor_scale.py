"""Monitoring at scale: the window is cut in SQL, the served model is reused, point masses are binned."""

import json

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import needs_dataset

import loopml
from bench import realdata
from loopml.loop.drift import column_drift, column_reference
from loopml.loop.monitor import monitor
from loopml.registry import Store


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return pd.DataFrame({"a": a, "kind": rng.choice(["x", "y"], size=n), "label": np.where(a > 0, "pos", "neg")})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    model = loopml.Model(target="label", training={"epochs": 2}).fit(_frame(300, 0), progress=False, cache_dir=False)
    return model, model.save(root / "m")


def _store_with_log(tmp_path, model_dir, rows: int) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    store.register("clf", path=model_dir)
    store.promote("clf", 1)
    frame = _frame(rows, 1).drop(columns=["label"])
    store.log_predictions([{"id": f"{i:032x}", "model_name": "clf", "model_version": 1, "created_at": 1000.0 + i,
                            "inputs": r, "outputs": {"prediction": "pos", "probabilities": None}, "latency_ms": 1.0}
                           for i, r in enumerate(frame.to_dict("records"))])
    return store


def _prediction_queries(store: Store) -> tuple[list, list]:
    """Record every SELECT on the predictions table and how many rows each returned."""
    seen, fetched = [], []

    @sa.event.listens_for(store.engine, "after_cursor_execute")
    def _after(_conn, cursor, statement, parameters, _context, _many):
        if statement.lstrip().upper().startswith("SELECT") and "FROM predictions" in statement:
            seen.append((statement, parameters))

    original = store.prediction_window

    def counting(*args, **kwargs):
        rows = original(*args, **kwargs)
        fetched.append(len(rows))
        return rows

    store.prediction_window = counting
    return seen, fetched


def test_monitor_fetches_only_the_last_n_rows_in_sql(trained, tmp_path):
    _, model_dir = trained
    store = _store_with_log(tmp_path, model_dir, 3000)
    seen, fetched = _prediction_queries(store)
    result = monitor(store, "clf", last=200)
    assert result["rows"] == 200 and fetched == [200]
    window_sql = [s for s, _ in seen if "ORDER BY predictions.created_at DESC" in s]
    assert window_sql and all("LIMIT" in s for s in window_sql)
    # the newest 200, oldest first: the window starts at row 2800
    assert result["start"] == pytest.approx(1000.0 + 2800)


def test_monitor_time_window_is_a_where_clause(trained, tmp_path):
    _, model_dir = trained
    store = _store_with_log(tmp_path, model_dir, 1000)
    seen, fetched = _prediction_queries(store)
    result = monitor(store, "clf", since=1000.0 + 900, until=1000.0 + 999)
    assert result["rows"] == 100 and fetched == [100]
    assert any("predictions.created_at >=" in s and "predictions.created_at <=" in s for s, _ in seen)


def test_monitor_reuses_the_served_model_instead_of_loading_the_bundle(trained, tmp_path, monkeypatch):
    model, model_dir = trained
    store = _store_with_log(tmp_path, model_dir, 300)

    def no_load(*_args, **_kwargs):
        raise AssertionError("monitor loaded the bundle although the served model was given")

    monkeypatch.setattr(loopml, "load", no_load, raising=False)
    monkeypatch.setattr("loopml.api.load", no_load)
    result = monitor(store, "clf", last=100, served=(1, model))
    assert result["version"] == 1 and result["rows"] == 100
    assert store.list_drift_windows("clf")[0]["rows"] == 100


def _capital_gain(n: int, seed: int) -> pd.Series:
    """Like adult's capital-gain: ~92% zeros, the rest spread over thousands."""
    rng = np.random.default_rng(seed)
    gain = np.where(rng.random(n) < 0.92, 0.0, np.round(rng.lognormal(8.5, 0.9, size=n)))
    return pd.Series(gain)


def test_psi_sees_a_mostly_zero_column_rescaled():
    ref = column_reference(_capital_gain(5000, 0), "number")
    ref = json.loads(json.dumps(ref))  # as stored in reference.json
    rescaled = column_drift(_capital_gain(2000, 1) / 1000, ref)
    assert rescaled["level"] == "drift" and rescaled["psi"] > 0.3, rescaled


def test_psi_mostly_zero_column_resampled_is_no_alarm():
    ref = json.loads(json.dumps(column_reference(_capital_gain(5000, 0), "number")))
    for seed in range(1, 11):
        same = column_drift(_capital_gain(1000, seed), ref)
        assert same["level"] == "ok", (seed, same)


def test_psi_continuous_and_integer_columns_unchanged_in_spirit():
    rng = np.random.default_rng(0)
    normal = json.loads(json.dumps(column_reference(pd.Series(rng.normal(size=5000)), "number")))
    assert not normal.get("points")  # no point masses in a continuous column: plain deciles
    assert column_drift(pd.Series(rng.normal(size=1000)), normal)["level"] == "ok"
    assert column_drift(pd.Series(rng.normal(size=1000) + 1.0), normal)["level"] == "drift"
    small_ints = pd.Series(rng.integers(1, 6, size=5000).astype(float))
    ints = json.loads(json.dumps(column_reference(small_ints, "number")))
    assert column_drift(pd.Series(rng.integers(1, 6, size=1000).astype(float)), ints)["level"] == "ok"
    assert column_drift(pd.Series(rng.integers(2, 7, size=1000).astype(float)), ints)["level"] == "drift"


def test_old_references_without_point_masses_still_work():
    rng = np.random.default_rng(0)
    ref = json.loads(json.dumps(column_reference(pd.Series(rng.normal(size=2000)), "number")))
    ref.pop("points", None)
    assert column_drift(pd.Series(rng.normal(size=500)), ref)["level"] == "ok"


@needs_dataset("adult")
def test_adult_capital_gain_rescaled_is_drift_and_the_test_file_is_not():
    train, test = realdata.adult()
    for column in ("capital-gain", "capital-loss"):
        ref = column_reference(train[column], "number")
        window = test[column].sample(1000, random_state=0)
        assert column_drift(window, ref)["level"] == "ok"
        assert column_drift(window / 1000, ref)["level"] == "drift"
