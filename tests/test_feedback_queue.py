"""The labelling queue: rankings that can be wrong, the HTTP route, ``loopml label``, and a retrain that uses them."""

import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.cli import main
from loopml.errors import LoopmlError
from loopml.loop.queue import STRATEGIES, feedback_queue, rank_candidates
from loopml.registry import Store

ROOT = Path(__file__).resolve().parents[1]


def make(n: int, seed: int) -> pd.DataFrame:
    """The label is the sign of ``a`` (no noise: the boundary is known exactly); ``b`` and ``kind`` are noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    return pd.DataFrame({"a": a, "b": b, "kind": rng.choice(["x", "y", "z"], size=n),
                         "label": np.where(a > 0, "pos", "neg")})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("queue")
    data = root / "train.csv"  # from a file: a retrain re-reads the champion's rows
    make(600, 0).to_csv(data, index=False)
    model = loopml.Model(target="label", training={"epochs": 12, "seed": 0}).fit(data, progress=False, cache_dir=False)
    return model, model.save(root / "clf")


def _store(tmp_path, model_dir) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    store.register("clf", path=model_dir)
    store.promote("clf", 1)
    return store


def _log(store: Store, frame: pd.DataFrame, model, served: bool | None = None, start: float | None = None) -> list[str]:
    """Each row as a logged prediction of clf:1 (as the server writes them); the prediction ids."""
    inputs = frame.drop(columns=["label"], errors="ignore")
    out = model.predictions(inputs)
    now = start or time.time()
    rows, ids = [], []
    for i, record in enumerate(inputs.to_dict("records")):
        pid = uuid.uuid4().hex
        ids.append(pid)
        rows.append({"id": pid, "model_name": "clf", "model_version": 1, "created_at": now + i * 1e-3,
                     "inputs": record, "latency_ms": 1.0, "served": served,
                     "outputs": {"prediction": out.iloc[i, 0],
                                 "probabilities": {"neg": float(out.iloc[i, 1]), "pos": float(out.iloc[i, 2])}}})
    store.log_predictions(rows)
    return ids


# -- the rankings ----------------------------------------------------------------------------------

def test_uncertainty_puts_near_boundary_rows_first(trained):
    model, _ = trained
    frame = make(400, 1).drop(columns=["label"])
    assert frame.a.abs().median() > 0.5
    ranked = rank_candidates(model, frame, 10)
    assert max(abs(frame.loc[r["index"], "a"]) for r in ranked) < 0.15, ranked
    assert all(r["reason"].startswith("margin ") and " between " in r["reason"] for r in ranked)
    assert not any("drifted" in r["reason"] for r in ranked)  # an undrifted window: doubt alone
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    # where the traffic moved, a confident prediction is worth a label: rows far outside training come first
    shifted = frame.copy()
    shifted.loc[:99, "a"] = 6.0 + np.arange(100) * 0.01
    first = rank_candidates(model, shifted, 5)
    assert all(shifted.loc[r["index"], "a"] > 3 and "outside the training range (drifted column, PSI" in r["reason"]
               for r in first), first


def _clusters(seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Five tight clusters on the boundary, 40 rows each (the first holding exact duplicates); their ids."""
    rng = np.random.default_rng(seed)
    parts, ids = [], []
    for c, t in enumerate([-2.0, -1.0, 0.0, 1.0, 2.0]):
        part = pd.DataFrame({"a": rng.normal(scale=0.05, size=40), "b": t + rng.normal(scale=0.02, size=40),
                             "kind": "xyzxy"[c]})
        if c == 0:
            part.iloc[20:] = part.iloc[:20].to_numpy()  # 20 rows sent twice
        parts.append(part)
        ids += [c] * 40
    return pd.concat(parts, ignore_index=True), np.array(ids)


