"""Training and tuning on Ray (issue 16): the same Trainer data-parallel, Ray Tune over the local tune's space.

One local Ray cluster (2 CPUs) is shared by the module; its processes must all be gone after it.
Seeds: split and training seed 0 (loopml's defaults), adult rows sampled with random_state=0.
Measured (adult, 3000 training rows, 2000 test rows, 4 epochs): test accuracy 0.8395 in one process and
0.8395 with 2 Ray workers (DDP, gloo) from scratch; with equal shards each step's global batch is the
single process's batch split in two, so they agree up to float rounding. This test (1 epoch in one process,
then epochs 2-4 resumed on 2 Ray workers): 0.8380 against 0.8395 in one process.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_dataset

import loopml
from bench import realdata
from loopml.cli import main
from loopml.train.ray_train import ray_cluster, ray_launch

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install loopml[ray])")

EPOCHS = 4


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: no psutil here)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def cluster():
    """A local cluster for the module, via loopml's own ray_cluster; afterwards none of its processes remain."""
    import os

    with ray_cluster(None, num_cpus=2):
        yield
        ray_pids = _descendants(os.getpid())  # raylet, gcs_server, the workers under them
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in ray_pids):
        time.sleep(0.5)
    left = sorted(p for p in ray_pids if _alive(p))
    assert not left, f"Ray processes still running after shutdown: {left}"


@pytest.fixture(scope="module")
def adult_files(tmp_path_factory):
    if not realdata.available("adult"):
        pytest.skip("../shared/datasets/adult is not present on this machine")
    train, test = realdata.adult()
    folder = tmp_path_factory.mktemp("adult")
    train.sample(3000, random_state=0).to_csv(folder / "train.csv", index=False)
    test.sample(2000, random_state=0).to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


@needs_ray
@needs_dataset("adult")
def test_two_ray_workers_resume_a_checkpoint_and_match_one_process(cluster, adult_files, tmp_path):
    """One Ray Train run (each costs tens of seconds of Ray start-up) checks three things: resuming on Ray,
    DDP over 2 workers ending where one process ends, and the ordinary tracked run and bundle."""
    from loopml.train.state import load_state

    train, test = adult_files
    single = loopml.Model(target="income", training={"epochs": EPOCHS}).fit(train, test=test, progress=False)
    checkpoints = tmp_path / "checkpoints"
    first = loopml.Model(target="income", training={"epochs": 1}).fit(train, test=test, checkpoint_dir=checkpoints,
                                                                       progress=False)
    on_ray = loopml.Model(target="income", training={"epochs": EPOCHS})
    with ray_launch("local", 2, "network"):
        on_ray.fit(train, test=test, checkpoint_dir=checkpoints, resume=True, progress=False, track="adult-ray")
    single_acc, ray_acc = single.metrics["test"]["accuracy"], on_ray.metrics["test"]["accuracy"]
    print(f"test accuracy: one process {single_acc:.4f}, 2 Ray workers (epochs 2-{EPOCHS}) {ray_acc:.4f}")
    assert abs(ray_acc - single_acc) <= 0.03
    assert on_ray.info["training"]["resumed"] is True and on_ray.info["training"]["epochs_run"] == EPOCHS
    assert [e["epoch"] for e in on_ray.history] == list(range(EPOCHS))
    assert on_ray.history[:1] == first.history  # the checkpoint's epoch, untouched
    assert load_state(checkpoints / "last.safetensors")["epoch"] == EPOCHS  # Ray's last checkpoint, kept by loopml
    run = loopml.registry.Store().get_run(on_ray.run_id)
    assert run["status"] == "finished" and [e["epoch"] for e in run["history"]] == list(range(1, EPOCHS))
    assert run["metrics"]["test"]["accuracy"] == pytest.approx(ray_acc)
    assert loopml.load(on_ray.save(tmp_path / "model")).metrics["test"]["accuracy"] == ray_acc  # the ordinary bundle


