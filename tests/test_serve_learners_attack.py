"""Serving non-network learners as an attacker would: numbers a tree's raw view would take but `predict`
refuses, a LightGBM file cut short or modified (a crash of the C++ parser would take the server down),
and date columns the monitor must watch like any other input."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.errors import LoopmlError
from loopml.learners import LEARNERS

pytestmark = pytest.mark.skipif("lightgbm" not in LEARNERS, reason="the lightgbm learner is not registered")
ROOT = Path(__file__).resolve().parents[1]


def make(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    when = pd.date_range("2023-01-01", periods=n, freq="13h").strftime("%Y-%m-%dT%H:%M:%S")
    color = rng.choice(["red", "blue", "green"], size=n)
    score = 2 * x1 + np.where(color == "red", 1.0, 0.0) + rng.normal(scale=0.3, size=n)
    return pd.DataFrame({"x1": x1, "color": color, "when": when,
                         "label": np.where(score > 1, "hi", np.where(score > -1, "mid", "lo"))})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lgbattack")
    model = loopml.Model(target="label", learner={"type": "lightgbm", "n_estimators": 15}).fit(
        make(300, 0), progress=False, cache_dir=False)
    return model, model.save(root / "model"), root


def test_a_tree_model_refuses_numbers_predict_refuses(trained):
    """A tree's table view keeps float64, so 1e308 passed every check and got a 200, while `loopml predict`
    refuses it (beyond ±3.4e38) and feedback with it was stored: now one rule, 422 naming the field."""
    from fastapi.testclient import TestClient

    from loopml.serve.app import ServeSettings, create_app

    model, path, root = trained
    record = {"x1": 0.5, "color": "red", "when": "2024-03-05T12:00:00"}
    with pytest.raises(LoopmlError, match="x1"):
        model.predict(pd.DataFrame([{**record, "x1": 1e308}]))
    settings = ServeSettings(model=str(path), store=f"sqlite:///{root / 'serve.db'}", monitor_interval_s=0,
                             log_durability="none")
    with TestClient(create_app(settings)) as c:
        name = c.get("/v1/models").json()[0]["name"]
        for value in (1e308, -1e300, "1e308", 3.5e38):
            r = c.post(f"/v1/models/{name}/predict", json=[record, {**record, "x1": value}])
            assert r.status_code == 422, (value, r.text)
            assert r.json()["detail"].startswith("record 1: x1: the value is out of range"), r.text
            fb = c.post("/v1/feedback", json={"inputs": {**record, "x1": value}, "label": "hi"})
            assert fb.status_code == 422 and "x1" in fb.json()["detail"], fb.text
        ok = c.post(f"/v1/models/{name}/predict", json=[record, {**record, "x1": 3.0e38}, {**record, "x1": None}])
        assert ok.status_code == 200, ok.text
        for p in ok.json()["predictions"]:
            assert set(p["probabilities"]) == {"hi", "lo", "mid"}
            assert abs(sum(p["probabilities"].values()) - 1) < 1e-9


def _rewrite(src: Path, dst: Path, change, name: str = "lightgbm.txt") -> Path:
    """A copy of a bundle with its model file changed and the manifest hash updated (so only the file is wrong)."""
    import shutil

    shutil.copytree(src, dst)
    file = dst / name
    file.write_bytes(change(file.read_bytes()) if name != "lightgbm.txt" else change(file.read_text()).encode())
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(file.read_bytes()).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_a_cut_or_modified_lightgbm_file_is_a_user_error_not_a_crash(trained, tmp_path):
    """LightGBM's parallel parser aborts (SIGABRT) or segfaults on a file cut inside its trees, and a cut
    after a tree silently loads fewer trees: a hot swap to such a version killed the server. Loading
    must raise a LoopmlError instead (the swap then keeps the old version). Run in a child process, so a
    crash fails this test instead of killing pytest."""
    _, path, _ = trained
    text = (Path(path) / "lightgbm.txt").read_text()
    tree_2 = text.index("\nTree=2\n") + 1
    threshold = text.index("threshold=") + len("threshold=")
    bundles = {
        "half": _rewrite(path, tmp_path / "half", lambda t: t[: len(t) // 2]),
        "inside a tree": _rewrite(path, tmp_path / "inside", lambda t: t[: tree_2 + 40]),
        "after a tree": _rewrite(path, tmp_path / "after", lambda t: t[:tree_2]),
        "a bad number, same length": _rewrite(path, tmp_path / "number",
                                              lambda t: t[:threshold] + "x" + t[threshold + 1:]),
        "other class count": _rewrite(path, tmp_path / "classes", lambda t: t.replace("num_class=3", "num_class=2")
                                      .replace("num_tree_per_iteration=3", "num_tree_per_iteration=2")),
    }
    script = (
        "import sys, loopml\nfrom loopml.errors import LoopmlError\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n        loopml.load(p)\n        print('LOADED', p)\n"
        "    except LoopmlError as e:\n        print('REFUSED', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *map(str, bundles.values())], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.splitlines()
    assert len(lines) == len(bundles) and all(line.startswith("REFUSED lightgbm.txt") for line in lines), lines
    assert str(tmp_path) not in done.stdout  # the message names the file, not the server's folder
    np.testing.assert_array_equal(loopml.load(path).predict(make(20, 3)), trained[0].predict(make(20, 3)))


@pytest.mark.parametrize("learner,name", [("xgboost", "xgboost.json"), ("catboost", "catboost.cbm")])
def test_a_cut_xgboost_or_catboost_file_is_one_line_not_an_internal_error(learner, name, tmp_path):
    """The libraries' own errors (with a native backtrace of build paths for XGBoost) reached `loopml serve`
    as "internal error", exit 1: a bundle that cannot be read is a one-line LoopmlError (exit 2)."""
    if learner not in LEARNERS:
        pytest.skip(f"{learner} is not registered")
    model = loopml.Model(target="label", learner={"type": learner, "n_estimators": 5}).fit(
        make(150, 1), progress=False, cache_dir=False)
    bad = _rewrite(model.save(tmp_path / "ok"), tmp_path / "cut", lambda b: b[: len(b) // 2], name)
    with pytest.raises(LoopmlError, match=f"^{name} is not a valid {learner} model: [^\\n]*$"):
        loopml.load(bad)


def test_date_columns_are_in_the_drift_reference_and_monitored(trained):
    """A date column had no drift reference (`column_reference` knew numbers, categories and text): the
    monitor never looked at it. Dates now drift as their day number."""
    from loopml.loop.drift import column_drift, column_reference, window_drift

    model, _, _ = trained
    assert model.reference["columns"]["when"]["kind"] == "date"
    dates = make(300, 0)["when"]
    ref = column_reference(dates, "date")
    assert column_drift(dates.sample(200, random_state=1).reset_index(drop=True), ref)["level"] == "ok"
    later = pd.Series(pd.date_range("2026-01-01", periods=200, freq="13h").strftime("%Y-%m-%dT%H:%M:%S+02:00"))
    moved = column_drift(later, ref)
    assert moved["kind"] == "date" and moved["level"] == "drift" and np.isfinite(moved["wasserstein"])
    frame = make(200, 5).drop(columns=["label"]).assign(when=later)
    assert "when" in window_drift(frame, [], model.reference)["drifted"]