def test_diverse_has_no_duplicates_and_covers_more_clusters(trained):
    model, _ = trained
    frame, cluster = _clusters(2)
    top = rank_candidates(model, frame, 5, "uncertainty")
    spread = rank_candidates(model, frame, 5, "diverse")
    covered = {name: len({cluster[r["index"]] for r in rows}) for name, rows in (("top", top), ("diverse", spread))}
    assert covered["diverse"] == 5 and covered["diverse"] > covered["top"], covered
    for strategy in STRATEGIES:  # identical inputs appear once, whatever the strategy
        rows = rank_candidates(model, frame, 200, strategy)
        keys = [tuple(frame.loc[r["index"]]) for r in rows]
        assert len(keys) == len(set(keys)) == 180, strategy
    assert spread[0]["reason"].startswith("stands for ") and "margin " in spread[0]["reason"]


def test_drift_picks_the_shifted_rows_and_names_the_column(trained):
    model, _ = trained
    frame = make(300, 3).drop(columns=["label"])
    frame.loc[frame.index[:12], "a"] += 6.0
    ranked = rank_candidates(model, frame, 12, "drift")
    assert sum(r["index"] < 12 for r in ranked) == 12, ranked
    assert all(r["reason"].startswith("a=") for r in ranked), ranked
    unseen = frame.assign(kind="x")
    unseen.loc[50, "kind"] = "never-seen"
    first = rank_candidates(model, unseen.iloc[12:], 1, "drift")[0]
    assert first["index"] == 50 and first["reason"] == "kind=never-seen was not seen in training"


def test_random_is_seeded_and_strategies_are_checked(trained):
    model, _ = trained
    frame = make(100, 4).drop(columns=["label"])
    first = [r["index"] for r in rank_candidates(model, frame, 10, "random", seed=7)]
    assert first == [r["index"] for r in rank_candidates(model, frame, 10, "random", seed=7)]
    assert first != [r["index"] for r in rank_candidates(model, frame, 10, "random", seed=8)]
    assert len(rank_candidates(model, frame, 500, "random")) == 100
    with pytest.raises(LoopmlError, match="valid strategies: uncertainty, drift, diverse, random"):
        rank_candidates(model, frame, 10, "entropy")


def test_regression_says_whether_members_disagree_or_inputs_are_novel(tmp_path):
    df = make(300, 5).assign(label=lambda d: d.a * 2 + d.b)
    frame = make(200, 6).drop(columns=["label"])
    frame.loc[0, "a"] = 9.0
    bagged = loopml.Model(target="label", learner={"type": "bagged", "member": {"type": "lightgbm", "n_estimators": 30},
                                                   "folds": 3}).fit(df, progress=False, cache_dir=False)
    rows = rank_candidates(bagged, frame, 5)
    assert all("3 members disagree" in r["reason"] for r in rows), rows
    lone = loopml.Model(target="label", learner={"type": "lightgbm", "n_estimators": 30}).fit(df, progress=False,
                                                                                             cache_dir=False)
    rows = rank_candidates(lone, frame, 5)
    assert all("members to disagree, so the doubt is a kernel's" in r["reason"] for r in rows), rows
    assert rows[0]["index"] != 0, rows  # a lone outlier settles only itself: novelty (``drift``) ranks it first
    assert rank_candidates(lone, frame, 1, "drift")[0]["index"] == 0


@pytest.fixture(scope="module")
def two_groups_and_outliers():
    """A regressor without members, and traffic of two dense groups (a, b near -1 and near 1) plus three far
    outliers (rows 120-122)."""
    df = make(300, 5).assign(label=lambda d: d.a * 2 + d.b)
    lone = loopml.Model(target="label", learner={"type": "lightgbm", "n_estimators": 30}).fit(df, progress=False,
                                                                                             cache_dir=False)
    rng = np.random.default_rng(3)
    groups = [pd.DataFrame({"a": rng.normal(c, 0.05, 60), "b": rng.normal(c, 0.05, 60), "kind": "x"}) for c in (-1, 1)]
    outliers = pd.DataFrame({"a": [8.0, -8.0, 8.0], "b": [8.0, 8.0, -8.0], "kind": "x"})
    return lone, groups, pd.concat([*groups, outliers], ignore_index=True)


