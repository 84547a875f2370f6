"""The loop over many turns: split records, bad feedback, one retrain at a time, compare-and-set promotion."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from test_loop import RECODED, _feed, _store, make

import loopml
from loopml.cli import main
from loopml.errors import LoopmlError
from loopml.loop import retrain as retrain_module
from loopml.loop.policy import load_policy
from loopml.loop.retrain import retrain

ROOT = Path(__file__).resolve().parents[1]
# holdout newest: these tests' feedback draws were chosen with the newest 30% held back; the small candidate network
# learns the new codes from 210 rows and its quality swings with which ones (0.73-0.92 on fresh rows, either holdout)
POLICY = {"data": {"holdout_fraction": 0.3, "min_holdout": 30, "feedback_weight": 3,
                   "holdout": "newest"},
          "gate": {"metric": "accuracy", "margin": 0.01, "max_test_regression": 0.02}, "train": {"training": {"epochs": 12}}}
CODES = {0: None, 1: RECODED, 2: ("Q1", "Q2", "Q3"), 3: ("Z1", "Z2", "Z3")}


@pytest.fixture
def champion_dir(recoded_champion):
    return recoded_champion[1]


def _policy_file(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({**POLICY, **overrides}))
    return path


# -- item: the loop runs any number of turns ------------------------------------------------------
def test_three_turns_in_a_row_each_gated_and_promoted(champion_dir, tmp_path, capsys):
    store = _store(tmp_path, champion_dir)
    policy = _policy_file(tmp_path)
    for turn in (1, 2, 3):
        _feed(store, make(300, 10 + turn, CODES[turn]))
        assert main(["retrain", "clf", "--store", store._url, "--policy", str(policy)]) == 0
        out = capsys.readouterr().out
        assert f"candidate clf:{turn + 1} PROMOTED" in out, out
        assert store.resolve("clf@production")["version"] == turn + 1
        assert (Path(store.resolve("clf@production")["path"]) / "report.html").is_file()  # retrained versions have a report
    decisions = store.list_gate_decisions("clf")
    gates = [d for d in decisions if d["candidate_version"] is not None and (d["kind"] or "retrain") == "retrain"]
    assert [(d["candidate_version"], d["champion_version"], d["promoted"]) for d in gates] == \
        [(2, 1, True), (3, 2, True), (4, 3, True)]
    # each promotion is watched; the next turn's promotion ends that watch, with its own row
    ended = [d["reason"] for d in decisions if d["kind"] == "rollout"]
    assert len(ended) == 2 and all("ended early" in r for r in ended), ended
    # turn 3 trained on the file's rows and on all feedback (each row once) but what it held back
    record = loopml.load("clf:4", store=store._url).info["splits"]
    fed = [i for p in record["train"] if "feedback" in p for i in p["feedback"]]
    held_back = store.get_version("clf", 4)["lineage"]["held_back_ids"]
    assert len([p for p in record["train"] if "feedback" in p]) == 3 and len(set(fed)) == len(fed)
    assert sorted(fed + held_back) == sorted(f["id"] for f in store.list_feedback("clf"))
    assert record["test"] == loopml.load(champion_dir).info["splits"]["test"]  # one test set for every turn
    latest = loopml.load("clf@production", store=store._url)
    for turn in (1, 2, 3):  # the last model still knows every coding it was taught
        assert latest.evaluate(make(300, 90 + turn, CODES[turn]))["accuracy"] > 0.85


# -- item: the gate scores the champion's real test rows ------------------------------------------
def test_gate_uses_the_champions_test_file_and_refuses_when_it_changed(tmp_path, capsys):
    train, val, test = tmp_path / "train.csv", tmp_path / "val.csv", tmp_path / "test.csv"
    make(700, 0).to_csv(train, index=False)
    make(150, 1).to_csv(val, index=False)
    make(200, 2).to_csv(test, index=False)
    model = loopml.Model(target="label", training={"epochs": 10}).fit(train, validation=val, test=test,
                                                                        progress=False, cache_dir=False)
    record = model.info["splits"]
    assert record["test"][0]["source"] == str(test.resolve()) and record["test"][0]["rows"]["count"] == 200
    assert record["validation"][0]["source"] == str(val.resolve())
    store = _store(tmp_path, model.save(tmp_path / "champion"))
    _feed(store, make(300, 3, CODES[1]))
    decision = retrain(store, "clf", load_policy(POLICY))
    numbers = decision["numbers"]
    assert numbers["test_rows"] == 200
    assert numbers["champion_test"] == pytest.approx(model.evaluate(test)["accuracy"])
    frame = pd.read_csv(test)  # one label flipped: the rows behind the champion's test score changed
    frame.loc[5, "label"] = "pos" if frame.loc[5, "label"] == "neg" else "neg"
    frame.to_csv(test, index=False)
    store.promote("clf", 1, reason="back to the hand-trained champion")
    versions = len(store.list_versions("clf"))
    with pytest.raises(LoopmlError, match=r"champion's test rows in .*test\.csv changed since it was trained"):
        retrain(store, "clf", load_policy(POLICY))
    assert main(["retrain", "clf", "--store", store._url]) == 2
    err = capsys.readouterr().err + capsys.readouterr().out
    assert "changed since it was trained" in err and "Traceback" not in err
    assert len(store.list_versions("clf")) == versions  # nothing registered
    assert store.list_gate_decisions("clf")[-1]["reason"].startswith("failed: the champion's test rows")


# -- item: bad feedback rows are skipped and counted ----------------------------------------------
def test_bad_feedback_rows_are_skipped_counted_and_never_stop_a_retrain(champion_dir, tmp_path, store_url, capsys):
    store = _store(tmp_path, champion_dir, store_url)
    good = make(300, 4, CODES[1])
    _feed(store, good.iloc[:150])
    row = good.iloc[0].drop("label").to_dict()
    store.add_feedback("clf", "pos", inputs={**row, "kind": "K\ud800"})  # a lone surrogate
    store.add_feedback("clf", "pos", inputs={**row, "a": 1e308})
    store.add_feedback("clf", "neg", inputs={})
    store.add_feedback("clf", "neg", inputs={"unrelated": 1})
    store.add_feedback("clf", "neg", inputs={**row, "a": "old"})
    store.add_feedback("clf", None, inputs=row)
    store.add_feedback("clf", {"nested": 1}, inputs=row)
    store.add_feedback("clf", "maybe", inputs=row)  # not a class of the champion
    store.add_feedback("clf", "pos", prediction_id="f" * 32)  # its prediction was never logged
    _feed(store, good.iloc[150:])
    assert main(["retrain", "clf", "--store", store._url, "--policy", str(_policy_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "skipped 9 feedback rows it cannot use" in out and "candidate clf:2" in out, out
    numbers = store.list_gate_decisions("clf")[-1]["numbers"]
    assert numbers["feedback_skipped_total"] == 9 and numbers["feedback_rows"] == 300
    assert numbers["feedback_skipped"]["no inputs"] == 2


def test_a_failed_retrain_leaves_no_undecided_version(champion_dir, tmp_path, monkeypatch):
    store = _store(tmp_path, champion_dir)
    _feed(store, make(150, 5, CODES[1]))

    def broken_gate(*args, **kwargs):
        raise RuntimeError("the gate broke")

    monkeypatch.setattr(retrain_module, "gate", broken_gate)
    with pytest.raises(RuntimeError, match="the gate broke"):
        retrain(store, "clf", load_policy({**POLICY, "train": {"training": {"epochs": 2}}}))
    assert [v["version"] for v in store.list_versions("clf")] == [1]
    assert store.list_gate_decisions("clf")[-1]["reason"] == "failed: RuntimeError: the gate broke"
    assert store.lock_holder("clf") is None  # and the lock was released


# -- item: one retrain at a time, compare-and-set promotion ---------------------------------------
def test_two_concurrent_retrain_processes_promote_exactly_once(champion_dir, tmp_path, store_url):
    store = _store(tmp_path, champion_dir, store_url)
    _feed(store, make(300, 6, CODES[1]))
    policy = _policy_file(tmp_path, train={"training": {"epochs": 6}})
    env = {**os.environ, "LOOPML_ARTIFACTS": str(tmp_path / "artifacts")}
    command = [sys.executable, "-m", "loopml", "retrain", "clf", "--store", store_url, "--policy", str(policy)]
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    promotions = [e for e in store.alias_history("clf", "production") if e["actor"] == "loopml retrain"]
    assert len(promotions) == 1, outputs
    winner = [o for o in outputs if "PROMOTED" in o]
    loser = [o for o in outputs if "PROMOTED" not in o]
    assert len(winner) == 1 and len(loser) == 1, outputs
    assert "another retrain of 'clf' is running" in loser[0] or "champion moved" in loser[0], loser[0]
    reasons = [d["reason"] for d in store.list_gate_decisions("clf")]
    assert sum("another retrain" in r or "champion moved" in r for r in reasons) == 1, reasons


def test_promotion_is_refused_when_the_champion_moved_during_the_gate(champion_dir, tmp_path, store_url, monkeypatch):
    store = _store(tmp_path, champion_dir, store_url)
    store.register("clf", path=champion_dir, description="a second, hand-promoted version")
    _feed(store, make(300, 7, CODES[1]))
    real_gate = retrain_module.gate

    def gate_while_someone_promotes(*args, **kwargs):
        result = real_gate(*args, **kwargs)
        store.promote("clf", 2, reason="promoted by hand meanwhile")
        return result

    monkeypatch.setattr(retrain_module, "gate", gate_while_someone_promotes)
    decision = retrain(store, "clf", load_policy(POLICY))
    assert decision["promoted"] is False and decision["reason"].startswith("champion moved: clf@production points at "
                                                                           "version 2 now, not the gated version 1")
    assert store.resolve("clf@production")["version"] == 2
    last = store.list_gate_decisions("clf")[-1]
    assert (last["candidate_version"], last["champion_version"], last["promoted"]) == (3, 1, False)


def test_the_lock_survives_a_holder_killed_with_sigkill(champion_dir, tmp_path):
    store = _store(tmp_path, champion_dir)
    _feed(store, make(300, 8, CODES[1]))
    pause = tmp_path / "paused"
    env = {**os.environ, "LOOPML_ARTIFACTS": str(tmp_path / "artifacts"), "LOOPML_PAUSE_AT": "retrain.before_decide",
           "LOOPML_PAUSE_FILE": str(pause)}
    policy = _policy_file(tmp_path, train={"training": {"epochs": 2}})
    holder = subprocess.Popen([sys.executable, "-m", "loopml", "retrain", "clf", "--store", store._url, "--policy",
                               str(policy)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not pause.exists() and holder.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert pause.exists(), "the holder never reached the pause point"
        busy = retrain(store, "clf", load_policy(POLICY))
        assert busy["locked"] and "another retrain of 'clf' is running" in busy["reason"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert [v["version"] for v in store.list_versions("clf")] == [1]  # killed before deciding: nothing registered
    decision = retrain(store, "clf", load_policy({**POLICY, "train": {"training": {"epochs": 6}}}))  # not blocked
    assert decision["candidate_version"] == 2 and decision["promoted"], decision["reason"]


def test_lock_rows_expire_and_belong_to_their_owner(champion_dir, tmp_path, store_url):
    from loopml.registry.gating import LockHeld

    store = _store(tmp_path, champion_dir, store_url)
    token = store.acquire_lock("clf", ttl=60)
    with pytest.raises(LockHeld, match="another retrain of 'clf' is running"):
        store.acquire_lock("clf")
    store.release_lock("clf", "not-the-owner")
    assert store.lock_holder("clf")["owner"] == token
    with store.writer.begin() as c:  # a holder on another host that stopped renewing
        c.execute(sa.text("UPDATE model_locks SET host = 'elsewhere', expires_at = :t"), {"t": time.time() - 1})
    second = store.acquire_lock("clf")
    assert second != token and store.renew_lock("clf", token) is False and store.renew_lock("clf", second)
    with store.writer.begin() as c:  # a live-looking lock on another host is respected until it expires
        c.execute(sa.text("UPDATE model_locks SET host = 'elsewhere', expires_at = :t"), {"t": time.time() + 60})
    with pytest.raises(LockHeld):
        store.acquire_lock("clf")
    with pytest.raises(LoopmlError, match="no model named 'other'"):
        store.acquire_lock("other")


def test_split_rows_round_trip_and_fingerprints_see_values_not_order():
    from loopml.data.split import decode_rows, encode_rows, rows_fingerprint

    for positions in ([], [0], [3, 5, 9], list(range(0, 100_000, 3))):
        assert decode_rows(encode_rows(positions)).tolist() == positions
    df = make(50, 9)
    columns = ["a", "b", "kind", "label"]
    assert rows_fingerprint(df, columns) == rows_fingerprint(df.iloc[::-1].assign(extra=1), columns)
    assert rows_fingerprint(df, columns) != rows_fingerprint(df.assign(a=df.a.round(3)), columns)
    assert rows_fingerprint(df.assign(n=[1] * 50), [*columns, "n"]) == \
        rows_fingerprint(df.assign(n=[1.0] * 50), [*columns, "n"])  # 1 read as int or float: the same value


def test_migration_0006_adds_and_removes_the_lock_table(store_url):
    from alembic import command
    from alembic.config import Config

    from loopml.registry.db import MIGRATIONS, create_engine, migrate

    engine = create_engine(store_url)
    migrate(engine)
    assert sa.inspect(engine).has_table("model_locks")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0005")
    assert not sa.inspect(engine).has_table("model_locks")
    migrate(engine)
    assert sa.inspect(engine).has_table("model_locks")
    engine.dispose()


def test_a_model_without_a_split_record_is_split_again_and_gets_one(champion_dir, tmp_path):
    """Model directories from before split records: the training file is split again, as before."""
    from loopml.loop.training_data import champion_splits

    model = loopml.load(champion_dir)
    record = model.info["splits"]
    model.info["splits"] = None
    with pytest.raises(LoopmlError, match="cannot find the champion's training data"):
        champion_splits(None, "clf", model, str(tmp_path / "gone.csv"))
    frames, rebuilt = champion_splits(None, "clf", model, None)
    assert rebuilt == record and [len(frames[s]) for s in ("train", "validation", "test")] == \
        [p[0]["rows"]["count"] for p in (record["train"], record["validation"], record["test"])]
    # an old retrained model (trained on a frame with the retrain's split column): its ancestor's split
    model.config = model.config.model_copy(update={"split": model.config.split.model_copy(
        update={"column": "__loopml_split__"})})
    assert champion_splits(None, "clf", model, None)[1] == record


def test_a_moved_training_file_is_found_through_the_policy(champion_dir, tmp_path):
    from loopml.loop.training_data import champion_splits

    model = loopml.load(champion_dir)
    source = Path(model.info["splits"]["train"][0]["source"])
    moved = tmp_path / "moved.csv"
    moved.write_bytes(source.read_bytes())
    model.info["splits"] = {s: [{**p, "source": str(tmp_path / "was-here.csv")} for p in parts]
                            for s, parts in model.info["splits"].items()}
    with pytest.raises(LoopmlError, match=r"cannot find the champion's train data .*set data.training_data"):
        champion_splits(None, "clf", model, None)
    frames, _ = champion_splits(None, "clf", model, str(moved))
    assert len(frames["test"]) == model.info["splits"]["test"][0]["rows"]["count"]


def test_the_lock_keeper_renews_and_notices_a_takeover(champion_dir, tmp_path):
    from loopml.registry.gating import LockKeeper

    store = _store(tmp_path, champion_dir)
    with LockKeeper(store, "clf", ttl=0.6) as keeper:
        first = store.lock_holder("clf")["expires_at"]
        time.sleep(0.9)
        assert store.lock_holder("clf")["expires_at"] > first and not keeper.lost  # renewed, still ours
        with store.writer.begin() as c:
            c.execute(sa.text("UPDATE model_locks SET owner = 'someone-else'"))
        deadline = time.time() + 10
        while not keeper.lost and time.time() < deadline:
            time.sleep(0.05)
        assert keeper.lost
    assert store.lock_holder("clf")["owner"] == "someone-else"  # release never deletes another owner's lock


def test_a_champion_split_by_its_own_column_is_rebuilt_without_it(tmp_path):
    from loopml.loop.training_data import champion_splits

    data = make(300, 11).assign(fold=["train"] * 200 + ["validation"] * 40 + ["test"] * 60)
    data.to_csv(tmp_path / "folds.csv", index=False)
    model = loopml.Model(target="label", split={"column": "fold"}, training={"epochs": 2}).fit(
        tmp_path / "folds.csv", progress=False, cache_dir=False)
    frames, _ = champion_splits(None, "clf", model, None)
    assert [len(frames[s]) for s in ("train", "validation", "test")] == [200, 40, 60]
    assert "fold" not in frames["train"].columns
    assert frames["test"]["a"].tolist() == data["a"].iloc[240:].tolist()  # exactly the rows marked test


# -- item: image models retrain with feedback from the server's media root -------------------------
def _pngs(folder: Path, n: int, seed: int, prefix: str = "") -> None:
    """``folder/<dark|light>/<prefix><i>.png``: 8x8 images, learnable by brightness."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, level in (("dark", 40), ("light", 210)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.clip(level + rng.normal(0, 20, (8, 8, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(folder / label / f"{prefix}{i}.png")


