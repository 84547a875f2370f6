"""The labelling queue attacked: date columns, old versions' columns, twins of labelled cases, overflowing
inputs, terminal escapes in logged text, Python-only number spellings, and queue calls piling up."""

import asyncio
import io
import sys
import time
import uuid
import warnings

import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.cli import main
from loopml.loop.label_cli import check_label, compact
from loopml.loop.queue import STRATEGIES, feedback_queue, rank_candidates
from loopml.registry import Store


def make(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    when = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 500, size=n), unit="D")
    return pd.DataFrame({"a": a, "when": when.strftime("%Y-%m-%d"), "kind": rng.choice(["x", "y", "z"], size=n),
                         "label": np.where(a > 0, "pos", "neg")})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("qattack")
    model = loopml.Model(target="label", training={"epochs": 4, "seed": 0}).fit(make(300, 0), progress=False,
                                                                                   cache_dir=False)
    return model, model.save(root / "m")


def _store(tmp_path, model_dir) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    store.register("clf", path=model_dir)
    store.promote("clf", 1)
    return store


def _log(store: Store, records: list[dict], version: int = 1) -> list[str]:
    now, ids, rows = time.time(), [], []
    for i, record in enumerate(records):
        ids.append(uuid.uuid4().hex)
        rows.append({"id": ids[-1], "model_name": "clf", "model_version": version, "created_at": now + i * 1e-3,
                     "inputs": record, "latency_ms": 1.0,
                     "outputs": {"prediction": "neg", "probabilities": {"neg": 0.5, "pos": 0.5}}})
    store.log_predictions(rows)
    return ids


def test_a_date_column_and_old_versions_columns_rank_in_every_strategy(trained, tmp_path):
    """A model with a date column 500'd on uncertainty/drift/diverse (KeyError 'values'): the date
    reference is binned as numbers. Rows of an older version (other columns, none of the date) rank too."""
    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    frame = make(60, 1).drop(columns=["label"])
    frame.loc[:29, "when"] = "2031-06-01"  # drifted dates
    _log(store, frame.to_dict("records"))
    _log(store, [{"b": float(i), "colour": "red"} for i in range(20)], version=0)  # an older version's columns
    for strategy in STRATEGIES:
        ranked = rank_candidates(model, frame, 5, strategy)
        assert len(ranked) == 5, strategy
        queue = feedback_queue(store, "clf", 10, strategy)
        assert len(queue) == 10 and all(isinstance(q["reason"], str) for q in queue), strategy
    top = rank_candidates(model, frame, 3, "drift")
    assert any("when=" in r["reason"] for r in top), top


def test_a_twin_of_a_labelled_case_leaves_the_queue(trained, tmp_path):
    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    twin = {"a": 0.001, "when": "2020-05-05", "kind": "x"}
    first, second = _log(store, [twin, dict(twin), {"a": 0.002, "when": "2020-05-06", "kind": "y"}])[:2]
    assert len(feedback_queue(store, "clf", 10, model=model)) == 2  # identical inputs appear once
    store.add_feedback("clf", "pos", first, twin)
    ids = {q["prediction_id"] for q in feedback_queue(store, "clf", 10, model=model)}
    assert first not in ids and second not in ids and len(ids) == 1


