"""Serving under faults and hostile input: a batcher that survives its runner, an alias watcher that
survives a bad version, media confined to --media-root, strict JSON in every answer, multi-worker metrics."""

import asyncio
import json
import struct
import zlib
from pathlib import Path

import pytest

from loopml.errors import LoopmlError
from loopml.serve.batcher import Batcher, BatchFailed, QueueFull


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (what a strict client such as JavaScript's JSON.parse does)."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


# -- the batcher ------------------------------------------------------------------------------------
def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


class FlakyRunner:
    """Doubles each record; misbehaves on records named in ``faults`` (raise, None, wrong count)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, records: list) -> list:
        self.calls += 1
        kinds = {r.get("fault") for r in records}
        if "raise" in kinds:
            raise RuntimeError("boom")
        if "user" in kinds:
            raise LoopmlError("x: a number is expected")
        if "none" in kinds:
            return None
        if "short" in kinds:
            return [{"y": r["x"] * 2} for r in records][:-1]
        return [{"y": r["x"] * 2} for r in records]


@pytest.mark.parametrize("fault", ["raise", "none", "short", "user"])
def test_batcher_survives_a_failing_runner_and_answers_later_requests(fault):
    async def scenario():
        batcher = Batcher(FlakyRunner(), max_batch_size=8, max_wait_ms=20, arriving=lambda: 1)
        batcher.start()
        bad = batcher.submit([{"x": 1, "fault": fault}])
        good = [batcher.submit([{"x": i}, {"x": i + 10}]) for i in range(3)]
        results = await asyncio.gather(bad, *good, return_exceptions=True)
        later = await batcher.submit([{"x": 5}])  # the loop is still alive
        await batcher.close()
        return results, later

    results, later = _run(scenario())
    expected = LoopmlError if fault == "user" else (RuntimeError if fault == "raise" else BatchFailed)
    assert isinstance(results[0], expected), results[0]
    assert results[1:] == [[{"y": 2 * i}, {"y": 2 * (i + 10)}] for i in range(3)]  # the others, each its own rows
    assert later == [{"y": 10}]


def test_batcher_survives_a_failing_metrics_hook():
    def hook(_rows, _queued):
        raise ValueError("metrics broke")

    async def scenario():
        batcher = Batcher(FlakyRunner(), on_batch=hook)
        batcher.start()
        first = await batcher.submit([{"x": 1}])
        second = await batcher.submit([{"x": 2}])
        await batcher.close()
        return first, second

    assert _run(scenario()) == ([{"y": 2}], [{"y": 4}])


def test_batcher_close_times_out_and_answers_what_is_still_queued():
    import threading

    release = threading.Event()

    def stuck(records):
        release.wait(5)
        return [{"y": 0} for _ in records]

    async def scenario():
        batcher = Batcher(stuck, max_batch_size=1)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([{"x": 1}]))
        waiting = asyncio.ensure_future(batcher.submit([{"x": 2}]))
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        await batcher.close(timeout=0.2)
        took = asyncio.get_running_loop().time() - started
        release.set()
        outcomes = await asyncio.gather(first, waiting, return_exceptions=True)
        with pytest.raises(QueueFull):
            await batcher.submit([{"x": 3}])
        return took, outcomes

    took, outcomes = _run(scenario())
    assert took < 2.0
    assert all(isinstance(o, QueueFull) for o in outcomes), outcomes  # answered (503), not left hanging


# -- a real server: hostile values ------------------------------------------------------------------
from test_serve import Server, registered  # noqa: E402, F401  (the fixture)

JSON_HEADERS = {"content-type": "application/json", "x-api-key": "k1"}


def test_hostile_values_are_4xx_in_strict_json(registered):  # noqa: F811
    url, _, _ = registered
    server = Server("clf@production", url, "--api-key", "k1", "--admin-token", "t0ken")
    try:
        post = server.client.post
        cases = {
            "1e308 (finite, overflows in preprocessing)": ("/v1/models/clf/predict", '{"x1": 1e308, "x2": 0}', 422),
            "-1e308": ("/v1/models/clf/predict", '[{"x1": 0}, {"x1": -1e308}]', 422),
            "1e309 (parses as inf)": ("/v1/models/clf/predict", '{"x1": 1e309}', 422),
            "Infinity literal": ("/v1/models/clf/predict", '{"x2": Infinity}', 422),
            "NaN literal": ("/v1/models/clf/predict", '{"x1": NaN}', 422),
            "NaN in a category": ("/v1/models/clf/predict", '{"color": NaN}', 422),
            "lone surrogate in text": ("/v1/models/clf/predict", '{"note": "fine \\ud800"}', 422),
            "lone surrogate as a key": ("/v1/models/clf/predict", '{"\\udfff": 1}', 422),
            "lone surrogate label": ("/v1/feedback", '{"label": "\\ud800", "inputs": {"x1": 1}}', 422),
            "NaN label": ("/v1/feedback", '{"label": NaN, "inputs": {"x1": 1}}', 422),
            "inf in feedback inputs": ("/v1/feedback", '{"label": "yes", "inputs": {"x1": -Infinity}}', 422),
        }
        for what, (path, body, status) in cases.items():
            r = post(path, content=body, headers=JSON_HEADERS)
            assert r.status_code == status, (what, r.status_code, r.text)
            detail = strict_json(r.text)["detail"]
            assert "\n" not in detail and "Traceback" not in detail, (what, detail)
        assert "finite" in strict_json(post("/v1/models/clf/predict", content='{"x1": 1e309}',
                                            headers=JSON_HEADERS).text)["detail"]
        assert "x1" in strict_json(post("/v1/models/clf/predict", content='{"x1": 1e308}', headers=JSON_HEADERS).text)["detail"]
        # non-ASCII (latin-1) header bytes: a wrong key, not a crash
        for headers in ({"x-api-key": "k\xe9y".encode("latin-1")}, {"authorization": b"Bearer \xff\xfe"}):
            r = post("/v1/models/clf/predict", json={"x1": 1}, headers=headers)
            assert r.status_code == 401, r.text
            strict_json(r.text)
        r = post("/v1/admin/reload", headers={"authorization": "Bearer t\xf6ken".encode("latin-1")})
        assert r.status_code == 401, r.text
        ok = post("/v1/models/clf/predict", json={"x1": 1e30, "x2": 0.5}, headers={"x-api-key": "k1"})
        assert ok.status_code in (200, 422), ok.text  # large but finite after scaling: answered, strictly
        strict_json(ok.text)
        assert server.client.get("/ready").status_code == 200  # none of this broke the server
    finally:
        server.stop()


# -- media: --media-root, confinement, no oracles, decompression bombs ------------------------------
def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose header declares ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    import numpy as np
    import pandas as pd
    from PIL import Image

    import loopml

    root = tmp_path_factory.mktemp("media")
    media, elsewhere = root / "media", root / "elsewhere"
    rng = np.random.default_rng(0)
    rows = []
    for kind, value in (("bright", 230), ("dark", 20)):
        (media / kind).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(value, 10, size=(8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(media / kind / f"{i}.png")
            rows.append({"image": f"{kind}/{i}.png", "label": kind})
    elsewhere.mkdir()
    (elsewhere / "secret.png").write_bytes((media / "dark" / "0.png").read_bytes())
    (media / "link.png").symlink_to(elsewhere / "secret.png")  # a symlink out of the media root
    (media / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    (media / "big.png").write_bytes(png_declaring(9_000, 6_000))  # 54 Mpx: under Pillow's own limit, over ours
    model = loopml.Model(target="label", data={"media_root": str(media)}, training={"epochs": 2, "seed": 0})
    model.fit(pd.DataFrame(rows), progress=False, cache_dir=False)
    path = model.save(root / "model")
    workdir = root / "cwd"
    (workdir / "bright").mkdir(parents=True)  # a decoy: the working directory must not be where paths resolve
    server = Server(str(path), f"sqlite:///{root / 'registry.db'}", "--media-root", str(media))
    yield server, media, elsewhere, model
    server.stop()


def test_media_paths_resolve_against_media_root_and_stay_inside(image_server):
    server, media, elsewhere, _ = image_server
    predict = server.client.post
    name = strict_json(server.client.get("/v1/models").text)[0]["name"]
    ok = predict(f"/v1/models/{name}/predict", json=[{"image": "bright/1.png"}, {"image": "dark/2.png"}])
    assert ok.status_code == 200, ok.text
    assert [p["prediction"] for p in strict_json(ok.text)["predictions"]] == ["bright", "dark"]
    refused = {
        "missing": "bright/nope.png",
        "dot-dot out": "../elsewhere/secret.png",
        "absolute outside": str(elsewhere / "secret.png"),
        "absolute inside": str(media / "bright" / "1.png"),
        "symlink out": "link.png",
        "a folder": "bright",
        "NUL byte": "bright/1.png\x00.txt",
        "very long": "a/" * 3000 + "x.png",
    }
    details = set()
    for what, value in refused.items():
        r = predict(f"/v1/models/{name}/predict", json={"image": value})
        assert r.status_code == 422, (what, r.status_code, r.text)
        detail = strict_json(r.text)["detail"].replace(repr(value)[:120], "<value>")  # its own value echoed back
        assert str(media) not in detail and str(elsewhere) not in detail, (what, detail)
        details.add(detail)
    assert len(details) == 1, details  # one message whatever the reason: no existence oracle
    for path in ("/v1/models", "/openapi.json"):  # a model served from a folder: not named by its server path
        assert str(media.parent) not in server.client.get(path).text


def test_decompression_bombs_are_refused_before_decoding(image_server):
    server, _, _, model = image_server
    name = strict_json(server.client.get("/v1/models").text)[0]["name"]
    for image in ("bomb.png", "big.png"):
        r = server.client.post(f"/v1/models/{name}/predict", json={"image": image})
        assert r.status_code == 422, (image, r.status_code, r.text)
        assert "pixels" in strict_json(r.text)["detail"]  # Pillow's own guard, or ours below it
    assert server.client.get("/ready").status_code == 200
    # the same check on the Python / CLI predict path
    import pandas as pd

    with pytest.raises(LoopmlError, match="pixels declared"):
        model.predict(pd.DataFrame({"image": ["big.png"]}))


# -- the alias watcher: a version that fails to load, a version with other columns ------------------
def _wait_for(check, timeout: float = 30.0):
    import time

    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def test_watcher_survives_a_broken_version_and_follows_a_new_schema(tmp_path):
    import time

    import numpy as np
    import pandas as pd

    import loopml
    from loopml.registry import Store

    rng = np.random.default_rng(0)
    n = 200
    x1 = rng.normal(size=n)
    old = pd.DataFrame({"x1": x1, "color": rng.choice(["red", "blue"], size=n), "label": np.where(x1 > 0, "yes", "no")})
    new = pd.DataFrame({"x1": x1, "depth": rng.normal(size=n), "label": old["label"]})  # 'color' gone, 'depth' new
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    store = Store(url, str(tmp_path / "artifacts"))
    for i, frame in enumerate((old, old, new), start=1):
        model = loopml.Model(target="label", training={"epochs": 2, "seed": i}).fit(frame, progress=False, cache_dir=False)
        store.register("w", path=model.save(tmp_path / f"m{i}"))
    store.promote("w", 1)
    broken = Path(store.resolve("w:2")["path"])
    (broken / "model.safetensors").write_bytes(b"\x00 not weights")

    server = Server("w@production", url)
    try:
        client = server.client
        assert client.post("/v1/models/w/predict", json={"x1": 1, "color": "red"}).status_code == 200
        store.promote("w", 2)  # fails to load: version 1 keeps serving, the failure is reported
        info = _wait_for(lambda: strict_json(client.get("/v1/models").text)[0]["last_load_error"])
        assert info["version"] == 2 and str(tmp_path) not in json.dumps(info)
        assert strict_json(client.get("/v1/models").text)[0]["version"] == 1
        metrics = client.get("/metrics").text
        assert 'loopml_model_load_failures_total{model="w"} 1.0' in metrics
        assert 'loopml_model_failed_version{model="w"} 2.0' in metrics
        for _ in range(5):
            r = client.post("/v1/models/w/predict", json={"x1": 1, "color": "red"})
            assert r.status_code == 200 and strict_json(r.text)["version"] == 1
        time.sleep(1.0)  # the watcher does not retry a known-bad version every poll
        assert 'loopml_model_load_failures_total{model="w"} 1.0' in client.get("/metrics").text

        store.promote("w", 3)  # the next good promotion is followed, with its own request schema
        _wait_for(lambda: strict_json(client.get("/v1/models").text)[0]["version"] == 3)
        assert strict_json(client.get("/v1/models").text)[0]["last_load_error"] is None
        r = client.post("/v1/models/w/predict", json={"x1": 1, "depth": 0.5})
        assert r.status_code == 200 and strict_json(r.text)["version"] == 3, r.text
        r = client.post("/v1/models/w/predict", json={"x1": 1, "color": "red"})
        assert r.status_code == 422 and "color" in strict_json(r.text)["detail"], r.text
        doc = strict_json(client.get("/openapi.json").text)
        fields = next(s for k, s in doc["components"]["schemas"].items() if k.endswith("Input"))["properties"]
        assert "depth" in fields and "color" not in fields
        assert client.post("/v1/feedback", json={"label": "yes", "inputs": {"depth": 1.0}}).status_code == 201
        assert client.post("/v1/feedback", json={"label": "yes", "inputs": {"color": "red"}}).status_code == 422
    finally:
        server.stop()


# -- /metrics with several workers ------------------------------------------------------------------
def _counter(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_aggregate_all_workers(registered):  # noqa: F811
    import glob
    import tempfile

    import httpx

    url, _, _ = registered
    before = set(glob.glob(f"{tempfile.gettempdir()}/loopml-metrics-*"))
    server = Server("clf@production", url, "--workers", "2", "--monitor-interval", "0")
    try:
        sent = 60
        for i in range(sent):  # a new connection each time: both workers take some
            r = httpx.post(f"{server.url}/v1/models/clf/predict", json={"x1": i / 10}, timeout=30)
            assert r.status_code == 200, r.text
        for _ in range(8):  # whichever worker answers the scrape reports the whole server
            text = httpx.get(f"{server.url}/metrics", timeout=30).text
            assert _counter(text, "loopml_predictions_total") == sent, text
            assert _counter(text, 'loopml_requests_total{route="/v1/models/{name}/predict",status="200"}') == sent
        created = set(glob.glob(f"{tempfile.gettempdir()}/loopml-metrics-*")) - before
        assert len(created) == 1  # one private folder for this server
    finally:
        assert server.stop()
    assert not (set(glob.glob(f"{tempfile.gettempdir()}/loopml-metrics-*")) - before)  # removed when it stops


# -- a swap to other input columns while a request waits -------------------------------------------
def test_a_request_validated_for_old_columns_is_not_answered_by_a_version_with_other_columns(tmp_path, monkeypatch):
    """Request B is validated against v1's columns and queued behind A; v2 (other columns) is promoted before B
    reaches the runner. B must not be answered by v2 with its columns dropped: 503, send it again."""
    import threading
    import time

    import numpy as np
    import pandas as pd
    from fastapi.testclient import TestClient

    import loopml
    from loopml.registry import Store
    from loopml.serve import runner as runner_module
    from loopml.serve.app import ServeSettings, create_app

    rng = np.random.default_rng(0)
    x1 = rng.normal(size=200)
    old = pd.DataFrame({"x1": x1, "color": rng.choice(["red", "blue"], size=200), "label": np.where(x1 > 0, "y", "n")})
    new = pd.DataFrame({"x1": x1, "depth": rng.normal(size=200), "label": old["label"]})
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    store = Store(url, str(tmp_path / "artifacts"))
    for i, frame in enumerate((old, new), start=1):
        model = loopml.Model(target="label", training={"epochs": 1, "seed": i}).fit(frame, progress=False, cache_dir=False)
        store.register("w", path=model.save(tmp_path / f"m{i}"))
    store.promote("w", 1)

    entered, release = threading.Event(), threading.Event()
    original = runner_module.TorchRunner.predict

    def held(self, records):  # request A (x1 = 111) holds the runner until released
        if records and records[0].get("x1") == 111.0:
            entered.set()
            release.wait(30)
        return original(self, records)

    monkeypatch.setattr(runner_module.TorchRunner, "predict", held)
    settings = ServeSettings(model="w@production", store=url, artifacts=str(tmp_path / "artifacts"), poll_interval_s=0.05,
                             monitor_interval_s=0, log_durability="none", max_wait_ms=0)
    with TestClient(create_app(settings)) as client:
        answers = {}

        def send(key, body):
            answers[key] = client.post("/v1/models/w/predict", json=body)

        a = threading.Thread(target=send, args=("a", {"x1": 111.0, "color": "red"}))
        a.start()
        assert entered.wait(30)
        b = threading.Thread(target=send, args=("b", {"x1": 1.0, "color": "blue"}))
        b.start()
        time.sleep(0.3)  # B validated against v1's columns and waiting in the queue
        store.promote("w", 2)
        deadline = time.time() + 30
        while client.get("/v1/models").json()[0]["version"] != 2:
            assert time.time() < deadline, "no swap"
            time.sleep(0.05)
        release.set()
        a.join(30)
        b.join(30)
        assert answers["a"].status_code == 200 and answers["a"].json()["version"] == 1
        assert answers["b"].status_code == 503, answers["b"].text  # not silently answered by v2 without 'color'
        assert "send it again" in answers["b"].json()["detail"]
        again = client.post("/v1/models/w/predict", json={"x1": 1.0, "color": "blue"})
        assert again.status_code == 422 and "color" in again.json()["detail"]
        assert client.post("/v1/models/w/predict", json={"x1": 1.0, "depth": 0.5}).json()["version"] == 2
