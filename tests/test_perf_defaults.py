"""Performance defaults: training threads from the CPUs this process may use, and no heavy imports
that a training does not need."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from loopml.train import threads as th


def _cgroup(tmp_path, proc: str, files: dict[str, str]):
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc_file = tmp_path / "proc_cgroup"
    proc_file.write_text(proc)
    return root, proc_file


@pytest.mark.parametrize(("files", "expected"), [
    ({"job/cpu.max": "200000 100000\n"}, 2),
    ({"job/cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two threads, rounded up
    ({"job/cpu.max": "50000 100000\n"}, 1),
    ({"job/cpu.max": "max 100000\n"}, None),
    ({"job/cpu.max": "max 100000\n", "cpu.max": "400000 100000"}, 4),  # the job has none, the root has one
    ({}, None),
])
def test_cgroup_v2_quota(tmp_path, files, expected):
    root, proc = _cgroup(tmp_path, "0::/job\n", files)
    assert th.quota_cpus(root, proc) == expected


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu,cpuacct/job/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/job/cpu.cfs_period_us": "100000\n"}, 3),
    ({"cpu,cpuacct/job/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/job/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu,cpuacct/job/cpu.cfs_quota_us": "garbage\n", "cpu,cpuacct/job/cpu.cfs_period_us": "100000\n"}, None),
])
def test_cgroup_v1_quota(tmp_path, files, expected):
    root, proc = _cgroup(tmp_path, "12:memory:/job\n4:cpu,cpuacct:/job\n", files)
    assert th.quota_cpus(root, proc) == expected


def test_available_cpus_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(th, "quota_cpus", lambda: None)
    assert th.available_cpus() == 4
    monkeypatch.setattr(th, "quota_cpus", lambda: 2)
    assert th.available_cpus() == 2
    monkeypatch.setattr(th, "quota_cpus", lambda: 16)
    assert th.available_cpus() == 4


def test_an_explicit_setting_wins_in_order():
    assert th.explicit_threads(3, {"LOOPML_THREADS": "2", "OMP_NUM_THREADS": "1"}) == 3
    assert th.explicit_threads(None, {"LOOPML_THREADS": "2", "OMP_NUM_THREADS": "1"}) == 2
    assert th.explicit_threads(None, {"OMP_NUM_THREADS": "1"}) == 1
    assert th.explicit_threads(None, {"LOOPML_THREADS": "zero", "OMP_NUM_THREADS": " "}) is None
    assert th.explicit_threads(None, {"LOOPML_THREADS": "0"}) is None


def test_fair_share():
    assert [th.fair_share(2, n) for n in (1, 2, 3, 4)] == [2, 1, 1, 1]
    assert [th.fair_share(8, n) for n in (1, 2, 3, 4, 0)] == [8, 4, 2, 2, 8]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_live_trainings_counts_running_processes_and_drops_stale_files(tmp_path):
    (tmp_path / str(os.getpid())).write_text("")
    (tmp_path / str(_dead_pid())).write_text("")  # killed with -9: its file stayed
    (tmp_path / "notes.txt").write_text("")
    assert th.live_trainings(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([str(os.getpid()), "notes.txt"])
    assert th.live_trainings(tmp_path / "missing") == 0


def test_thread_share_follows_the_trainings_running_beside_it(tmp_path, monkeypatch):
    for name in ("LOOPML_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(th, "available_cpus", lambda: 2)
    before = torch.get_num_threads()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / str(other.pid)).write_text("")  # another loopml training
        with th.ThreadShare(None, folder=tmp_path) as share:
            assert (tmp_path / str(os.getpid())).exists()
            assert share.threads == 1 and torch.get_num_threads() == 1
            other.kill()
            other.wait()
            share.on_epoch_begin(None, 1)  # the other one ended: this one takes both CPUs
            assert share.threads == 2 and torch.get_num_threads() == 2
        assert not (tmp_path / str(os.getpid())).exists()
        assert torch.get_num_threads() == before
    finally:
        other.kill()
        other.wait()


def test_explicit_threads_announce_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPML_THREADS", "1")
    with th.ThreadShare(None, folder=tmp_path) as share:
        assert share.threads == 1 and torch.get_num_threads() == 1
        assert not any(tmp_path.iterdir())


def _modules_after(code: str, cwd) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


HEAVY = ["matplotlib", "captum", "transformers", "fastapi", "onnx", "onnxruntime", "torchvision", "torchaudio"]
TRAIN_ONLY = ["sklearn", "scipy"]  # splitting and metrics: training needs them, loading and predicting do not


def test_training_imports_nothing_it_does_not_need(tmp_path):
    """`import loopml.api` pulls in no plotting, explaining, serving or scikit-learn; a fit (no report)
    no plotting, explaining or serving; loading a model and predicting no scikit-learn either.

    (torch._dynamo and torch._inductor do come with a fit: torch.optim imports them at first use.)"""
    watched = HEAVY + TRAIN_ONLY
    loaded = _modules_after(f"""
import json, sys
import numpy as np, pandas as pd
import loopml.api
after_import = sorted(m for m in {watched!r} if m in sys.modules)
rng = np.random.default_rng(0)
df = pd.DataFrame({{"x": rng.normal(size=200), "c": rng.choice(["a", "b"], size=200)}})
df["y"] = np.where(df.x > 0, "p", "n")
model = loopml.api.Model(target="y", training={{"epochs": 2}}).fit(df, progress=False, cache_dir=False)
model.save("model")
print(json.dumps({{"import": after_import, "fit": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
""", tmp_path)
    assert loaded == {"import": [], "fit": []}
    served = _modules_after(f"""
import json, sys
import loopml
model = loopml.load("model")
model.predict([{{"x": 0.5, "c": "a"}}, {{"x": -1.0, "c": "b"}}])
print(json.dumps(sorted(m for m in {watched!r} if m in sys.modules)))
""", tmp_path)
    assert served == []


@pytest.mark.parametrize("kind", ["binary", "category", "number"])
def test_one_metric_alone_equals_the_full_score(kind):
    """Permutation importance scores one metric alone; it must be the number the full score gives."""
    import numpy as np

    from loopml.evaluate.analysis import score, score_one
    from loopml.features.pipeline import Preprocessor

    rng = np.random.default_rng(0)
    n = 300
    if kind == "number":
        pre = Preprocessor.from_dict({"features": {}, "target": {"column": "y", "kind": "number",
                                                                  "state": {"mean": 3.0, "std": 2.0}}})
        outputs, target = rng.normal(size=(n, 1)).astype(np.float32), rng.normal(size=n).astype(np.float32)
        names = ["mae", "mse", "rmse", "r2"]
    else:
        classes = ["a", "b"] if kind == "binary" else ["a", "b", "c"]
        pre = Preprocessor.from_dict({"features": {}, "target": {"column": "y", "kind": kind,
                                                                  "state": {"classes": classes}}})
        outputs = rng.normal(size=(n, 1 if kind == "binary" else 3)).astype(np.float32)
        target = rng.integers(0, len(classes), size=n).astype(np.float32)
        names = ["accuracy", "balanced_accuracy", "log_loss", "f1_macro", "f1_weighted", "roc_auc", "mcc"]
    full = score(pre, outputs, target)
    for name in names:
        assert score_one(pre, outputs, target, name) == pytest.approx(full[name], rel=1e-9, abs=1e-12), name


def test_a_runtime_folder_others_may_write_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.delenv("LOOPML_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with th.ThreadShare(None, folder=shared / "training") as share:
        assert share._file is None and share.threads == th.fair_share(th.available_cpus(), 1)
