"""The server, end to end: a real uvicorn process on a loopback port, a real SQLite store."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.cli import main
from loopml.registry import Store

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, ref: str, store: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "loopml", "serve", ref, "--port", str(self.port),
                                      "--store", store, "--threads", "1", *args],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 90
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not become ready"
            time.sleep(0.2)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def stop(self, sig=signal.SIGTERM) -> bool:
        """Signal the server; True when it shut down by itself (uvicorn re-raises SIGTERM after a clean drain)."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        finally:
            self.client.close()


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two versions of a small classifier (different seeds), v1 in production."""
    root = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    n = 400
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    df = pd.DataFrame({"x1": x1, "x2": x2, "color": rng.choice(["red", "blue"], size=n),
                       "note": np.where(x1 > 0, "good fine", "bad poor"), "label": np.where(x1 + 0.3 * x2 > 0, "yes", "no")})
    url = f"sqlite:///{root / 'registry.db'}"
    store = Store(url, str(root / "artifacts"))
    for seed in (1, 2):
        model = loopml.Model(target="label", training={"epochs": 6, "seed": seed}).fit(df, progress=False, cache_dir=False)
        store.register("clf", path=model.save(root / f"m{seed}"))
    store.promote("clf", 1)
    return url, df.drop(columns=["label"]), df


@pytest.fixture
def server(registered):
    url, _, _ = registered
    s = Server("clf@production", url)
    yield s
    if s.proc.poll() is None:
        s.stop()


def _record(df, i=0) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in df.iloc[i].items()}


def test_predict_and_feedback_reach_the_store(server, registered):
    url, features, _ = registered
    one = server.client.post("/v1/models/clf/predict", json=_record(features, 0))
    assert one.status_code == 200
    body = one.json()
    assert body["model"] == "clf" and body["version"] == 1 and len(body["predictions"]) == 1
    p = body["predictions"][0]
    assert p["prediction"] in ("yes", "no") and abs(sum(p["probabilities"].values()) - 1) < 1e-6
    many = server.client.post("/v1/models/clf/predict", json=[_record(features, i) for i in range(5)]).json()
    assert len(many["predictions"]) == 5
    expected = loopml.load(Store(url).resolve("clf:1")["path"]).predict(features.iloc[:5])
    assert [q["prediction"] for q in many["predictions"]] == list(expected)
    fb = server.client.post("/v1/feedback", json={"prediction_id": p["prediction_id"], "label": "yes"})
    assert fb.status_code == 201
    unseen = server.client.post("/v1/feedback", json={"inputs": _record(features, 7), "label": "no"})
    assert unseen.status_code == 201
    assert server.stop()
    store = Store(url)
    logged = {r["id"]: r for r in store.list_predictions("clf")}
    assert p["prediction_id"] in logged and all(q["prediction_id"] in logged for q in many["predictions"])
    row = logged[p["prediction_id"]]
    assert row["model_version"] == 1 and row["inputs"]["x1"] == pytest.approx(features.x1.iloc[0]) and row["latency_ms"] > 0
    feedback = store.list_feedback("clf")[-2:]
    assert feedback[0]["prediction_id"] == p["prediction_id"]
    assert feedback[0]["inputs"]["x1"] == pytest.approx(features.x1.iloc[0])
    assert feedback[1]["prediction_id"] is None and feedback[1]["label"] == "no"


def test_errors_are_4xx_with_the_problem_named(server, registered):
    _, features, _ = registered
    c = server.client
    r = c.post("/v1/models/clf/predict", json={**_record(features), "x3": 1.0})
    assert r.status_code == 422 and "x3" in r.json()["detail"]
    r = c.post("/v1/models/clf/predict", json={**_record(features), "x1": "not a number"})
    assert r.status_code == 422 and "x1" in r.json()["detail"]
    assert c.post("/v1/models/other/predict", json=_record(features)).status_code == 404
    assert c.post("/v1/models/clf/predict", content=b"{" + b" " * 2_000_000 + b"}",
                  headers={"content-type": "application/json"}).status_code == 413
    assert c.post("/v1/models/clf/predict", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert c.post("/v1/models/clf/predict", json=[]).status_code == 422
    r = c.post("/v1/feedback", json={"prediction_id": "0" * 32, "label": "yes"})
    assert r.status_code == 404
    r = c.post("/v1/feedback", json={"inputs": _record(features), "label": "maybe"})
    assert r.status_code == 422 and "not a class" in r.json()["detail"]
    assert c.post("/v1/admin/reload").status_code == 403  # no admin token configured
    for response in (r, c.get("/nope")):
        assert "Traceback" not in response.text and "/work" not in response.text and ".py" not in response.text
    docs = c.get("/openapi.json").json()
    fields = docs["components"]["schemas"]["ClfInput"]["properties"]
    assert {"x1", "x2", "color", "note"} <= set(fields) and fields["x1"]["anyOf"][0]["type"] == "number"
    metrics = c.get("/metrics").text
    assert 'loopml_requests_total{route="/v1/models/{name}/predict",status="422"}' in metrics
    assert 'loopml_model_version{model="clf"} 1.0' in metrics and "loopml_batch_size_bucket" in metrics


def test_hot_swap_on_promote_and_rollback_without_failed_requests(server, registered):
    url, features, _ = registered
    store = Store(url)
    failures, versions, stop = [], set(), threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                r = client.post("/v1/models/clf/predict", json=[_record(features, i) for i in range(3)])
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    versions.add(r.json()["version"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    store.promote("clf", 2, reason="test swap")
    deadline = time.time() + 15
    while server.client.get("/v1/models").json()[0]["version"] != 2:
        assert time.time() < deadline, "no swap to version 2"
        time.sleep(0.1)
    time.sleep(0.5)
    started = time.time()
    store.rollback("clf", reason="test rollback")
    while server.client.get("/v1/models").json()[0]["version"] != 1:
        assert time.time() - started < 15
        time.sleep(0.05)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert failures == [] and versions == {1, 2}
    assert 'loopml_model_swaps_total{model="clf"} 2.0' in server.client.get("/metrics").text


def test_sigterm_under_load_loses_no_acknowledged_prediction(registered):
    url, features, _ = registered
    server = Server("clf@production", url)
    acknowledged, stop = [], threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post("/v1/models/clf/predict", json=_record(features, 3))
                except httpx.HTTPError:
                    return  # the server has stopped accepting
                if r.status_code == 200:
                    acknowledged.append(r.json()["predictions"][0]["prediction_id"])

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    assert server.stop(signal.SIGTERM)
    stop.set()
    for t in threads:
        t.join()
    logged = {r["id"] for r in Store(url).list_predictions("clf")}
    assert len(acknowledged) > 20
    assert set(acknowledged) <= logged


def test_api_keys_admin_token_and_non_loopback_refusal(registered, capsys):
    url, features, _ = registered
    server = Server("clf@production", url, "--api-key", "k1", "--admin-token", "secret")
    try:
        c = server.client
        assert c.post("/v1/models/clf/predict", json=_record(features)).status_code == 401
        assert c.post("/v1/models/clf/predict", json=_record(features), headers={"X-API-Key": "k1"}).status_code == 200
        assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.post("/v1/admin/reload", headers={"Authorization": "Bearer secret"})
        assert r.status_code == 200 and r.json()["version"] in (1, 2)
    finally:
        server.stop()
    assert main(["serve", "clf@production", "--host", "0.0.0.0", "--store", url]) == 2
    assert "refusing to bind" in capsys.readouterr().err


def test_onnx_backend_matches_torch(registered, tmp_path):
    from loopml.serve.runner import OnnxRunner, TorchRunner

    url, features, _ = registered
    model = loopml.load("clf:1", store=url)
    torch_runner, onnx_runner = TorchRunner(model), OnnxRunner(model, tmp_path / "clf.onnx")
    inputs = model.preprocessor.transform(features)
    assert np.abs(torch_runner.outputs(inputs) - onnx_runner.outputs(inputs)).max() < 1e-5
    assert [r["prediction"] for r in onnx_runner.predict(features.to_dict(orient="records"))] == list(model.predict(features))


def test_background_monitoring_exposes_drift_on_metrics(registered):
    url, features, _ = registered
    server = Server("clf@production", url, "--monitor-interval", "0.5")
    try:
        shifted = features.assign(x1=features.x1 + 3.0)
        server.client.post("/v1/models/clf/predict", json=[_record(shifted, i) for i in range(120)])
        deadline = time.time() + 20
        while 'loopml_drift{model="clf"} 1.0' not in (text := server.client.get("/metrics").text):
            assert time.time() < deadline, "no drift reported on /metrics"
            time.sleep(0.3)
        assert 'loopml_drift_psi{column="x1",model="clf"}' in text
    finally:
        server.stop()
    assert Store(url).list_drift_windows("clf")[0]["drift"]