def test_overflowing_inputs_rank_without_a_warning_line(trained):
    model, _ = trained
    frame = pd.DataFrame({"a": [3e38, -3e38, 0.0], "when": ["2020-01-01"] * 3, "kind": ["x"] * 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would be printed into the labeller's terminal
        ranked = rank_candidates(model, frame, 3, "uncertainty")
    assert len(ranked) == 3 and all(np.isfinite(r["score"]) for r in ranked)


def test_logged_text_cannot_rewrite_the_labellers_terminal(trained, tmp_path, monkeypatch, capsys):
    nasty = "evil\rSAFE\x1b]0;title\x07\x1b[2J\b\b\u202eRTL\x00"
    shown = compact({"kind": nasty, "a\x1b[1m": 1})
    assert not any(ord(c) < 32 or c == "\x7f" or c == "\u202e" for c in shown), shown
    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    _log(store, [{"a": 0.0001, "when": "2020-02-02", "kind": nasty}])
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert main(["label", "clf", "--n", "1", "--store", store.url]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out and "\x00" not in out, repr(out)
    assert "1 skipped" in out


class _Number:
    kind, column = "number", "y"


@pytest.mark.parametrize("text", ["1_000", "١٢", "0x10", "1,5", "nan", "inf", "-inf", "1e400", "12abc", "∞"])
def test_a_regression_label_is_a_plain_number(text):
    label, problem = check_label(_Number(), text)
    assert label is None and problem, (text, label)


@pytest.mark.parametrize(("text", "value"), [("3.5", 3.5), ("-2", -2), ("1e3", 1000), (".5", 0.5), ("+7", 7)])
def test_plain_numbers_are_labels(text, value):
    assert check_label(_Number(), text) == (value, None)


def test_queue_calls_run_one_at_a_time(trained, tmp_path, monkeypatch):
    """Each ranking is CPU work in the thread pool; many callers at once would starve predict of the
    cores (and the GIL): they wait for one another instead."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    import loopml.serve.queue_routes as routes

    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    running, peak = [0], [0]

    def slow(*a, **k):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        running[0] -= 1
        return []

    monkeypatch.setattr(routes, "feedback_queue", slow)

    class Served:
        name, version = "clf", 1

    Served.model = model
    app = FastAPI()
    app.include_router(routes.queue_router(store, {"served": Served}, lambda: None))

    async def burst():
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(*(c.get("/v1/feedback/queue") for _ in range(4)))

    answers = asyncio.run(burst())
    assert [a.status_code for a in answers] == [200] * 4
    assert peak[0] == 1, peak
    assert TestClient(app).get("/v1/feedback/queue?n=0").status_code == 422


def test_diverse_offers_n_rows_when_the_encoding_cannot_tell_them_apart(trained):
    """Unseen categories share one code (and text is not encoded): k-means saw one point and diverse
    offered 1 row of the 20 asked, though every row was a distinct input."""
    model, _ = trained
    frame = pd.DataFrame({"a": [0.01] * 30, "when": ["2020-03-03"] * 30, "kind": [f"new{i}" for i in range(30)]})
    ranked = rank_candidates(model, frame, 20, "diverse")
    assert len(ranked) == 20 and len({r["index"] for r in ranked}) == 20
    assert ranked[0]["reason"].startswith("stands for ")


def test_two_labellers_never_write_one_prediction_twice(trained, tmp_path, monkeypatch, capsys):
    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    ids = _log(store, [{"a": 0.001 * i, "when": "2020-04-04", "kind": "x"} for i in range(1, 4)])
    queue = feedback_queue(store, "clf", 3, model=model)

    class Other(io.StringIO):
        """The second labeller: while this one types its first label, the other session labels every row."""
        def readline(self, *a):
            for q in queue:
                if not store.labelled([q["prediction_id"]]):
                    store.add_feedback("clf", "neg", q["prediction_id"], q["inputs"])
            return super().readline(*a)

    monkeypatch.setattr(sys, "stdin", Other("pos\npos\npos\n"))
    assert main(["label", "clf", "--n", "3", "--store", store.url]) == 0
    out = capsys.readouterr().out
    assert "labelled meanwhile" in out and "0 labels written, 3 skipped" in out, out
    rows = store.list_feedback("clf")
    assert sorted(f["prediction_id"] for f in rows) == sorted(ids) and {f["label"] for f in rows} == {"neg"}


def test_hostile_values_in_the_log_and_the_query_never_make_a_500(trained, tmp_path):
    """Lone surrogates, 1e308, -0.0 and huge ints logged, then ranked by every strategy; n and strategy as junk; a
    canary's sticky key as bytes that are no text: each answer is 2xx/4xx, one line, valid JSON."""
    import json

    from fastapi.testclient import TestClient

    from loopml.loop.rollout import start_rollout
    from loopml.serve.app import ServeSettings, create_app

    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    store.register("clf", path=model_dir)
    _log(store, [{"a": "\ud800", "when": "2020-01-01", "kind": "x"}, {"a": 1e308, "when": "\ud800", "kind": "y"},
                 {"a": 10**30, "when": None, "kind": "\ud800"}, {"a": -0.0, "when": 2**70, "kind": ["z"]}, {}])
    start_rollout(store, "clf", alias="production", candidate=2, champion=1, mode="canary", percent=50)
    settings = ServeSettings(model="clf@production", store=store.url, artifacts=str(tmp_path / "artifacts"),
                             monitor_interval_s=0, log_durability="none", poll_interval_s=0.05)

    def check(r, ok: tuple[int, ...]) -> dict:
        assert r.status_code in ok, (r.request.url, r.status_code, r.text[:300])
        body = json.loads(r.text, parse_constant=lambda v: pytest.fail(f"invalid JSON constant {v}"))
        if r.status_code >= 400:
            assert "\n" not in body["detail"] and str(tmp_path) not in r.text
        return body

    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        for strategy in STRATEGIES:
            assert len(check(c.get(f"/v1/feedback/queue?n=10&strategy={strategy}"), (200,))["queue"]) == 5
        for n in ("0", "-1", str(10**30), "9" * 5000, "abc", "", "1e3", "nan", "%ED%A0%80", "%D9%A1"):
            assert "query.n" in check(c.get(f"/v1/feedback/queue?n={n}"), (422,))["detail"]
        for junk in ("%ED%A0%80", "%FF", "%C0%80", "%E2%80%AE", "uncertainty%00", "x" * 10000):
            assert "query.strategy" in check(c.get(f"/v1/feedback/queue?strategy={junk}"), (422,))["detail"]
        for sticky in (b"\xed\xa0\x80", b"\xff\xfe", "\u202e".encode(), b"x" * 5000):
            check(c.post("/v1/models/clf/predict", json={"a": 1.0, "when": "2020-01-01", "kind": "x"},
                         headers={"X-Loopml-Sticky": sticky}), (200,))
        for body in ('{"prediction_id": "\\ud800", "label": "pos"}', '{"prediction_id": "abc", "label": "\\ud800"}',
                     '{"inputs": {"a": 1e308, "when": "2020-01-01", "kind": "x"}, "label": "pos"}',
                     '{"inputs": {"a": 1%s, "when": "2020-01-01", "kind": "x"}, "label": "pos"}' % ("0" * 400),
                     '{"prediction_id": "abc", "label": 1%s}' % ("0" * 5000),
                     '{"prediction_id": "abc", "label": "pos", "corrects": "yes"}'):
            check(c.post("/v1/feedback", content=body, headers={"content-type": "application/json"}), (400, 404, 422))


def _settle_reference(x: np.ndarray, n: int, noise: float = 0.1) -> list[int]:
    """``covering.settle``'s greedy picks as first written: the full posterior updated after each pick."""
    d = (x**2).sum(1)[:, None] + (x**2).sum(1)[None, :] - 2.0 * x @ x.T
    cov, taken, out = np.exp(-0.5 * np.maximum(d, 0.0)), np.zeros(len(x), bool), []
    for _ in range(n):
        own = np.clip(np.diag(cov), 0.0, None)
        gain = (cov**2).sum(axis=0) / (own + noise)
        gain[taken] = -np.inf
        j = int(gain.argmax())
        out.append(j)
        taken[j] = True
        v = cov[:, j] / np.sqrt(own[j] + noise)
        cov -= np.outer(v, v)
    return out


def test_settle_picks_as_before_with_scores_ordered_and_fast():
    """500 greedy picks of 2000 candidates took 5 s (a fresh candidates² matrix per pick); the greedy gain is not
    monotone, so scores came out of order (n=500 on a 300-row window, and past the greedy picks)."""
    from loopml.loop import covering

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    x /= covering.length_scale(x)
    picks = covering.settle(x, np.zeros((0, 6)), 300)
    assert [p for p, _, _ in picks] == _settle_reference(x, 300)
    scores = [s for _, s, _ in picks]
    assert scores == sorted(scores, reverse=True)
    big = rng.normal(size=(2000, 12))
    big /= covering.length_scale(big)
    start = time.perf_counter()
    picks = covering.settle(big, big[:30] + 0.01, 700)  # past SETTLE_GREEDY: the rest by variance left
    assert time.perf_counter() - start < 4.0  # 5-7 s before, 0.7-1.5 s after (a busy 2-core machine)
    scores = [s for _, s, _ in picks]
    assert len(picks) == 700 and scores == sorted(scores, reverse=True)


def test_inputs_logged_as_a_list_or_a_string_do_not_crash_the_labeller(trained, tmp_path, monkeypatch, capsys):
    """``loopml label`` died on ``compact([1, 2])`` (internal error: 'list' object has no attribute 'items'):
    the queue handed the raw logged inputs on; they are read (and now shown) as no inputs."""
    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    _log(store, [[1, 2], "not a dict", {"a": 0.5, "when": "2020-01-01", "kind": "x"}])
    queue = feedback_queue(store, "clf", 10, model=model)
    assert len(queue) == 2 and all(isinstance(q["inputs"], dict) for q in queue)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n" * 5))
    assert main(["label", "clf", "--n", "5", "--store", store.url]) == 0
    assert "internal error" not in capsys.readouterr().out


def test_settle_reasons_say_missing_not_nan():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"a": rng.normal(size=300), "kind": rng.choice(["x", "y"], 300)})
    df["y"] = df.a + (df.kind == "x")
    model = loopml.Model(target="y", learner={"type": "lightgbm", "n_estimators": 20}).fit(df, progress=False,
                                                                                          cache_dir=False)
    frame = pd.DataFrame({"a": [None, 1e308, "abc", 5.0, 6.0], "kind": [None, "x", "q", "y", "x"]})
    ranked = rank_candidates(model, frame, 5, "uncertainty")
    assert ranked and all("=nan" not in r["reason"] and "=None" not in r["reason"] for r in ranked), ranked
    assert any("a missing" in r["reason"] for r in ranked), ranked


def test_settle_conditions_on_the_labels_nearest_the_candidates_and_stays_fast():
    """5000 labelled rows made the conditioning solve 5-13 s; at most SETTLE_KNOWN are kept, those nearest the
    candidates, so a region labelled densely still counts as settled."""
    from loopml.loop import covering

    rng = np.random.default_rng(1)
    done = rng.normal(0.0, 0.3, size=(5000, 4))  # one region labelled densely
    x = np.vstack([rng.normal(0.0, 0.3, size=(1000, 4)), rng.normal(4.0, 0.3, size=(1000, 4))])
    scale = covering.length_scale(x)
    start = time.perf_counter()
    picks = covering.settle(x / scale, done / scale, 20)
    assert time.perf_counter() - start < 4.0
    assert all(p >= 1000 for p, _, _ in picks[:10]), picks  # the unlabelled region first


def test_uncertainty_near_twins_come_last_with_scores_still_ordered(trained):
    """``spread`` passes over near-twins of picked rows and appends them when n is near the window size: their
    scores are capped at the row above (they were out of order) and the reason says why they are last."""
    model, _ = trained
    frame = make(300, 11).drop(columns=["label"])
    rows = rank_candidates(model, frame, 300, "uncertainty")
    scores = [r["score"] for r in rows]
    assert len(rows) == 300 and scores == sorted(scores, reverse=True)
    assert any(r["reason"].endswith("a near-twin of a row ranked above") for r in rows[150:])
    assert not any(r["reason"].endswith("a near-twin of a row ranked above") for r in rows[:50])


def test_uncertainty_near_twins_must_agree_on_the_text_the_encoding_leaves_out():
    """The queue's encoding leaves text out: rows with the same numbers and different texts are not twins (each
    keeps its own doubt as its score); the same text and numbers a hair apart are."""
    from loopml.loop import drift, queue

    texts = ["good bad", "the film a", "bad good movie", "poor great", "great", "awful", "meh", "fine", "ok", "so so"]
    ref = {"columns": {"stars": drift.column_reference(pd.Series(np.arange(1.0, 11.0)), "number"),
                       "text": drift.column_reference(pd.Series(texts), "text")}}
    frame = pd.DataFrame({"stars": [*np.arange(1.0, 11.0), 1.01], "text": [*texts, "good bad"]})
    scores = np.linspace(1.0, 0.1, len(frame))
    rows = queue._spread(frame, scores, [f"doubt {s:.2f}" for s in scores], len(frame), ref)
    twins = [int(r["index"]) for r in rows if r["reason"].endswith("a near-twin of a row ranked above")]
    assert twins == [10], rows  # "good bad" again, one hundredth of a star away: the one twin
    assert [r["score"] for r in rows[:10]] == pytest.approx(list(scores[:10])), rows  # different texts keep their own doubt


def test_blind_groups_keep_a_missing_text_apart_from_the_word_none_and_columns_apart():
    from loopml.loop.covering import blind_groups

    frame = pd.DataFrame({"t": [None, "None", "a b", "a", "a"], "u": ["c", "c", "c", "b c", "b c"]})
    assert blind_groups(frame, {"columns": {}}).tolist() == [0, 1, 2, 3, 3]