def test_uncertainty_without_members_settles_dense_regions_first_and_counts_labels_as_settled(two_groups_and_outliers):
    """Two dense groups and far outliers: the first two picks settle one group each, never an outlier (the
    rarest inputs, which novelty ranked first); with one group labelled the first pick is in the other."""
    lone, groups, frame = two_groups_and_outliers
    picks = rank_candidates(lone, frame, 2, "uncertainty")
    assert sorted(int(frame.loc[r["index"], "a"] > 0) for r in picks) == [0, 1], picks
    assert all(abs(frame.loc[r["index"], "a"]) < 2 for r in picks), picks
    assert picks[0]["score"] > 3 and "settles the doubt of ~" in picks[0]["reason"], picks
    whole = {int(r["index"]): r["score"] for r in rank_candidates(lone, frame, 500, "uncertainty")}
    assert all(whole[i] < 1.0 for i in (120, 121, 122)), whole  # an outlier settles only itself (label noise: < 1)
    assert {int(r["index"]) for r in rank_candidates(lone, frame, 3, "drift")} == {120, 121, 122}
    nxt = rank_candidates(lone, frame, 1, "uncertainty", labelled=groups[0].iloc[:5])
    assert frame.loc[nxt[0]["index"], "a"] > 0 and abs(frame.loc[nxt[0]["index"], "a"]) < 2, nxt
    assert len(rank_candidates(lone, frame, 500, "uncertainty")) == len(frame)


def test_diverse_for_a_regressor_without_members_covers_the_dense_regions_labels_leave_open(two_groups_and_outliers):
    """Two dense groups of traffic and a few far outliers: the representative picks come from the groups,
    one per group, never an outlier; with one group already labelled the next pick is the other group."""
    lone, groups, frame = two_groups_and_outliers
    picks = rank_candidates(lone, frame, 2, "diverse")
    assert sorted(int(frame.loc[r["index"], "a"] > 0) for r in picks) == [0, 1], picks
    assert all(r["reason"].startswith("typical of ") for r in picks), picks
    labelled = groups[0].iloc[:5]
    nxt = rank_candidates(lone, frame, 1, "diverse", labelled=labelled)
    assert frame.loc[nxt[0]["index"], "a"] > 0 and abs(frame.loc[nxt[0]["index"], "a"]) < 2, nxt


def test_queue_skips_labelled_and_shadow_predictions_and_is_fast(trained, tmp_path):
    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    ids = _log(store, make(5000, 7), model)
    shadow = _log(store, make(50, 8), model, served=False)
    store.add_feedback("clf", "pos", ids[0])
    start = time.perf_counter()
    rows = feedback_queue(store, "clf", 50, model=model)
    took = time.perf_counter() - start
    assert took < 2.0, f"{took:.2f} s for 5000 candidates"
    got = {r["prediction_id"] for r in rows}
    assert len(got) == 50 and ids[0] not in got and not got & set(shadow)
    assert set(rows[0]) >= {"prediction_id", "inputs", "prediction", "probabilities", "model_version", "score", "reason"}


# -- the HTTP route --------------------------------------------------------------------------------

def test_the_route_ranks_checks_and_drops_labelled_rows(trained, tmp_path):
    from fastapi.testclient import TestClient

    from loopml.serve.app import ServeSettings, create_app

    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    ids = _log(store, make(200, 9), model)
    settings = ServeSettings(model="clf@production", store=store.url, artifacts=str(tmp_path / "artifacts"),
                             monitor_interval_s=0, log_durability="none", api_keys=["k1"])
    key = {"X-API-Key": "k1"}
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/feedback/queue").status_code == 401
        r = c.get("/v1/feedback/queue", params={"n": 5, "strategy": "diverse"}, headers=key)
        assert r.status_code == 200, r.text
        body = json.loads(r.text, parse_constant=lambda v: pytest.fail(f"invalid JSON constant {v}"))
        assert body["model"] == "clf" and body["strategy"] == "diverse" and len(body["queue"]) == 5
        assert {q["prediction_id"] for q in body["queue"]} <= set(ids) and str(tmp_path) not in r.text
        for params, needle in (({"n": 0}, "query.n"), ({"n": 501}, "query.n"), ({"n": "many"}, "query.n"),
                               ({"strategy": "entropy"}, "'uncertainty', 'drift', 'diverse' or 'random'")):
            bad = c.get("/v1/feedback/queue", params=params, headers=key)
            assert bad.status_code == 422 and needle in bad.json()["detail"], (params, bad.text)
            assert "\n" not in bad.json()["detail"]
        answered = c.post("/v1/models/clf/predict", json={"a": 0.001, "b": 0.5, "kind": "x"}, headers=key).json()
        pid = answered["predictions"][0]["prediction_id"]
        for _ in range(100):  # the log reaches the store off the request path
            queued = c.get("/v1/feedback/queue", params={"n": 500}, headers=key).json()["queue"]
            if pid in {q["prediction_id"] for q in queued}:
                break
            time.sleep(0.05)
        mine = next(q for q in queued if q["prediction_id"] == pid)
        assert mine["model_version"] == 1 and set(mine["probabilities"]) == {"neg", "pos"}
        top = c.get("/v1/feedback/queue", params={"n": 3}, headers=key).json()["queue"]
        assert top[0]["reason"].startswith("margin ")
        posted = c.post("/v1/feedback", json={"prediction_id": top[0]["prediction_id"], "label": "pos"}, headers=key)
        assert posted.status_code == 201, posted.text
        after = c.get("/v1/feedback/queue", params={"n": 3}, headers=key).json()["queue"]
        assert top[0]["prediction_id"] not in {q["prediction_id"] for q in after}
        assert after[0]["prediction_id"] == top[1]["prediction_id"]