def _image_store(tmp_path: Path, source, **config) -> tuple[object, int]:
    """img:1 in production, trained on ``source``; (store, its training rows)."""
    from loopml.registry import Store

    model = loopml.Model(target="label", training={"epochs": 2}, **config).fit(source, progress=False, cache_dir=False)
    store = Store(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    store.register("img", path=model.save(tmp_path / "champion"))
    store.promote("img", 1)
    return store, model.info["data_report"]["sizes"]["train"]


def _image_policy(tmp_path: Path, **data) -> Path:
    return _policy_file(tmp_path, data={"min_holdout": 5, "holdout_fraction": 0.3, **data},
                        gate={"margin": 0.0}, train={"training": {"epochs": 2}})


def _feed_images(store, n: int) -> None:
    for i in range(n):  # the classes alternate: the held-back window holds both
        label = ("dark", "light")[i % 2]
        store.add_feedback("img", label, inputs={"image": f"incoming/{label}/fb{i // 2}.png"})


def test_an_image_model_retrains_on_feedback_from_the_servers_media_root(tmp_path, monkeypatch, capsys):
    _pngs(tmp_path / "data", 12, 0)
    _pngs(tmp_path / "served" / "incoming", 20, 1, prefix="fb")  # other names: nothing resolves by accident
    store, champion_rows = _image_store(tmp_path, tmp_path / "data")
    _feed_images(store, 40)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # neither the data folder nor the media root
    policy = _image_policy(tmp_path)
    assert main(["retrain", "img", "--store", store._url, "--policy", str(policy), "--media-root",
                 str(tmp_path / "served")]) == 0
    assert "candidate img:2" in capsys.readouterr().out
    learned = 40 - round(40 * 0.3)
    candidate = loopml.load("img:2", store=store._url)
    assert candidate.info["data_report"]["sizes"]["train"] == champion_rows + learned
    assert store.resolve("img:2")["lineage"]["training_rows"] == champion_rows + learned
    # the next turn rebuilds img:2's feedback part from the store, the media root now from the policy
    store.promote("img", 2)
    policy = _image_policy(tmp_path, media_root=str(tmp_path / "served"))
    assert main(["retrain", "img", "--store", store._url, "--policy", str(policy)]) == 0
    assert "no candidate: not enough feedback" in capsys.readouterr().out


def test_image_feedback_outside_the_media_root_is_skipped_counted_and_never_read(tmp_path, monkeypatch, capsys):
    _pngs(tmp_path / "data", 12, 0)
    _pngs(tmp_path / "served" / "incoming", 20, 1, prefix="fb")
    table = tmp_path / "tables" / "train.csv"  # paths relative to data.media_root, not to the table's folder
    table.parent.mkdir()
    pd.DataFrame([{"image": f"{c}/{i}.png", "label": c} for c in ("dark", "light") for i in range(12)]).to_csv(table, index=False)
    store, champion_rows = _image_store(tmp_path, table, data={"media_root": str(tmp_path / "data")})
    _feed_images(store, 40)
    secret = tmp_path / "data" / "dark" / "0.png"
    (tmp_path / "served" / "link.png").symlink_to(secret)
    for path in (str(secret), "../data/dark/0.png", "link.png", "incoming/dark/missing.png"):
        store.add_feedback("img", "dark", inputs={"image": path})
    monkeypatch.chdir(tmp_path / "tables")
    assert main(["retrain", "img", "--store", store._url, "--policy", str(_image_policy(tmp_path)), "--media-root",
                 str(tmp_path / "served")]) == 0
    out = capsys.readouterr().out
    assert "skipped 4 feedback rows it cannot use: a path in 'image' that is not a file inside the media root (4)\n" \
        in out and "candidate img:2" in out, out
    numbers = store.list_gate_decisions("img")[-1]["numbers"]
    assert numbers["feedback_skipped_total"] == 4 and numbers["feedback_rows"] == 40
    assert loopml.load("img:2", store=store._url).config.data.media_root == str(tmp_path / "data")


def test_a_relative_media_root_is_read_from_where_the_champion_trained_not_the_retrains_cwd(
        tmp_path, monkeypatch, capsys):
    _pngs(tmp_path / "data", 12, 0)
    _pngs(tmp_path / "served" / "incoming", 20, 1, prefix="fb")
    table = tmp_path / "train.csv"
    pd.DataFrame([{"image": f"{c}/{i}.png", "label": c} for c in ("dark", "light") for i in range(12)]).to_csv(table, index=False)
    monkeypatch.chdir(tmp_path)
    store, champion_rows = _image_store(tmp_path, table, data={"media_root": "data"})  # relative to tmp_path
    _feed_images(store, 40)
    elsewhere = tmp_path / "elsewhere"
    _pngs(elsewhere / "swap", 12, 2)  # a decoy of the same names under the retrain's cwd, classes swapped
    (elsewhere / "data").mkdir()
    (elsewhere / "swap" / "dark").rename(elsewhere / "data" / "light")
    (elsewhere / "swap" / "light").rename(elsewhere / "data" / "dark")
    monkeypatch.chdir(elsewhere)
    import loopml.data.read as read_module

    original, seen = read_module.read_table, []

    def spy(source, cfg=None, *args, **kwargs):
        if isinstance(source, (str, Path)):
            seen.append(cfg.media_root)
        return original(source, cfg, *args, **kwargs)

    monkeypatch.setattr(read_module, "read_table", spy)
    assert main(["retrain", "img", "--store", store._url, "--policy", str(_image_policy(tmp_path)), "--media-root",
                 str(tmp_path / "served")]) == 0
    assert "candidate img:2" in capsys.readouterr().out
    assert seen and set(seen) == {str(tmp_path / "data")}, seen  # the champion's folder, never ./data
    # and the gate's test rows are the champion's real ones: the same score as on its own test split
    champion = loopml.load("img:1", store=store._url)
    assert store.list_gate_decisions("img")[-1]["numbers"]["champion_test"] == pytest.approx(
        champion.metrics["test"]["accuracy"])


def test_the_servers_loop_worker_reads_feedback_media_where_the_server_does(tmp_path, monkeypatch):
    """Without --media-root the server reads request paths from its working directory; its worker must too,
    not the champion's data.media_root or the policy's (the feedback's files were checked against the cwd)."""
    from loopml.loop import worker_cli

    commands = []
    monkeypatch.setattr(worker_cli.subprocess, "Popen", lambda command, **kwargs: commands.append(command))
    served = tmp_path / "served"
    served.mkdir()
    monkeypatch.chdir(served)
    worker_cli.start_worker("img@production", tmp_path / "policy.yaml", None, None)
    worker_cli.start_worker("img@production", tmp_path / "policy.yaml", None, None, media_root=str(tmp_path))
    assert [c[c.index("--media-root") + 1] for c in commands] == [str(served.resolve()), str(tmp_path.resolve())]


def test_a_learned_feedback_file_removed_or_replaced_later_is_skipped_not_a_stuck_loop(tmp_path, monkeypatch, capsys):
    """Whoever can write the media root (the folder clients upload to) replaced one file an earlier turn learned
    from: every later retrain refused ("1 of the 28 feedback rows ... cannot rebuild"), so the loop stopped."""
    _pngs(tmp_path / "data", 12, 0)
    _pngs(tmp_path / "served" / "incoming", 20, 1, prefix="fb")
    store, champion_rows = _image_store(tmp_path, tmp_path / "data")
    _feed_images(store, 40)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    policy = _image_policy(tmp_path, media_root=str(tmp_path / "served"))
    assert main(["retrain", "img", "--store", store._url, "--policy", str(policy)]) == 0
    assert "candidate img:2" in capsys.readouterr().out
    store.promote("img", 2)
    learned = loopml.load("img:2", store=store._url).info["splits"]["train"][-1]["feedback"]
    first = next(f for f in store.list_feedback("img") if int(f["id"]) == learned[0])
    (tmp_path / "served" / first["inputs"]["image"]).write_text("not an image any more")
    second = next(f for f in store.list_feedback("img") if int(f["id"]) == learned[1])
    (tmp_path / "served" / second["inputs"]["image"]).unlink()
    _pngs(tmp_path / "served" / "incoming", 20, 3, prefix="new")
    for i in range(40):
        label = ("dark", "light")[i % 2]
        store.add_feedback("img", label, inputs={"image": f"incoming/{label}/new{i // 2}.png"})
    assert main(["retrain", "img", "--store", store._url, "--policy", str(policy)]) == 0
    out = capsys.readouterr().out
    assert "candidate img:3" in out and "learned earlier, a file in 'image' that cannot be read as image (1)" in out \
        and "learned earlier, a path in 'image' that is not a file inside the media root (1)" in out, out
    record = loopml.load("img:3", store=store._url).info["splits"]["train"]
    kept = {int(i) for part in record for i in part.get("feedback", [])}
    assert learned[0] not in kept and learned[1] not in kept and set(learned[2:]) <= kept
    assert store.list_gate_decisions("img")[-1]["numbers"]["feedback_skipped_total"] == 2
    # a wrong media root is still an error, not every learned row quietly dropped
    (tmp_path / "empty").mkdir()
    store.promote("img", 3)
    assert main(["retrain", "img", "--store", store._url, "--policy", str(policy), "--media-root",
                 str(tmp_path / "empty")]) == 2
    assert "give the server's --media-root" in capsys.readouterr().err


def _lightgbm_store(tmp_path, rows: int, trees: int):
    """A store with a small LightGBM champion (``rows`` of ``make``) as clf:1 in production: fast retrains."""
    data = tmp_path / "train.csv"
    make(rows, 0).to_csv(data, index=False)
    champion = loopml.Model(target="label", learner={"type": "lightgbm", "n_estimators": trees}).fit(
        data, progress=False, cache_dir=False)
    return _store(tmp_path, champion.save(tmp_path / "champion"))


def test_a_corrected_label_stays_corrected_in_later_turns(tmp_path):
    """An input labelled, then relabelled: turn 1 learns the correction; turn 2 must not bring the stale label back
    (the learned correction is left out of turn 2's new feedback, so the stale one looked unique there) nor count
    it as a relabel of the correction."""
    store = _lightgbm_store(tmp_path, 600, 30)
    traffic = make(100, 3)
    _feed(store, traffic)  # ids 1-100
    flipped = traffic.iloc[:10].assign(label=traffic["label"].iloc[:10].map({"pos": "neg", "neg": "pos"}))
    _feed(store, flipped)  # ids 101-110: the corrections, the latest labels
    policy = load_policy({"data": {"holdout_fraction": 0.3, "min_holdout": 5},
                          "gate": {"margin": 0.0, "significance": 0.999, "max_test_regression": 1.0}})
    first = retrain(store, "clf", policy)
    if not first["promoted"]:
        store.promote("clf", first["candidate_version"], reason="the test moves on to turn 2")
    turn1 = store.get_version("clf", first["candidate_version"])["lineage"]
    assert not set(turn1["feedback_ids"] + turn1["held_back_ids"]) & set(range(1, 11)), turn1
    _feed(store, make(40, 4))  # turn 2's own new labels
    second = retrain(store, "clf", policy)
    turn2 = store.get_version("clf", second["candidate_version"])["lineage"]
    assert not set(turn2["feedback_ids"] + turn2["held_back_ids"]) & set(range(1, 11)), turn2
    assert second["numbers"]["feedback_relabelled"] == 0, second["numbers"]
    assert set(turn1["held_back_ids"]) <= set(turn2["feedback_ids"] + turn2["held_back_ids"])


def test_a_holdout_share_that_leaves_nothing_to_learn_registers_no_candidate(tmp_path):
    store = _lightgbm_store(tmp_path, 300, 10)
    _feed(store, make(40, 3))
    decision = retrain(store, "clf", load_policy({"data": {"holdout_fraction": 0.99, "min_holdout": 1}}))
    assert decision["candidate_version"] is None and "none left to learn from" in decision["reason"], decision
    assert [v["version"] for v in store.list_versions("clf")] == [1]


def test_a_gate_window_of_one_class_scores_without_warnings():
    """A few held-back labels can all be one class: the metrics stay defined and print nothing on the CLI."""
    import warnings

    import numpy as np

    from loopml.evaluate.metrics import classification_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = classification_metrics(np.array([0]), np.array([[0.9, 0.1]]), ["neg", "pos"])
        both = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["neg", "pos"])
    assert (one["accuracy"], one["mcc"], both["balanced_accuracy"]) == (1.0, 0.0, 0.5)


