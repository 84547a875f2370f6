"""The dashboard's first answers and slow paths (issue 14 follow-up): a fresh server's labelling page answers
"ranking…" at once, ``serve --ui`` ranks with the served model, ``loopml ui --media-root``, the runs list sorted
by a metric through ``run_metric_values`` (migration 0010 backfills it), integer epoch ticks."""

import threading
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import loopml
from loopml.cli import main
from loopml.registry import Store, db
from loopml.registry.db import create_engine, migrate
from loopml.ui.app import create_ui_app, warm_up
from loopml.ui.context import UISettings
from loopml.ui.pages import feedback as fb


def make(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return pd.DataFrame({"a": a, "b": rng.normal(size=n), "label": np.where(a > 0, "pos", "neg")})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("uiperf")
    model = loopml.Model(target="label", training={"epochs": 2, "seed": 0}).fit(make(200, 0), progress=False,
                                                                               cache_dir=False)
    return model, model.save(root / "clf")


@pytest.fixture
def store(tmp_path, trained):
    model, model_dir = trained
    store = Store(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    store.register("clf", path=model_dir)
    store.promote("clf", 1)
    frame = make(60, 1).drop(columns=["label"])
    out = model.predictions(frame)
    store.log_predictions([{"id": uuid.uuid4().hex, "model_name": "clf", "model_version": 1,
                            "created_at": time.time() - 50 + i, "inputs": r, "latency_ms": 1.0,
                            "outputs": {"prediction": out.iloc[i, 0],
                                        "probabilities": {"neg": float(out.iloc[i, 1]), "pos": float(out.iloc[i, 2])}}}
                           for i, r in enumerate(frame.to_dict("records"))])
    return store


# -- 1. a fresh server's labelling page does not block on the model load and the ranking --------------------------
def test_the_first_feedback_view_answers_ranking_then_the_ranked_queue(store, monkeypatch):
    release = threading.Event()
    real = fb._rank

    def slow_rank(*args, **kwargs):
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(fb, "_rank", slow_rank)
    client = TestClient(create_ui_app(UISettings(rank_wait_s=0.05), store=store))
    started = time.perf_counter()
    first = client.get("/feedback?model=clf")
    assert time.perf_counter() - started < 5  # not the ranking's 30 s
    assert first.status_code == 200 and 'id="queue-ranking"' in first.text
    assert '<meta http-equiv="refresh" content="1">' in first.text and 'id="feedback-queue"' not in first.text
    release.set()
    deadline = time.monotonic() + 30
    while 'id="feedback-queue"' not in (page := client.get("/feedback?model=clf")).text:
        assert time.monotonic() < deadline, "the queue was never ranked"
        time.sleep(0.05)
    assert "queue-ranking" not in page.text and "http-equiv" not in page.text
    assert page.text.count('class="queue-row"') == 20


def test_warm_up_starts_ranking_the_queues_about_to_be_used(store):
    app = create_ui_app(UISettings(rank_wait_s=0.0), store=store)
    assert warm_up(app, limit_s=60) < 60
    jobs = [k for k in app.state.ui.caches if k[0] == "feedback.job"]
    assert jobs == [("feedback.job", "clf", "uncertainty", fb.DEFAULT_N)]
    assert app.state.ui.caches[jobs[0]]["done"].wait(60)
    assert app.state.ui.templates.env.cache  # the templates are compiled
    page = TestClient(app).get("/feedback?model=clf")
    assert 'id="feedback-queue"' in page.text


# -- 2. serve --ui: the queue ranks with the model the server already holds -----------------------------------
def test_a_served_model_is_reused_not_loaded_again(store, trained, monkeypatch):
    model = trained[0]
    loads = []
    monkeypatch.setattr(loopml, "load", lambda *a, **k: loads.append(a) or model)
    asked = []

    def served(name):
        asked.append(name)
        return (1, model) if name == "clf" else None

    client = TestClient(create_ui_app(UISettings(), store=store, served_model=served))
    assert 'id="feedback-queue"' in client.get("/feedback?model=clf").text
    assert asked == ["clf"] and loads == []
    # another version served (the alias moved on): the dashboard loads @production itself
    other = TestClient(create_ui_app(UISettings(), store=store, served_model=lambda name: (7, model)))
    assert 'id="feedback-queue"' in other.get("/feedback?model=clf").text
    assert len(loads) == 1


def test_serve_ui_passes_its_served_model_to_the_dashboard(store, trained, monkeypatch):
    from loopml.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(model="clf@production", store=store.url, artifacts=str(store.artifacts.root),
                                   ui=True))
    ui = next(r.app for r in app.routes if getattr(r, "path", "") == "/ui")
    hosted = ui.state.ui.served_model("clf")
    assert hosted is not None and hosted[0] == 1 and hosted[1] is app.state.loopml["served"].model
    assert ui.state.ui.served_model("other") is None
    monkeypatch.setattr(loopml, "load", lambda *a, **k: pytest.fail("the dashboard loaded a second copy"))
    assert fb.production(ui.state.ui, "clf")[1] is app.state.loopml["served"].model


# -- 3. loopml ui --media-root --------------------------------------------------------------------------------
def test_ui_media_root_is_checked_and_passed(store, tmp_path, capsys, monkeypatch):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app))
    monkeypatch.setattr("loopml.ui.app.warm_up", lambda app, limit_s=30.0: 0.0)
    assert main(["ui", "--store", store.url, "--port", "0", "--media-root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--media-root is not a folder" in err[0]
    port = _free_port()
    assert main(["ui", "--store", store.url, "--port", str(port), "--media-root", str(tmp_path)]) == 0
    assert started["app"].state.ui.settings.media_root == str(tmp_path)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- 5. sorting by a metric: run_metric_values --------------------------------------------------------------
def _runs(store: Store) -> dict[str, str]:
    ids = {}
    for name, metrics in (("low", {"test": {"accuracy": 0.6, "ok": True}}), ("high", {"test": {"accuracy": 0.9}}),
                          ("text", {"test": {"accuracy": "n/a"}}), ("none", None), ("mid", {"test": {"accuracy": 0.75}})):
        run = store.start_run("exp", {"lr": 0.1})
        store.end_run(run, "finished", metrics=metrics)
        ids[name] = run
    return ids


def _sorted(client: TestClient, order: str = "desc") -> list[str]:
    import re

    r = client.get(f"/runs?sort=metric:test.accuracy&order={order}")
    assert r.status_code == 200, r.text
    return re.findall(r'href="/runs/([0-9a-f]{32})"', r.text)


def test_end_run_writes_the_numbers_the_list_sorts_by(store_url, tmp_path):
    store = Store(store_url, str(tmp_path / "a"))
    ids = _runs(store)
    with store.engine.connect() as c:
        rows = c.execute(sa.select(db.run_metric_values.c.run_id, db.run_metric_values.c.key,
                                   db.run_metric_values.c.value)).all()
    assert sorted((r.run_id, r.key, r.value) for r in rows) == sorted(
        [(ids["low"], "test.accuracy", 0.6), (ids["high"], "test.accuracy", 0.9), (ids["mid"], "test.accuracy", 0.75)])
    client = TestClient(create_ui_app(UISettings(), store=store))
    listed = _sorted(client)
    assert listed[:3] == [ids["high"], ids["mid"], ids["low"]] and set(listed[3:5]) == {ids["text"], ids["none"]}
    assert _sorted(client, "asc")[:3] == [ids["low"], ids["mid"], ids["high"]]
    run = ids["mid"]  # ended again (resumed): its numbers are replaced, not added to
    store.resume_run(run)
    store.end_run(run, "finished", metrics={"test": {"accuracy": 0.99}})
    assert _sorted(client)[0] == run
    assert client.get("/runs?sort=metric:test.nothing").status_code == 400


def test_migration_0010_backfills_the_runs_already_stored(store_url, tmp_path):
    engine = create_engine(store_url)
    migrate(engine, "0009")
    with engine.begin() as c:
        c.execute(db.runs.insert(), [
            {"id": f"{i:032x}", "experiment": "e", "status": "finished", "started_at": float(i),
             "metrics": {"test": {"accuracy": a, "flag": False}, "n": 3}} for i, a in enumerate([0.5, 0.8, 0.7])]
            + [{"id": f"{9:032x}", "experiment": "e", "status": "running", "started_at": 9.0, "metrics": None}])
    engine.dispose()
    store = Store(store_url, str(tmp_path / "a"))
    with store.engine.connect() as c:
        rows = c.execute(sa.select(db.run_metric_values).order_by(db.run_metric_values.c.run_id,
                                                                  db.run_metric_values.c.key)).all()
    assert [(r.run_id[-1], r.key, r.value) for r in rows] == [
        ("0", "n", 3.0), ("0", "test.accuracy", 0.5), ("1", "n", 3.0), ("1", "test.accuracy", 0.8),
        ("2", "n", 3.0), ("2", "test.accuracy", 0.7)]
    client = TestClient(create_ui_app(UISettings(), store=store))
    assert [i[-1] for i in _sorted(client)] == ["1", "2", "0", "9"]


# -- 6. integer ticks on curves; compare lists the differing params first ---------------------------------------
def test_curves_have_integer_epoch_ticks(monkeypatch):
    from loopml.evaluate import plots

    monkeypatch.setattr(plots, "_png", lambda fig, fit=True: fig)
    epochs = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.1 / (e + 1)} for e in range(3)]
    figures = [plots.learning_curve(epochs, "loss", None, "loss"),
               plots.overlaid_curves({"a": [(1, 0.5), (2, 0.4), (3, 0.3)]}, "val_loss"),
               plots.per_epoch(epochs, "train_loss", "t", "t")]
    for fig in figures:
        ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