def test_tree_learner_on_ray_is_one_line_error(tmp_path, capsys):
    data = tmp_path / "t.csv"
    data.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    config = tmp_path / "c.yaml"
    config.write_text("learner: {type: lightgbm}\n")
    assert main(["train", "-d", str(data), "-t", "y", "-c", str(config), "--ray", "--no-track",
                 "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learner lightgbm" in err[0] and "--ray" in err[0]
    assert not (tmp_path / "m").exists()


def test_workers_without_ray_is_refused(tmp_path, capsys):
    data = tmp_path / "t.csv"
    data.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    assert main(["train", "-d", str(data), "-t", "y", "--workers", "2", "--no-track", "-o", str(tmp_path / "m")]) == 2
    assert "--workers" in capsys.readouterr().err


@needs_ray
def test_tune_on_ray_records_every_trial_as_a_run(cluster, tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    rows = "".join(f"{a:.4f},{b:.4f},{int(a + 0.5 * b + rng.normal(scale=0.5) > 0)}\n" for a, b in x)
    data = tmp_path / "tiny.csv"
    data.write_text("a,b,y\n" + rows)
    out = tmp_path / "best.yaml"
    assert main(["tune", "-d", str(data), "-t", "y", "-l", "linear", "--trials", "8", "--folds", "2",
                 "--study", "tiny-ray", "-o", str(out), "--ray"]) == 0
    runs = loopml.registry.Store().list_runs("tiny-ray", limit=100)
    assert len(runs) == 8 and {r["status"] for r in runs} == {"finished"}
    assert all(r["params"]["learner"]["type"] == "linear" and "C" in r["params"]["learner"] for r in runs)
    losses = [r["metrics"]["cv"]["loss"] for r in runs if r["metrics"]["cv"]["folds"] == 2]
    assert losses and "learner:" in out.read_text()
    assert f"{min(losses):.5f}" in capsys.readouterr().err  # the best trial is the one printed


def test_missing_ray_is_one_line_error_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    data = tmp_path / "t.csv"
    data.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    assert main(["train", "-d", str(data), "-t", "y", "--ray", "--no-track", "-o", str(tmp_path / "m")]) == 2
    assert main(["tune", "-d", str(data), "-t", "y", "-l", "linear", "--trials", "2", "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: Ray is not installed: pip install loopml[ray]"] * 2
    assert not (tmp_path / "m").exists()


@needs_ray
def test_more_workers_than_local_cpus_is_refused_not_a_hang(cluster, tmp_path, capsys):
    """Ray Train would wait forever for 1000 CPUs (and ignore Ctrl-C while aborting that wait)."""
    data = tmp_path / "t.csv"
    data.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    started = time.monotonic()
    assert main(["train", "-d", str(data), "-t", "y", "--ray", "--workers", "1000", "--no-track",
                 "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers 1000" in err[0] and "--workers 2 or less" in err[0], err
    assert time.monotonic() - started < 20 and not (tmp_path / "m").exists()


def test_ray_storage_is_absolute_for_a_relative_output(tmp_path, monkeypatch):
    """A relative -o made Ray read its storage_path as a URI: "URI has empty scheme: 'm.partial/ray'"."""
    from types import SimpleNamespace

    from loopml.train.callbacks import Checkpoint
    from loopml.train.ray_train import RayLauncher, RaySettings

    monkeypatch.chdir(tmp_path)
    seen = []

    def interrupted(self, trainer, train, val, storage, name):
        seen.append(storage)
        raise KeyboardInterrupt

    monkeypatch.setattr(RayLauncher, "_run", interrupted)
    trainer = SimpleNamespace(epoch=0, callbacks=[Checkpoint(Path("m.partial"))])
    with pytest.raises(KeyboardInterrupt):
        RayLauncher(RaySettings(None, 2)).fit(trainer, None, None)
    assert seen == [tmp_path / "m.partial" / "ray"] and seen[0].is_absolute()


@needs_ray
def test_malformed_ray_address_is_one_line(tmp_path, capsys, monkeypatch):
    import ray

    # Ray parses the address before it looks for a connection: the module's cluster may stay connected
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    data = tmp_path / "t.csv"
    data.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    assert main(["train", "-d", str(data), "-t", "y", "--ray", "notanaddress", "--no-track",
                 "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: cannot connect to the Ray cluster at notanaddress: Invalid address format: notanaddress"]
    assert not (tmp_path / "m").exists()


def test_ctrl_c_during_a_ray_fit_is_an_interrupt_and_the_handler_comes_back():
    """Ray Train's own handler exits 0 on the third Ctrl-C and outlives fit() (a later Ctrl-C restarted Ray)."""
    import os
    import signal

    from loopml.train.ray_train import fit_interruptibly

    aborted = []

    class Controller:
        class abort:  # noqa: N801 - Ray's ActorHandle.method.remote()
            @staticmethod
            def remote():
                aborted.append(True)

    class Run:
        def fit(self):
            self._register_sigint_handler(Controller())
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C mid-fit; the abort lets fit return
            return "result"

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        fit_interruptibly(Run())
    assert aborted == [True] and signal.getsignal(signal.SIGINT) is before

    class Quiet(Run):
        def fit(self):
            self._register_sigint_handler(Controller())
            return "result"

    assert fit_interruptibly(Quiet()) == "result" and signal.getsignal(signal.SIGINT) is before
