"""Serving under faults and hostile input: a batcher that survives its runner, an alias watcher that
survives a bad version, media confined to --media-root, strict JSON in every answer, multi-worker metrics."""

import asyncio
import json
import struct
import zlib

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
