"""Serving as an attacker would use it: what feedback accepts, and how `loopml serve` refuses bad start-up
options (one line, exit 2). In-process (TestClient) where possible, to stay fast."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_serve_hardening import image_server  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A server for a small classifier with a number, a binary (0/1) and a category column."""
    from fastapi.testclient import TestClient

    import loopml
    from loopml.registry import Store
    from loopml.serve.app import ServeSettings, create_app

    root = tmp_path_factory.mktemp("attack")
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    df = pd.DataFrame({"x": x, "flag": rng.choice([0, 1], size=200), "color": rng.choice(["red", "blue"], size=200),
                       "label": np.where(x > 0, "yes", "no")})
    url = f"sqlite:///{root / 'registry.db'}"
    store = Store(url, str(root / "artifacts"))
    model = loopml.Model(target="label", training={"epochs": 1, "seed": 0}).fit(df, progress=False, cache_dir=False)
    store.register("a", path=model.save(root / "m1"))
    store.promote("a", 1)
    settings = ServeSettings(model="a@production", store=url, artifacts=str(root / "artifacts"),
                             monitor_interval_s=0, log_durability="none")
    with TestClient(create_app(settings)) as c:
        yield c, store


def test_feedback_inputs_are_checked_like_a_prediction(client):
    """Feedback inputs a prediction would refuse (a value that overflows in preprocessing, a third value in a
    binary column) or that hold nothing to learn from are 422, not stored for a retrain to trip on."""
    c, store = client
    before = len(store.list_feedback("a")) if hasattr(store, "list_feedback") else None
    for inputs in ({"x": 1e308}, {"x": 0.5, "flag": 5}, {}, {"x": None, "flag": None, "color": None}):
        predicted = c.post("/v1/models/a/predict", json=inputs)
        r = c.post("/v1/feedback", json={"inputs": inputs, "label": "yes"})
        assert r.status_code == 422, (inputs, r.status_code, r.text)
        assert r.json()["detail"].startswith("inputs"), r.json()
        if inputs and any(v is not None for v in inputs.values()):
            assert predicted.status_code == 422, (inputs, predicted.text)  # the same rule as predict
    ok = c.post("/v1/feedback", json={"inputs": {"x": 0.5, "flag": 1, "color": "red"}, "label": "yes"})
    assert ok.status_code == 201, ok.text
    if before is not None:
        assert len(store.list_feedback("a")) == before + 1


