"""Prediction-log durability: kill -9 under mixed batch traffic loses nothing acknowledged; store
failures never block the event loop and show on /ready and /metrics; retention bounds the log."""

import json
import os
import signal
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from test_serve import Server

import loopml
from loopml.registry import Store, db
from loopml.serve.predlog import PredictionLog, parse_retention


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("durable")
    rng = np.random.default_rng(0)
    n = 300
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    df = pd.DataFrame({"x1": x1, "x2": x2, "color": rng.choice(["red", "blue"], size=n),
                       "label": np.where(x1 + 0.3 * x2 > 0, "yes", "no")})
    model = loopml.Model(target="label", training={"epochs": 3, "seed": 0}).fit(df, progress=False, cache_dir=False)
    return root, model.save(root / "m1"), df.drop(columns=["label"])


def _fresh_store(root, model_dir, name: str) -> str:
    url = f"sqlite:///{root / f'{name}.db'}"
    store = Store(url, str(root / "artifacts"))
    store.register("clf", path=model_dir)
    store.promote("clf", 1)
    return url


def _records(features, n: int, offset: int) -> list[dict]:
    rows = features.iloc[[(offset + i) % len(features) for i in range(n)]]
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")]


def test_kill_9_under_mixed_batch_traffic_loses_no_acknowledged_row(model_store):
    root, model_dir, features = model_store
    url = _fresh_store(root, model_dir, "kill")
    server = Server("clf@production", url)
    predicted: list[str] = []
    feedback: list[tuple[int, str]] = []
    stop = threading.Event()

    def client(worker: int) -> None:
        sizes = (1, 200, 1000)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            i = worker
            while not stop.is_set():
                try:
                    r = c.post("/v1/models/clf/predict", json=_records(features, sizes[i % 3], i))
                    if r.status_code != 200:
                        continue
                    ids = [p["prediction_id"] for p in r.json()["predictions"]]
                    predicted.extend(ids)
                    f = c.post("/v1/feedback", json={"prediction_id": ids[-1], "label": "yes"})
                    if f.status_code == 201:
                        feedback.append((f.json()["feedback_id"], ids[-1]))
                except httpx.HTTPError:
                    return  # the server is gone
                i += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(3.0)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    stop.set()
    for t in threads:
        t.join()
    assert len(predicted) > 1000 and len(feedback) > 5

    again = Server("clf@production", url)  # replays what the killed server spooled
    assert again.stop()
    store = Store(url)
    with store.engine.connect() as c:
        logged = {r[0] for r in c.execute(sa.select(db.predictions.c.id))}
        stored_feedback = {r.id: r for r in c.execute(sa.select(db.feedback))}
    lost = set(predicted) - logged
    assert not lost, f"{len(lost)} of {len(predicted)} acknowledged predictions lost"
    assert all(fid in stored_feedback for fid, _ in feedback)
    for fid, pid in feedback:
        row = stored_feedback[fid]
        assert row.prediction_id == pid and row.inputs is not None and row.prediction_outputs is not None
        assert store.get_prediction(pid) is not None


class FailingStore:
    """Wraps a store; prediction-log writes fail while ``down`` is set."""

    def __init__(self, store) -> None:
        self.store, self.down, self.calls = store, threading.Event(), 0

    def log_predictions(self, rows):
        self.calls += 1
        if self.down.is_set():
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return self.store.log_predictions(rows)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_store_down_never_blocks_the_loop_and_shows_on_ready_and_metrics(model_store, tmp_path, caplog):
    from loopml.serve.app import ServeSettings, create_app

    root, model_dir, features = model_store
    url = _fresh_store(root, model_dir, "down")
    settings = ServeSettings(model="clf@production", store=url, log_max_backlog=1500, spool_dir=str(tmp_path / "spool"),
                             monitor_interval_s=0)
    app = create_app(settings)
    failing = FailingStore(app.state.predictions.store)
    app.state.predictions.store = failing
    failing.down.set()
    with TestClient(app) as c:
        assert c.post("/v1/models/clf/predict", json=_records(features, 1000, 0)).status_code == 200
        deadline = time.time() + 10
        while failing.calls < 2:
            assert time.time() < deadline, "the log writer never tried the store"
            time.sleep(0.05)
        ready = c.get("/ready")
        assert ready.status_code == 200 and ready.json()["prediction_log"]["status"] == "degraded"
        assert "store" in ready.json()["prediction_log"]["reason"]
        # the backlog limit: refused with 503 at once, never a blocked event loop
        started = time.perf_counter()
        full = c.post("/v1/models/clf/predict", json=_records(features, 1000, 1))
        assert full.status_code == 503 and "prediction log" in full.json()["detail"]
        assert time.perf_counter() - started < 2.0
        started = time.perf_counter()
        assert c.get("/health").status_code == 200 and time.perf_counter() - started < 1.0
        assert c.get("/ready").status_code == 503
        text = c.get("/metrics").text
        assert "loopml_prediction_log_write_failures_total" in text and "loopml_prediction_log_queue 1000.0" in text
        assert "loopml_prediction_log_refused_requests_total 1.0" in text
        assert "prediction log: store writes failing" in caplog.text  # and in the server's log
        failing.down.clear()  # the store is back: the writer catches up by itself
        deadline = time.time() + 15
        while c.get("/ready").json().get("prediction_log", {}).get("status") != "ok":
            assert time.time() < deadline, "the log never recovered"
            time.sleep(0.1)
        assert c.post("/v1/models/clf/predict", json=_records(features, 5, 2)).status_code == 200
    assert len(Store(url).list_predictions("clf")) == 1005