# -- 4. the drift report's history chart: the monitor page's psi_history, each column's own PSI -------------------
def test_drift_report_history_uses_psi_history_and_each_columns_own_psi(monkeypatch):
    from loopml.loop import report as loop_report

    def cell(psi):
        return {"psi": psi, "kind": "number", "noise": 0.01, "level": "drift" if psi > 0.2 else "ok"}

    windows = [{"id": 1, "model_version": 1, "rows": 10, "drift": False,
                "results": {"columns": {"a": cell(0.1)}, "predictions": cell(0.7)}},  # no column b yet
               {"id": 2, "model_version": 1, "rows": 10, "drift": True,
                "results": {"columns": {"a": cell(0.3), "b": cell(0.05)}, "predictions": cell(0.4), "drifted": ["a"]}}]

    class FakeStore:
        def list_drift_windows(self, name, limit):
            return windows[::-1]  # newest first, as the store lists them

    drawn = {}
    monkeypatch.setattr(loop_report, "psi_history",
                        lambda labels, series, threshold: drawn.update(labels=labels, series=series) or b"\x89PNG")
    result = {"version": 1, "rows": 10, "drift": True, "live": {}, "columns": windows[1]["results"]["columns"],
              "predictions": cell(0.4)}
    loop_report.drift_report(FakeStore(), "m", result)
    assert drawn["labels"] == ["#1", "#2"]
    assert drawn["series"] == {"(predictions)": [0.7, 0.4], "a": [0.1, 0.3], "b": [None, 0.05]}  # not b = 0.7