def _serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    store = f"sqlite:///{tmp_path / 'registry.db'}"
    return subprocess.run([sys.executable, "-m", "loopml", "serve", *args, "--store", store], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("args, named", [
    (["--port", "70000"], "--port"),
    (["--port", "-1"], "--port"),
    (["--max-batch-size", "0"], "--max-batch-size"),
    (["--workers", "0"], "--workers"),
    (["--max-queue", "0"], "--max-queue"),
])
def test_bad_start_up_options_are_one_line_exit_2(tmp_path, args, named):
    r = _serve(tmp_path, "m@production", *args)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and named in lines[0], (r.returncode, lines)


def test_port_in_use_and_unknown_model_are_one_line_exit_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        r = _serve(tmp_path, "m@production", "--port", port)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and port in lines[0] and "in use" in lines[0], (r.returncode, lines)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    r = _serve(tmp_path, "nosuch@production", "--port", port)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and lines == ["error: no model named 'nosuch'"], (r.returncode, lines)


def test_unknown_model_with_workers_is_one_line_exit_2_not_a_respawn_loop(tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    r = _serve(tmp_path, "nosuch@production", "--port", port, "--workers", "2")
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and lines == ["error: no model named 'nosuch'"], (r.returncode, lines[:3])


def test_feedback_for_another_models_prediction_is_404_not_stored(client):
    """A prediction id logged by another model (same store) is not this model's: its inputs and outputs
    would be stored as this model's feedback and read by its retrain."""
    c, store = client
    store.log_predictions([{"id": "f" * 32, "model_name": "other", "model_version": 1, "created_at": 1.0,
                            "inputs": {"depth": 1.0}, "outputs": {"prediction": "yes"}, "latency_ms": 1.0}])
    before = len(store.list_feedback("a"))
    r = c.post("/v1/feedback", json={"prediction_id": "f" * 32, "label": "yes"})
    assert r.status_code == 404, r.text
    assert "other" not in r.json()["detail"]  # nothing about other models leaks
    assert len(store.list_feedback("a")) == before


def test_a_store_write_that_hangs_shows_on_ready(monkeypatch):
    """A store that neither answers nor fails (an SQLite file locked by another process, a hung connection)
    must not read as 'ok' on /ready while the backlog grows."""
    import threading
    import time

    from loopml.serve.predlog import PredictionLog

    release = threading.Event()

    class HangingStore:
        def log_predictions(self, rows):
            release.wait(30)

    monkeypatch.setattr(PredictionLog, "stall_s", 0.2, raising=False)
    log = PredictionLog(HangingStore(), durability="none", interval_s=0.01)
    try:
        log.put_nowait([{"id": "p1"}])
        deadline = time.time() + 5
        while log.health()["status"] == "ok" and time.time() < deadline:
            time.sleep(0.05)
        health = log.health()
        assert health["status"] == "degraded" and "waiting" in health["reason"] and health["backlog"] == 1, health
    finally:
        release.set()
    deadline = time.time() + 5
    while log.health()["backlog"] and time.time() < deadline:
        time.sleep(0.05)
    assert log.health()["status"] == "ok"


def test_unreadable_media_inside_the_root_is_a_4xx_without_paths(image_server):  # noqa: F811  (the fixture)
    """Files inside --media-root that are not images (text, empty, truncated, a FIFO) are 4xx, strict JSON,
    and never name a server path."""
    import os

    from test_serve_hardening import strict_json

    server, media, _, _ = image_server
    (media / "text.png").write_text("not an image")
    (media / "empty.png").write_bytes(b"")
    (media / "truncated.png").write_bytes((media / "dark" / "0.png").read_bytes()[:40])
    os.mkfifo(media / "pipe.png")  # opening it would block a worker forever
    name = strict_json(server.client.get("/v1/models").text)[0]["name"]
    for value in ("text.png", "empty.png", "truncated.png", "pipe.png", "./bright/../text.png"):
        r = server.client.post(f"/v1/models/{name}/predict", json={"image": value}, timeout=20)
        assert 400 <= r.status_code < 500, (value, r.status_code, r.text)
        assert str(media.parent) not in r.text and "Traceback" not in r.text, (value, r.text)
        strict_json(r.text)
    assert server.client.post(f"/v1/models/{name}/predict", json={"image": "bright/1.png"}).status_code == 200


def test_a_422_lists_a_bounded_number_of_errors(client):
    """Every bad field of every record listed back made a 1 MB request answer ~9 MB: amplification for free."""
    c, _ = client
    body = "{" + ",".join(f'"k{i}": 0' for i in range(5000)) + "}"
    r = c.post("/v1/models/a/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert len(r.content) < 10_000, len(r.content)
    answer = r.json()
    assert answer["detail"] == "k0: Extra inputs are not permitted" and answer["errors_total"] >= 5000
    assert 1 <= len(answer["errors"]) <= 20
    few = c.post("/v1/models/a/predict", json={"x": "old"}).json()
    assert len(few["errors"]) == 2 and "errors_total" not in few  # the record, and the list branch


def test_a_sibling_workers_spooled_prediction_is_found_for_feedback(tmp_path):
    """--workers 2, store slow: worker A acknowledged a prediction (it is in A's spool, not in the store);
    feedback for it lands on worker B, which must find it (it answered 404 before)."""
    import threading
    import time

    from loopml.serve.predlog import PredictionLog

    release = threading.Event()

    class HangingStore:
        def log_predictions(self, rows):
            release.wait(30)

    a = PredictionLog(HangingStore(), durability="spool", spool_dir=tmp_path, interval_s=0.01)
    b = PredictionLog(HangingStore(), durability="spool", spool_dir=tmp_path, interval_s=0.01)
    try:
        row = {"id": "a" * 32, "model_name": "m", "model_version": 1, "inputs": {"id": "b" * 32}, "outputs": {}}
        a.put_nowait([{**row, "id": "b" * 32}, row])
        deadline = time.time() + 5
        while not any(p.stat().st_size for p in tmp_path.glob("*.spool")) and time.time() < deadline:
            time.sleep(0.02)
        assert b.lookup("a" * 32) is None  # not in B's memory
        assert b.find_spooled("a" * 32) == row
        assert b.find_spooled("c" * 32) is None and b.find_spooled('"') is None
    finally:
        release.set()
        a.close(5)
        b.close(5)


def test_a_version_number_too_large_for_the_store_is_a_user_error(client):
    """`loopml serve m:99999999999999999999999` was an internal error (OverflowError from SQLite)."""
    from loopml.errors import LoopmlError

    _, store = client
    for ref in ("a:99999999999999999999999", "a:0"):
        with pytest.raises(LoopmlError, match="has no version"):
            store.resolve(ref)
    with pytest.raises(LoopmlError, match="has no version"):
        store.promote("a", 10**30)
    assert store.resolve("a:1")["version"] == 1


def test_a_regression_label_training_would_refuse_is_422(tmp_path):
    """A number target is trained only within the float32 range: a 1e308 label stored with 201 is a
    row every later retrain must skip (or trip on)."""
    from fastapi.testclient import TestClient

    import loopml
    from loopml.serve.app import ServeSettings, create_app

    rng = np.random.default_rng(0)
    x = rng.normal(size=120)
    model = loopml.Model(target="y", training={"epochs": 1, "seed": 0}).fit(
        pd.DataFrame({"x": x, "y": 3 * x}), progress=False, cache_dir=False)
    settings = ServeSettings(model=str(model.save(tmp_path / "reg")), store=f"sqlite:///{tmp_path / 'r.db'}",
                             monitor_interval_s=0, log_durability="none")
    with TestClient(create_app(settings)) as c:
        for label in ("1e308", "-1e300", "3.5e38", "true", '"7"'):
            r = c.post("/v1/feedback", content='{"inputs": {"x": 1}, "label": ' + label + "}",
                       headers={"content-type": "application/json"})
            assert r.status_code == 422 and r.json()["detail"].startswith("label"), (label, r.status_code, r.text)
        assert c.post("/v1/feedback", json={"inputs": {"x": 1}, "label": 2.5}).status_code == 201
