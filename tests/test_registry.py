"""The registry on a real SQLite file and on the real PostgreSQL server (LOOPML_TEST_POSTGRES_URL)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import loopml
from loopml.cli import main
from loopml.errors import LoopmlError
from loopml.registry import Store
from loopml.registry.db import HEAD, create_engine, current_revision, migrate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two small trained model directories (different configs)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": np.where(x[:, 0] + x[:, 1] > 0, "p", "n")})
    root = tmp_path_factory.mktemp("models")
    dirs = []
    for i, epochs in enumerate((3, 5)):
        model = loopml.Model(target="y", training={"epochs": epochs}).fit(df, progress=False, cache_dir=False)
        dirs.append(model.save(root / f"m{i}"))
    return dirs, df


def test_versions_aliases_rollback_and_audit(store_url, model_dirs, tmp_path):
    (m0, m1), df = model_dirs
    store = Store(store_url, str(tmp_path / "artifacts"))
    v1 = store.register("churn", path=m0, description="first")
    v2 = store.register("churn", path=m1, parent_version=1)
    assert (v1["version"], v2["version"]) == (1, 2) and v2["parent_version"] == 1
    assert v1["metrics"]["test"]["accuracy"] > 0.5 and v1["data_fingerprint"] and v1["config_hash"]
    store.promote("churn", 1, reason="first good one")
    store.promote("churn", 2, reason="better")
    store.promote("churn", 1, alias="staging")
    assert store.resolve("churn@production")["version"] == 2
    assert store.rollback("churn", reason="regression")["to_version"] == 1
    assert store.resolve("churn@production")["version"] == 1
    with pytest.raises(LoopmlError, match="no earlier version"):
        store.rollback("churn")
    history = store.alias_history("churn", "production")
    assert [(e["action"], e["from_version"], e["to_version"]) for e in history] == [
        ("rollback", 2, 1), ("promote", 1, 2), ("promote", None, 1)]
    assert history[0]["reason"] == "regression" and "@" in history[0]["actor"] and history[0]["at"] > 0
    assert store.resolve("churn:2")["path"].is_dir() and store.resolve("churn:latest")["version"] == 2
    diff = store.diff("churn", 1, 2)
    assert diff["config"]["training.epochs"] == (3, 5) and diff["lineage"]["parent_version"] == (None, 1)
    # a registered version loads through loopml.load, in this process or any other
    loaded = loopml.load("churn@staging", store=store_url)
    assert loaded.info["registry"]["version"] == 1
    assert (loaded.predict(df) == loopml.load(m0).predict(df)).all()


def test_bad_references_and_names_are_clear_errors(store_url, model_dirs, tmp_path):
    (m0, _), _ = model_dirs
    store = Store(store_url, str(tmp_path / "artifacts"))
    store.register("churn", path=m0)
    for ref, message in (("chrun@production", "did you mean 'churn'"), ("churn@prod", "no alias 'prod'"),
                         ("churn:7", "no version 7"), ("not a ref", "not NAME@alias")):
        with pytest.raises(LoopmlError, match=message):
            store.resolve(ref)
    for bad in ("../etc", "a/b", "", "x" * 200):
        with pytest.raises(LoopmlError, match="not valid"):
            store.register(bad, path=m0)


def test_artifact_paths_are_confined_to_the_root(store_url, model_dirs, tmp_path):
    (m0, _), _ = model_dirs
    store = Store(store_url, str(tmp_path / "artifacts"))
    store.register("churn", path=m0)
    (tmp_path / "secret").mkdir()
    with store.engine.begin() as c:  # a tampered row pointing out of the root
        c.execute(sa.text("UPDATE model_versions SET artifact_uri = '../secret' WHERE version = 1"))
    with pytest.raises(LoopmlError, match="outside the artifact root"):
        store.resolve("churn:1")
    with pytest.raises(LoopmlError, match="outside the artifact root"):
        store.artifacts.fetch("models/../../secret")
    with pytest.raises(LoopmlError, match="outside the artifact root"):
        store.artifacts.fetch("/etc")


def test_runs_are_tracked_with_history_and_artifact(store_url, model_dirs, tmp_path):
    _, df = model_dirs
    store = Store(store_url, str(tmp_path / "artifacts"))
    model = loopml.Model(target="y", training={"epochs": 4, "early_stopping": {"patience": 0}})
    model.fit(df, progress=False, track="exp1", store=store)
    run = store.get_run(model.run_id)
    assert run["status"] == "finished" and run["experiment"] == "exp1" and run["duration"] > 0
    assert [e["epoch"] for e in run["history"]] == [0, 1, 2, 3] and "val_loss" in run["history"][0]
    assert run["params"]["training"]["epochs"] == 4 and run["code_version"] == loopml.__version__
    assert run["metrics"]["test"]["accuracy"] > 0.5 and run["artifact_uri"] is None
    model.save(tmp_path / "saved")
    assert store.get_run(model.run_id[:8])["artifact_uri"].startswith("models/")
    assert store.register("y-model", run=model.run_id)["run_id"] == model.run_id
    with pytest.raises(LoopmlError):  # bad input is refused before a run exists
        loopml.Model(target="y").fit(df.assign(y=float("nan")), progress=False, track=True, store=store)
    assert len(store.list_runs()) == 1


def test_a_run_that_crashes_or_is_interrupted_is_recorded(store_url, model_dirs, tmp_path, monkeypatch):
    from loopml.train.trainer import Trainer

    _, df = model_dirs
    store = Store(store_url, str(tmp_path / "artifacts"))
    for exc, status in ((RuntimeError("out of memory"), "failed"), (KeyboardInterrupt(), "killed")):
        def boom(self, *args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(Trainer, "fit", boom)
        with pytest.raises(type(exc)):
            loopml.Model(target="y").fit(df, progress=False, track=True, store=store)
        run = store.list_runs()[0]
        assert run["status"] == status and run["ended_at"] and (status == "killed" or "out of memory" in run["error"])


def _register_in_subprocess(store_url, artifacts, model_dir, env=None):
    code = ("import sys; from loopml.registry import Store; "
            "v = Store(sys.argv[1], sys.argv[2]).register('race', path=sys.argv[3]); print(v['version'])")
    return subprocess.Popen([sys.executable, "-c", code, store_url, str(artifacts), str(model_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def test_parallel_registrations_get_distinct_versions(store_url, model_dirs, tmp_path):
    (m0, _), _ = model_dirs
    assert Store(store_url, str(tmp_path / "artifacts")).artifacts.local  # created once, as a team's store would be
    procs = [_register_in_subprocess(store_url, tmp_path / "artifacts", m0) for _ in range(8)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    assert sorted(int(out) for out, _ in results) == list(range(1, 9))


def test_kill_9_before_commit_leaves_no_version(store_url, model_dirs, tmp_path):
    (m0, m1), _ = model_dirs
    store = Store(store_url, str(tmp_path / "artifacts"))
    store.register("race", path=m0)
    marker = tmp_path / "paused"
    proc = _register_in_subprocess(store_url, tmp_path / "artifacts", m1,
                                   {"LOOPML_PAUSE_AT": "register.before_commit", "LOOPML_PAUSE_FILE": str(marker)})
    deadline = time.time() + 60
    while not marker.exists():
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # artifact written, version row inserted, not committed
    proc.wait()
    assert [v["version"] for v in store.list_versions("race")] == [1]
    assert store.register("race", path=m1)["version"] == 2


def test_migration_from_the_first_schema_keeps_data(store_url, tmp_path, model_dirs):
    (m0, _), _ = model_dirs
    engine = create_engine(store_url)
    migrate(engine, "0001")  # a registry made by an older loopml
    assert current_revision(engine) == "0001"
    from loopml.registry.artifacts import ArtifactRoot

    uri = ArtifactRoot(str(tmp_path / "artifacts")).put_model(m0)
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO store_info VALUES ('artifact_root', :root)"), {"root": str(tmp_path / "artifacts")})
        c.execute(sa.text("INSERT INTO registered_models (name, created_at, latest_version) VALUES ('old', 1.0, 1)"))
        c.execute(sa.text("INSERT INTO model_versions (name, version, artifact_uri, created_at) VALUES ('old', 1, :u, 1.0)"),
                  {"u": uri})
        c.execute(sa.text("INSERT INTO aliases VALUES ('old', 'production', 1, 1.0)"))
    store = Store(store_url)  # opening upgrades to head
    assert current_revision(store.engine) == HEAD
    assert store.resolve("old@production")["version"] == 1
    assert store.alias_history("old", "production")[0]["actor"] == "migration 0002"
    assert store.register("old", path=m0, description="after upgrade")["version"] == 2
    store.promote("old", 2)
    assert store.rollback("old")["to_version"] == 1


def test_object_store_artifact_root_through_fsspec(model_dirs, tmp_path):
    (m0, _), df = model_dirs
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(url, "memory://loopml-test-bucket")
    v = store.register("remote", path=m0)
    assert v["artifact_uri"].startswith("models/")
    local = store.resolve("remote:1")["path"]
    assert (local / "manifest.json").is_file()
    assert (loopml.load("remote:1", store=url).predict(df) == loopml.load(m0).predict(df)).all()


def test_cli_train_register_promote_rollback(tabular, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "d.csv"
    tabular.to_csv(csv, index=False)
    args = ["train", "-d", str(csv), "-t", "label", "-q", "--epochs", "3", "--register", "sentiment"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    assert main([*args, "-o", str(tmp_path / "b"), "--seed", "5", "--experiment", "exp-b"]) == 0
    assert main(["models", "promote", "sentiment", "1", "--reason", "first"]) == 0
    assert main(["models", "promote", "sentiment", "2"]) == 0
    assert main(["models", "rollback", "sentiment", "--reason", "worse on mobile"]) == 0
    capsys.readouterr()
    assert main(["models", "show", "sentiment"]) == 0
    shown = capsys.readouterr().out
    assert "worse on mobile" in shown and "rollback" in shown
    assert main(["models", "diff", "sentiment", "1", "2"]) == 0
    diffed = capsys.readouterr().out
    assert "split.seed" in diffed
    assert re.search(r"created_at\s*│\s*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", diffed)  # a time, not an epoch float
    assert main(["runs", "list"]) == 0
    listed = capsys.readouterr().out
    assert "exp-b" in listed and "finished" in listed
    runs = Store().list_runs()
    assert main(["runs", "compare", runs[0]["id"], runs[1]["id"]]) == 0
    assert "training.seed" in capsys.readouterr().out
    assert main(["predict", "sentiment@production", "-d", str(csv), "-o", str(tmp_path / "p.csv")]) == 0
    assert main(["evaluate", "sentiment@production", "-d", str(csv)]) == 0
    assert Path("reports/sentiment-v1/report-d.html").is_file()
    assert main(["models", "promote", "sentiment", "9"]) == 2
    assert main(["models", "show", "sentimnt"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'sentiment'" in err and "Traceback" not in err
    assert json.loads(Path(tmp_path / "a" / "manifest.json").read_text())["format"] == "loopml-model"