def test_a_roc_auc_gate_on_a_one_class_window_is_a_recorded_rejection_not_a_failure(tmp_path):
    store = _lightgbm_store(tmp_path, 300, 10)
    _feed(store, make(60, 3).assign(label="pos"))
    decision = retrain(store, "clf", load_policy({"data": {"min_holdout": 5}, "gate": {"metric": "roc_auc"}}))
    assert decision["promoted"] is False and "roc_auc is undefined on the held-back feedback" in decision["reason"]
    assert store.list_gate_decisions("clf")[-1]["reason"] == decision["reason"]


def test_minus_zero_and_zero_are_one_input_for_the_latest_label_rule():
    from loopml.loop.feedback_rows import input_keys

    assert len(set(input_keys(pd.DataFrame({"x": [0.0, -0.0, 0]}), ["x"]))) == 1


def test_a_rejection_names_every_check_the_candidate_failed(tmp_path):
    """A candidate trained on shuffled labels loses on the held-back window and on the original test set: the reason
    names both, not only the first."""
    import numpy as np

    train = make(400, 0)
    champion = loopml.Model(target="label", learner={"type": "lightgbm", "n_estimators": 20}).fit(
        train, progress=False, cache_dir=False)
    shuffled = train.assign(label=np.random.default_rng(1).permutation(train["label"].to_numpy()))
    candidate = loopml.Model(target="label", learner={"type": "lightgbm", "n_estimators": 20}).fit(
        shuffled, progress=False, cache_dir=False)
    promoted, why, _ = retrain_module.gate(champion, candidate, make(150, 5), make(300, 6), load_policy({}))
    assert not promoted and "< margin" in why and "; and accuracy on the original test set falls" in why, why