class BrokenOnce:
    """A store whose first write raises something unexpected (a bug, not a database error)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.failed = False

    def log_predictions(self, rows):
        if not self.failed:
            self.failed = True
            raise RuntimeError("unexpected")
        self.rows.extend(rows)


def test_writer_thread_survives_an_unexpected_error(tmp_path):
    store = BrokenOnce()
    log = PredictionLog(store, durability="none", interval_s=0.01)
    log.put_nowait([{"id": "a" * 32, "model_name": "m", "created_at": 0.0}])
    deadline = time.time() + 10
    while not store.rows:
        assert time.time() < deadline, "the writer died"
        time.sleep(0.02)
    assert log.write_failures == 1 and log.health()["status"] == "ok"
    log.close()


def test_a_row_the_store_refuses_is_set_aside_not_retried_forever(tmp_path):
    from sqlalchemy.exc import StatementError

    class Picky:
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def log_predictions(self, rows):
            if any(r["id"] == "bad" for r in rows):
                raise StatementError("cannot encode", "INSERT", {}, TypeError("not JSON"))
            self.rows.extend(rows)

    store = Picky()
    log = PredictionLog(store, durability="spool", spool_dir=tmp_path, interval_s=0.01)
    log.put_nowait([{"id": "good1"}, {"id": "bad"}, {"id": "good2"}])
    log.close()
    assert [r["id"] for r in store.rows] == ["good1", "good2"] and log.rejected_rows == 1
    rejected = [json.loads(line) for line in next(tmp_path.glob("rejected-*.jsonl")).read_text().splitlines()]
    assert rejected[0]["id"] == "bad"
    assert not list(tmp_path.glob("*.spool"))  # everything else is in the store: the spool is gone


def test_retention_by_age_and_by_rows(store_url, tmp_path):
    store = Store(store_url, str(tmp_path / "a"))
    now = time.time()
    rows = [{"id": f"{i:032x}", "model_name": "clf", "model_version": 1, "created_at": now - (100 - i) * 3600,
             "inputs": {"x": i}, "outputs": {"prediction": "yes"}, "latency_ms": 1.0} for i in range(100)]
    store.log_predictions(rows + [{**rows[0], "id": "f" * 32, "model_name": "other"}])
    store.log_predictions(rows[:3] + [rows[3]])  # a replayed spool: rows already there are skipped
    assert len(store.list_predictions("clf")) == 100
    fid = store.add_feedback("clf", "yes", rows[0]["id"], rows[0]["inputs"], outputs=rows[0]["outputs"], model_version=1)
    assert store.prune_predictions("clf", older_than=now - 50 * 3600 - 1, chunk=7) == 50
    assert len(store.list_predictions("clf")) == 50 and len(store.list_predictions("other")) == 1
    assert store.prune_predictions("clf", keep_rows=20, chunk=7) == 30
    kept = store.list_predictions("clf")
    assert [r["id"] for r in kept] == [r["id"] for r in rows[80:]]
    # feedback keeps its snapshot of the pruned prediction: retrain and monitoring still see it
    [fb] = [f for f in store.list_feedback("clf") if f["id"] == fid]
    assert fb["inputs"] == {"x": 0} and fb["prediction_outputs"] == {"prediction": "yes"} and fb["model_version"] == 1
    assert parse_retention("30d") == (30 * 86400, None) and parse_retention("12h") == (12 * 3600, None)
    assert parse_retention("100000") == (None, 100000)
    for bad in ("", "0", "5x", "-3d", "1.5d"):
        with pytest.raises(ValueError, match="--log-retention"):
            parse_retention(bad)


def test_server_prunes_on_its_retention_interval(model_store):
    root, model_dir, features = model_store
    url = _fresh_store(root, model_dir, "retain")
    old = time.time() - 40 * 86400
    Store(url).log_predictions([{"id": f"{i:032x}", "model_name": "clf", "model_version": 1, "created_at": old,
                                 "inputs": {}, "outputs": {}, "latency_ms": 1.0} for i in range(30)])
    server = Server("clf@production", url, "--log-retention", "30d", "--log-retention-interval", "0.2")
    try:
        assert server.client.post("/v1/models/clf/predict", json=_records(features, 3, 0)).status_code == 200
        deadline = time.time() + 10
        while len(Store(url).list_predictions("clf", until=old + 1)) > 0:
            assert time.time() < deadline, "old predictions were never pruned"
            time.sleep(0.1)
    finally:
        assert server.stop()
    assert len(Store(url).list_predictions("clf")) == 3


def test_migration_0005_backfills_the_feedback_snapshot(store_url):
    engine = db.create_engine(store_url)
    db.migrate(engine, "0004")
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO predictions (id, model_name, model_version, created_at, inputs, outputs) "
                          "VALUES ('p1', 'clf', 3, 1.0, :inputs, :outputs)"),
                  {"inputs": json.dumps({"x": 1}), "outputs": json.dumps({"prediction": "yes"})})
        c.execute(sa.text("INSERT INTO feedback (model_name, prediction_id, label, created_at) "
                          "VALUES ('clf', 'p1', '\"no\"', 2.0)"))
    db.migrate(engine)
    engine.dispose()
    store = Store(store_url)
    assert store.prune_predictions("clf", older_than=10.0) == 1  # the prediction is gone, the feedback keeps it
    [fb] = store.list_feedback("clf")
    assert fb["inputs"] == {"x": 1} and fb["prediction_outputs"] == {"prediction": "yes"} and fb["model_version"] == 3


def test_a_dead_process_spool_is_replayed_once_and_a_live_one_is_left_alone(tmp_path):
    from loopml.serve.spool import Spool

    class Rows:
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def log_predictions(self, rows):
            self.rows.extend(rows)

    dead = Spool(tmp_path, fsync=True)
    dead.append([[{"id": "a"}, {"id": "b"}], [{"id": "c"}]])
    with open(dead.path(dead.seq), "ab") as f:
        f.write(b'[{"id": "torn"')  # cut mid-write by the kill: never acknowledged
    dead_fd = dead._fd
    dead._lock_file.close()  # the process is gone: its lock is free
    alive = Spool(tmp_path, fsync=False)
    alive.append([[{"id": "z"}]])
    store = Rows()
    log = PredictionLog(store, durability="spool", spool_dir=tmp_path)
    assert sorted(r["id"] for r in store.rows) == ["a", "b", "c"] and log.replayed_rows == 3
    assert not dead.path(dead.seq).exists() and alive.path(alive.seq).exists()
    log.close()
    os.close(dead_fd)
    alive.close(everything_committed=False)


def test_a_spool_that_cannot_be_written_refuses_then_recovers(tmp_path, monkeypatch):
    import asyncio
    import errno

    from loopml.serve.predlog import LogUnavailable

    class Rows:
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def log_predictions(self, rows):
            self.rows.extend(rows)

    store = Rows()
    log = PredictionLog(store, durability="fsync", spool_dir=tmp_path, interval_s=0.01)
    real_append = log.spool.append
    disk = {"full": True}

    def append(requests):
        if disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(requests)

    monkeypatch.setattr(log.spool, "append", append)

    async def scenario() -> None:
        with pytest.raises(LogUnavailable):
            await log.put([{"id": "p1"}])  # not acknowledged
        assert log.health()["status"] == "unavailable" and "p1" not in log.pending
        with pytest.raises(LogUnavailable):
            await log.put([{"id": "p2"}])  # refused at once for a second
        disk["full"] = False
        await asyncio.sleep(1.1)
        await log.put([{"id": "p3"}])  # one request tries again, and it works

    asyncio.run(scenario())
    log.close()
    assert [r["id"] for r in store.rows] == ["p3"] and log.health()["status"] == "ok"