# -- loopml label ----------------------------------------------------------------------------------

def test_label_reads_lines_checks_labels_and_writes_snapshots(trained, tmp_path, monkeypatch, capsys):
    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    _log(store, make(30, 10), model)
    queue = feedback_queue(store, "clf", 3, model=model)
    monkeypatch.setattr(sys, "stdin", io.StringIO("maybe\npos\n\nneg\n"))
    assert main(["label", "clf", "--n", "3", "--store", store.url]) == 0
    out = capsys.readouterr().out
    assert "'maybe' is not a class of 'label' (neg, pos)" in out and "2 labels written, 1 skipped" in out
    assert "margin " in out and "a=" in out
    rows = store.list_feedback("clf")
    assert [(f["prediction_id"], f["label"]) for f in rows] == [(queue[0]["prediction_id"], "pos"),
                                                                (queue[2]["prediction_id"], "neg")]
    assert rows[0]["model_version"] == 1 and rows[0]["prediction_outputs"]["prediction"] == queue[0]["prediction"]
    assert rows[0]["inputs"] == queue[0]["inputs"]
    # end of input stops cleanly; Ctrl-C stops with the count, after the last whole write
    monkeypatch.setattr(sys, "stdin", io.StringIO("pos\n"))
    assert main(["label", "clf", "--n", "3", "--store", store.url]) == 0
    assert "1 label written, 0 skipped" in capsys.readouterr().out

    class Interrupting(io.StringIO):
        def readline(self, *a):
            line = super().readline(*a)
            if not line:
                raise KeyboardInterrupt
            return line

    monkeypatch.setattr(sys, "stdin", Interrupting("neg\n"))
    assert main(["label", "clf", "--n", "3", "--store", store.url]) == 130
    assert "interrupted: 1 label written" in capsys.readouterr().out
    assert len(store.list_feedback("clf")) == 4
    assert main(["label", "clf", "--strategy", "entropy", "--store", store.url]) == 2
    assert "valid strategies" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a pty")
