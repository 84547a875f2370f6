"""Issue 11, training: a real terminal, parallel runs, kill -9, resume, registered report, diff, describe, refit."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT

import loopml
from loopml.registry import Store, db

CLI = [sys.executable, "-m", "loopml"]


@pytest.fixture
def small_csv(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    n = 240
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "blue"], size=n)
    label = np.where(x1 - x2 + (color == "red") > 0.3, "pos", "neg")
    path = tmp_path / "small.csv"
    pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": label}).to_csv(path, index=False)
    return path


def _env(tmp_path: Path) -> dict:
    # the store and cache of this test (conftest sets them in os.environ), one torch thread per process
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "LOOPML_DEBUG": "1"}


def _cli(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def here(cli_here):
    """The CLI in this process (conftest ``cli_here``) with this module's LOOPML_DEBUG=1."""
    return lambda args, cwd: cli_here(args, cwd, env={"LOOPML_DEBUG": "1"})


def _run_in_pty(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Run the CLI with stdin/stdout/stderr on a pseudo-terminal, as a user at a terminal would."""
    master, slave = pty.openpty()
    env = {**_env(cwd), "TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen(CLI + args, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    proc.wait(timeout=10)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


def _wait_for(predicate, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    # wall-clock limits are sized for a CPU-starved machine (a CLI start alone can take a minute there);
    # they cost nothing while the test passes
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out waiting"
        assert proc is None or proc.poll() is None, f"process ended early: {proc.returncode}"
        time.sleep(0.05)


# -- item 1: a real terminal -------------------------------------------------------------------------
def test_train_under_a_pty_draws_progress_and_succeeds(tmp_path, small_csv):
    rc, out = _run_in_pty(["train", "-d", str(small_csv), "-t", "label", "--epochs", "2", "--no-track",
                           "-o", str(tmp_path / "m")], tmp_path)
    assert rc == 0, out
    assert "internal error" not in out
    assert "epoch 2/2" in out and "loss" in out  # the rich bar was drawn, with its fields, after reset()
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_cv_under_a_pty_succeeds(tmp_path, small_csv):
    rc, out = _run_in_pty(["cv", "-d", str(small_csv), "-t", "label", "--folds", "2", "-c", str(_epochs(tmp_path, 2)),
                           "-o", str(tmp_path / "cv")], tmp_path)
    assert rc == 0, out
    assert "epoch 2/2" in out and "fold 2/2" in out
    assert (tmp_path / "cv" / "cv.json").is_file()


def _epochs(tmp_path: Path, n: int) -> Path:
    config = tmp_path / f"epochs{n}.yaml"
    config.write_text(f"target: label\ntraining: {{epochs: {n}, early_stopping: {{patience: 0}}}}\n")
    return config


# -- item 2: parallel trainings in one folder ---------------------------------------------------------
def test_parallel_trainings_in_one_folder_get_distinct_outputs(tmp_path, small_csv):
    args = CLI + ["train", "-d", str(small_csv), "-t", "label", "--epochs", "2", "-q"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert all(rc == 0 for rc, _, _ in results), results
    outputs = sorted(p for p in (tmp_path / "models").iterdir())
    assert len(outputs) == 3 and all((p / "model.safetensors").is_file() for p in outputs), outputs
    assert not any(p.name.endswith(".partial") for p in outputs)  # every checkpoint folder went with its run
    runs = Store().list_runs()
    assert sorted(r["status"] for r in runs) == ["finished"] * 3


def test_same_explicit_output_twice_is_refused_before_training(tmp_path, small_csv, here):
    out = tmp_path / "shared"
    args = ["train", "-d", str(small_csv), "-c", str(_epochs(tmp_path, 400)), "-q", "-o", str(out)]
    first = subprocess.Popen(CLI + args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (tmp_path / "shared.partial" / "last.safetensors").exists(), proc=first)
        second = _cli(args, tmp_path)
        assert second.returncode == 2, second.stderr
        assert "is being written by another training" in second.stderr and f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert len(Store().list_runs()) == 1  # the refused one never started a run
        assert first.poll() is None  # and did not disturb the live one
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the first one died: its folder is an interrupted run now, which a new training may take over
    third = here(["train", "-d", str(small_csv), "-c", str(_epochs(tmp_path, 1)), "-q", "-o", str(out)], tmp_path)
    assert third.returncode == 0, third.stderr
    assert "holds an interrupted run" in third.stderr and (out / "model.safetensors").is_file()


def test_resume_without_output_and_overwrite_of_a_foreign_folder_are_refused_up_front(tmp_path, small_csv, here):
    resume = here(["train", "-d", str(small_csv), "-t", "label", "--resume"], tmp_path)
    assert resume.returncode == 2 and "--resume needs --output" in resume.stderr
    (tmp_path / "notamodel").mkdir()
    foreign = here(["train", "-d", str(small_csv), "-t", "label", "-o", "notamodel", "--overwrite"], tmp_path)
    assert foreign.returncode == 2 and "not a loopml model directory" in foreign.stderr
    assert not Store().list_runs()  # refused before any run was recorded


def test_default_output_names_are_fresh_and_safe(tmp_path):
    from loopml.train.workdir import claim_output

    claims = [claim_output(None, "../odd/target name", root=tmp_path / "models") for _ in range(5)]
    names = {c.output.name for c in claims}
    assert len(names) == 5 and all(n.startswith("odd_target_name-") for n in names)
    assert all(c.output.parent == tmp_path / "models" and c.checkpoints.is_dir() for c in claims)
    for c in reversed(claims):  # the first one made the folder
        c.release(keep_checkpoints=False)
    assert not (tmp_path / "models").exists()  # nothing written: nothing left behind


# -- item 3: kill -9 -------------------------------------------------------------------------------------
def test_a_run_killed_with_sigkill_is_reported_killed(tmp_path, small_csv, here):
    store = Store()
    args = ["train", "-d", str(small_csv), "-c", str(_epochs(tmp_path, 400)), "-q", "-o", str(tmp_path / "m")]
    proc = subprocess.Popen(CLI + args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (tmp_path / "m.partial" / "last.safetensors").exists(), proc=proc)
        assert [r["status"] for r in store.list_runs()] == ["running"]  # alive: left alone
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    other_host = _fake_running_run(store, host=f"elsewhere-{uuid.uuid4().hex[:6]}", pid=proc.pid)
    runs = {r["id"]: r for r in store.list_runs()}
    killed = next(r for r in runs.values() if r["id"] != other_host)
    assert killed["status"] == "killed" and killed["ended_at"] is not None
    assert f"process {proc.pid}" in killed["error"]
    assert runs[other_host]["status"] == "running"  # another host's process cannot be seen from here
    shown = here(["runs", "show", killed["id"][:8]], tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "killed"


def _fake_running_run(store: Store, host: str, pid: int) -> str:
    run_id = store.start_run("label", {})
    with store.writer.begin() as c:
        c.execute(db.runs.update().where(db.runs.c.id == run_id).values(host=host, pid=pid))
    return run_id


def test_reaper_and_resume_on_sqlite_and_postgresql(store_url, tmp_path):
    store = Store(store_url, str(tmp_path / "artifacts"))
    alive = store.start_run("x", {})  # this process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = _fake_running_run(store, socket.gethostname(), child.pid)
    store.log_metrics(dead, 0, {"loss": 1.0})
    store.log_metrics(dead, 1, {"loss": 0.5})
    elsewhere = _fake_running_run(store, f"elsewhere-{uuid.uuid4().hex[:6]}", child.pid)
    assert store.get_run(dead)["status"] == "killed"
    assert store.get_run(alive)["status"] == "running" and store.get_run(elsewhere)["status"] == "running"
    assert store.resume_run(dead) is True  # taken over by this process: live again, error cleared
    resumed = store.get_run(dead)
    assert resumed["status"] == "running" and resumed["pid"] == os.getpid() and resumed["error"] is None
    store.forget_metrics_from(dead, 1)
    assert [e["epoch"] for e in store.get_run(dead)["history"]] == [0]
    assert store.end_run(dead, "finished")["status"] == "finished"
    assert store.resume_run(dead) is False and store.resume_run("0" * 32) is False  # finished / unknown


# -- item 4: --resume continues the run ------------------------------------------------------------------
def test_resume_continues_the_same_run_with_its_history(tmp_path, small_csv, here):
    out = tmp_path / "m"
    args = ["train", "-d", str(small_csv), "-c", str(_epochs(tmp_path, 40)), "-q", "-o", str(out)]
    proc = subprocess.Popen(CLI + args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run_file = tmp_path / "m.partial" / "run.json"
    try:
        _wait_for(lambda: _checkpoint_epoch(tmp_path / "m.partial") >= 3, proc=proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_id = json.loads(run_file.read_text())["run_id"]
    assert Store().get_run(run_id)["status"] == "killed"
    done = here(args + ["--resume"], tmp_path)
    assert done.returncode == 0, done.stderr
    runs = Store().list_runs()
    assert [r["id"] for r in runs] == [run_id]  # the same run, not a new one
    run = Store().get_run(run_id)
    assert run["status"] == "finished" and run["error"] is None and run["artifact_uri"]
    assert [e["epoch"] for e in run["history"]] == list(range(40))  # every epoch once, none lost or doubled
    history = json.loads((out / "history.json").read_text())
    assert history["resumed"] is True and len(history["epochs"]) == 40
    assert f"run: {run_id}" in done.stdout


def _checkpoint_epoch(folder: Path) -> int:
    from loopml.train.state import load_state

    try:
        state = load_state(folder / "last.safetensors")
    except Exception:  # noqa: BLE001  a file being replaced right now: try again
        return -1
    return -1 if state is None else state["epoch"]


def test_api_resume_continues_the_recorded_run(tmp_path, small_csv, monkeypatch):
    import loopml.api as api

    class StopAfter(loopml.train.Callback):
        def on_epoch_end(self, trainer, logs):
            if logs["epoch"] == 2:
                raise KeyboardInterrupt

    real = api.default_callbacks
    monkeypatch.setattr(api, "default_callbacks", lambda *a: real(*a) + [StopAfter()])
    checkpoints = tmp_path / "ck"
    model = loopml.Model(target="label", training={"epochs": 6, "early_stopping": {"patience": 0}})
    with pytest.raises(KeyboardInterrupt):
        model.fit(small_csv, checkpoint_dir=checkpoints, progress=False, track=True)
    first = model.run_id
    assert Store().get_run(first)["status"] == "killed"
    monkeypatch.setattr(api, "default_callbacks", real)
    model.fit(small_csv, checkpoint_dir=checkpoints, resume=True, progress=False, track=True)
    assert model.run_id == first and model.info["training"]["resumed"] is True
    run = Store().get_run(first)
    assert run["status"] == "finished" and [e["epoch"] for e in run["history"]] == list(range(6))


# -- item 5: the registered artifact has the report ------------------------------------------------------
def test_registered_model_directory_contains_the_report(tmp_path, small_csv, here):
    done = here(["train", "-d", str(small_csv), "-t", "label", "--epochs", "2", "-q", "-o", "m", "--register", "demo"],
                tmp_path)
    assert done.returncode == 0, done.stderr
    registered = Store().resolve("demo:1")["path"]
    assert (registered / "report.html").is_file()
    assert (registered / "figures").is_dir() and any((registered / "figures").glob("*.png"))
    assert (tmp_path / "m" / "report.html").is_file()
    assert "report.html" not in json.loads((registered / "manifest.json").read_text())["files"]  # may be rewritten
    loopml.load("demo:1")  # the bundle's hashes still hold


# -- item 6: models diff compares effective configs ------------------------------------------------------
def test_models_diff_shows_no_config_differences_for_identical_effective_configs(tmp_path, small_csv):
    store = Store()
    plain = loopml.Model(target="label", training={"epochs": 2}).fit(small_csv, progress=False)
    explicit = loopml.Model({
        "target": {"column": "label", "type": "binary", "positive_class": "pos", "threshold": 0.5},
        "data": {"delimiter": ",", "header": True, "format": "csv"},
        "defaults": {"number": {"type": "number", "missing": "median"}},
        "split": {"seed": 0, "test": 0.2}, "training": {"epochs": 2, "seed": 42, "batch_size": 128},
    }).fit(small_csv, progress=False)
    a = store.register("same", path=plain.save(tmp_path / "a"))["version"]
    b = store.register("same", path=explicit.save(tmp_path / "b"))["version"]
    assert store.diff("same", a, b)["config"] == {}
    other = loopml.Model(target="label", training={"epochs": 3}).fit(small_csv, progress=False)
    c = store.register("same", path=other.save(tmp_path / "c"))["version"]
    assert store.diff("same", a, c)["config"] == {"training.epochs": (2, 3)}


# -- item 7: describe -o keeps how the file was read --------------------------------------------------
def test_describe_output_of_a_headerless_file_trains_with_c(tmp_path, small_csv, here):
    headerless = tmp_path / "data.txt"
    headerless.write_text("".join(small_csv.read_text().splitlines(keepends=True)[1:]).replace(",", ";"))
    described = here(["describe", "-d", str(headerless), "-t", "label", "--no-header", "--names",
                      "x1,x2,color,label", "--delimiter", ";", "-o", "schema.yaml"], tmp_path)
    assert described.returncode == 0, described.stderr
    import yaml

    schema = yaml.safe_load((tmp_path / "schema.yaml").read_text())
    assert schema["data"] == {"delimiter": ";", "header": False, "names": ["x1", "x2", "color", "label"]}
    trained = here(["train", "-d", str(headerless), "-c", "schema.yaml", "--epochs", "1", "-q", "--no-track",
                    "-o", "m"], tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "m" / "model.safetensors").is_file()


# -- item 8: fit starts from scratch --------------------------------------------------------------------
def test_fit_after_a_warm_start_trains_from_scratch(small_csv):
    # the small table without a text column: what is compared is weights, and its fits are cheap
    settings = {"target": "label", "training": {"epochs": 3, "early_stopping": {"patience": 0}}}
    champion = loopml.Model(dict(settings, training={"epochs": 6})).fit(small_csv, progress=False)
    model = loopml.Model(settings)
    warm = {k: v.clone() for k, v in model.fit(small_csv, warm_start=champion, progress=False).network.state_dict().items()}
    scratch = model.fit(small_csv, progress=False).network.state_dict()
    fresh = loopml.Model(settings).fit(small_csv, progress=False).network.state_dict()
    assert all(torch.equal(scratch[k], fresh[k]) for k in fresh)  # nothing of the warm start is left
    assert not all(torch.equal(scratch[k], warm[k]) for k in warm)
    assert model._initial_weights is None


def test_warm_start_from_itself_keeps_its_own_weights_as_the_start(small_csv):
    settings = {"target": "label", "training": {"epochs": 2, "early_stopping": {"patience": 0}}}
    model = loopml.Model(settings).fit(small_csv, progress=False)
    again = loopml.Model(settings).fit(small_csv, progress=False)
    expected = again.fit(small_csv, warm_start=loopml.Model(settings).fit(small_csv, progress=False), progress=False)
    model.fit(small_csv, warm_start=model, progress=False)
    a, b = model.network.state_dict(), expected.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