def test_label_works_in_a_terminal(trained, tmp_path):
    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    _log(store, make(10, 11), model)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = f"{sys.executable} -m loopml label clf --n 2 --store {store.url}"
    done = subprocess.run(["script", "-qec", command, "/dev/null"], input="neg\nq\n", capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 label written, 0 skipped" in done.stdout
    assert [f["label"] for f in store.list_feedback("clf")] == ["neg"]


def test_retrain_learns_from_queue_chosen_labels(trained, tmp_path, monkeypatch, capsys):
    from loopml.loop.policy import load_policy
    from loopml.loop.retrain import retrain

    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    traffic = make(120, 12)
    ids = _log(store, traffic, model)
    truth = dict(zip(ids, traffic["label"], strict=True))
    queue = feedback_queue(store, "clf", 100, model=model)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{truth[q['prediction_id']]}\n" for q in queue)))
    assert main(["label", "clf", "--n", "100", "--store", store.url]) == 0
    assert "100 labels written" in capsys.readouterr().out
    written = {int(f["id"]) for f in store.list_feedback("clf")}
    policy = load_policy({"data": {"holdout_fraction": 0.3, "min_holdout": 20}, "train": {"training": {"epochs": 2}}})
    decision = retrain(store, "clf", policy, reason="queue labels")
    lineage = store.get_version("clf", decision["candidate_version"])["lineage"]  # promoted or not
    assert set(lineage["feedback_ids"]) | set(lineage["held_back_ids"]) == written, lineage
    assert len(lineage["feedback_ids"]) == 70
    # the queue's order is the labels' order: the held-back 30 are every third label, not its 30 lowest-ranked picks
    order = sorted(written)
    spots = [order.index(i) for i in lineage["held_back_ids"]]
    assert min(spots) < 10 and max(spots) == 99 and max(np.diff(spots)) <= 4, spots


@pytest.mark.parametrize(("rows", "held"), [(10, 3), (100, 30), (600, 180), (7, 7), (5, 1), (31, 30), (1000, 1)])
def test_holdout_spread_holds_back_exactly_the_share_evenly_and_newest_the_tail(rows, held):
    from loopml.loop.retrain import holdout_mask

    spread, newest = holdout_mask(rows, held), holdout_mask(rows, held, "newest")
    assert spread.sum() == held == newest.sum()
    assert newest[rows - held:].all()
    spots = np.flatnonzero(spread)
    gap = -(-rows // held)  # ceil(rows / held): no stretch of learned labels longer than the spacing
    assert spots[-1] == rows - 1 and (np.diff(spots, prepend=-1) <= gap).all(), spots


class _Classes:
    """A class target as ``label_cli`` reads it (kind, column, classes, class_of)."""

    kind, column = "category", "answer"

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes

    def class_of(self, text: object) -> object | None:
        return text if text in self.classes else None


def test_a_class_named_q_is_a_label_and_colon_q_quits(monkeypatch, capsys):
    """A class literally named `q` could not be typed: `q` quit. Now `:q` (or end of input) always quits, and `q` is
    the label wherever it is a class (the prompt says which keys quit)."""
    from loopml.loop.label_cli import _QUIT, _ask, _quits

    target = _Classes(["q", "r"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("q\n:q\n"))
    assert _ask(target) == "q"
    assert _ask(target) is _QUIT
    assert _quits(target) == ":q or Ctrl-D quits"
    plain = _Classes(["neg", "pos"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("maybe\nq\n"))
    assert _ask(plain) is _QUIT  # where q is no class it still quits
    assert "Enter skips, :q (or q, Ctrl-D) quits" in capsys.readouterr().out


def test_label_quits_on_colon_q_and_says_so(trained, tmp_path, monkeypatch, capsys):
    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    _log(store, make(10, 12), model)
    monkeypatch.setattr(sys, "stdin", io.StringIO("pos\n:q\nneg\n"))
    assert main(["label", "clf", "--n", "3", "--store", store.url]) == 0
    out = capsys.readouterr().out
    assert "Enter skips, :q (or q, Ctrl-D) quits" in out and "1 label written, 0 skipped" in out


@pytest.mark.parametrize("command", [["label", "clf"], ["monitor", "clf"], ["loop", "clf", "--policy", "POLICY"]])
def test_a_reading_command_refuses_a_sqlite_store_that_does_not_exist(tmp_path, capsys, command):
    """`--store sqlite:///typo.db` silently created an empty store (and `loop` then waited on it for ever)."""
    policy = tmp_path / "p.yaml"
    policy.write_text("{}\n")
    typo = tmp_path / "typo.db"
    args = [str(policy) if a == "POLICY" else a for a in command]
    assert main([*args, "--store", f"sqlite:///{typo}"]) == 2
    err = capsys.readouterr().err
    assert f"no store at {typo}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not typo.exists()


# -- one label per prediction ------------------------------------------------------------------------

def test_two_concurrent_labels_for_one_prediction_store_one(store_url):
    """POST /v1/feedback twice (or `loopml label` racing the dashboard) stored two labels for one prediction; now the
    store refuses the second (a unique index: race-safe on SQLite and PostgreSQL) unless it says it corrects it."""
    import threading

    from loopml.registry.records import FeedbackExists

    store = Store(store_url)
    pid = uuid.uuid4().hex
    start, ids, refused = threading.Barrier(8), [], []

    def post(label: str) -> None:
        start.wait()
        try:
            ids.append(store.add_feedback("clf", label, pid, {"a": 1.0}))
        except FeedbackExists as e:
            refused.append(str(e))

    threads = [threading.Thread(target=post, args=(f"l{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == 1 and len(refused) == 7, (ids, refused)
    assert refused[0].startswith(f"prediction {pid} already has feedback") and "\n" not in refused[0]
    assert [f["id"] for f in store.list_feedback("clf")] == ids
    fixed = store.add_feedback("clf", "right", pid, corrects=True)  # a correction takes the prediction over
    rows = store.list_feedback("clf")
    assert [(f["id"], f["prediction_id"], f["label"]) for f in rows if f["prediction_id"]] == [(fixed, pid, "right")]
    assert fixed > ids[0] and all(f["inputs"] == {"a": 1.0} for f in rows)  # the old row stays, on its inputs
    assert store.labelled([pid]) == {pid}
    store.add_feedback("clf", "x", None, {"a": 2.0})  # feedback on bare inputs (no prediction id) may repeat
    store.add_feedback("clf", "x", None, {"a": 2.0})
    assert len(store.list_feedback("clf")) == 4


def test_an_old_store_with_two_labels_for_one_prediction_upgrades_keeping_the_newest(tmp_path):
    import sqlalchemy as sa

    from loopml.registry import db

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = db.create_engine(url)
    db.migrate(engine, "0008")
    with engine.begin() as c:
        c.execute(db.predictions.insert().values(id="p1", model_name="clf", model_version=1, created_at=1.0,
                                             inputs={"a": 3.0}, outputs={"prediction": "x"}, served=True))
        for label, pid in (("old", "p1"), ("new", "p1"), ("only", "p2"), ("bare", None), ("bare", None)):
            c.execute(db.feedback.insert().values(model_name="clf", prediction_id=pid, label=label, created_at=1.0,
                                                  inputs=None if pid == "p1" else {"a": 1.0}))
    engine.dispose()
    store = Store(url)
    rows = store.list_feedback("clf")
    assert [(f["prediction_id"], f["label"]) for f in rows] == [
        (None, "old"), ("p1", "new"), ("p2", "only"), (None, "bare"), (None, "bare")]
    assert rows[0]["inputs"] == {"a": 3.0} and rows[0]["model_version"] == 1  # its snapshot, from the prediction
    with pytest.raises(LoopmlError, match="already has feedback"):
        store.add_feedback("clf", "again", "p1")
    with store.engine.connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == db.HEAD == "0010"


def test_the_feedback_route_answers_409_to_a_second_label_unless_it_corrects(trained, tmp_path):
    from fastapi.testclient import TestClient

    from loopml.serve.app import ServeSettings, create_app

    model, model_dir = trained
    store = _store(tmp_path, model_dir)
    pid = _log(store, make(5, 13), model)[0]
    settings = ServeSettings(model="clf@production", store=store.url, artifacts=str(tmp_path / "artifacts"),
                             monitor_interval_s=0, log_durability="none")
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/feedback", json={"prediction_id": pid, "label": "pos"}).status_code == 201
        again = c.post("/v1/feedback", json={"prediction_id": pid, "label": "neg"})
        assert again.status_code == 409 and again.json()["detail"].startswith(f"prediction {pid} already has feedback")
        assert "\n" not in again.json()["detail"] and '"corrects": true' in again.json()["detail"]
        fixed = c.post("/v1/feedback", json={"prediction_id": pid, "label": "neg", "corrects": True})
        assert fixed.status_code == 201, fixed.text
        assert c.post("/v1/feedback", json={"prediction_id": pid, "label": "pos", "corrects": "yes"}).status_code == 422
    assert [(f["prediction_id"], f["label"]) for f in store.list_feedback("clf")] == [(None, "pos"), (pid, "neg")]
