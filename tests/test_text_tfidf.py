"""``tokenizer: tfidf`` text columns: sklearn's weights, the top-K rule, ONNX/TorchScript exports and the standalone
example (its own n-gram counting, no loopml), save/load, config errors and explanations."""

import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pandas as pd
import pytest
import yaml

import loopml
from loopml.cli import main
from loopml.compress.export import FORMATS, export_model, network_outputs
from loopml.config import feature_config
from loopml.errors import LoopmlError
from loopml.features.text import TextFeature

ROWS = 200
TOL = 1e-5
#: training words: no 'q', 'z' or 'j', so texts of those letters hold no known term at all
POSITIVE = ["good", "fine", "great", "nice", "café", "東京", "love"]
NEGATIVE = ["poor", "bad", "awful", "weak", "naïve", "broken", "hate"]
FILLER = ["the", "item", "box", "red", "blue", "today", "we", "you", "it", "42", "a"]
#: the texts the standalone example must count as loopml does
TRICKY = [
    "",                                                 # empty (a missing cell in a CSV)
    "zzqq qzqz jjj",                                    # only unknown words (and no known char n-gram)
    "Café NAÏVE crème brûlée — 東京タワー 🎉🎉 good İSTANBUL ß",  # accents, case (İ lowers to 2 chars), CJK, emoji
    "good\tfine\n\nbad   awful \t\t box\r\nred\u00a0blue\u3000it",  # tabs, newlines, runs and unicode spaces
    "item 42 x9 2024 3.14 007",                         # digits
    " ".join(POSITIVE * 6 + NEGATIVE * 3 + FILLER * 4),  # more terms than max_length: the top-K rule
    "good\x00bad fi\x00ne",                             # NUL bytes
    "a b c i o u",                                      # one-letter words: no word term, short char words
    "2.0",                                              # read as a number: its canonical text '2'
]


def texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    out, labels = [], []
    for i in range(n):
        good = i % 2 == 0
        words = list(rng.choice(FILLER, size=int(rng.integers(2, 9))))
        for _ in range(int(rng.integers(1, 3))):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if good else NEGATIVE)))
        out.append(" ".join(words))
        labels.append("pos" if good else "neg")
    return out, labels


def frame(n: int, seed: int) -> pd.DataFrame:
    note, label = texts(n, seed)
    x = np.random.default_rng(seed + 1).normal(size=n)
    return pd.DataFrame({"note": note, "x": x, "label": label})


def predict_rows() -> pd.DataFrame:
    df = frame(ROWS, 7)
    df.loc[: len(TRICKY) - 1, "note"] = TRICKY
    df.loc[len(TRICKY), "note"] = None
    return df


def fitted_feature(train: list[str], **settings) -> TextFeature:
    feature = TextFeature("note", feature_config("text", {"type": "text", "tokenizer": "tfidf", **settings}))
    feature.fit(pd.Series(train, name="note"))
    return feature


def dense(feature: TextFeature, rows: list[str]) -> np.ndarray:
    """The [N, 2, L] pairs as dense rows over the whole vocabulary (word terms first)."""
    pairs = feature.transform(pd.Series(rows, name="note")).numpy()
    out = np.zeros((len(rows), feature.state["vocab_size"] - 1))
    for i, (ids, weights) in enumerate(pairs):
        kept = ids > 0
        out[i, ids[kept].astype(np.int64) - 1] = weights[kept]
    return out


def sklearn_weights(feature: TextFeature, train: list[str], rows: list[str], norm: str | None = "l2") -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    state, blocks = feature.state["tfidf"], []
    for name in ("word", "char"):
        part = state[name]
        vec = TfidfVectorizer(analyzer=part["analyzer"], ngram_range=tuple(part["ngrams"]), lowercase=state["lowercase"],
                              vocabulary=part["terms"], sublinear_tf=True, norm=norm).fit(train)
        np.testing.assert_allclose(vec.idf_, part["idf"], atol=1e-6)
        blocks.append(vec.transform(rows).toarray())
    return np.hstack(blocks)


# -- the weights --------------------------------------------------------------------------------------
def test_weights_are_sklearns_sublinear_tfidf_per_analyzer():
    train, _ = texts(300, 0)
    feature = fitted_feature(train, max_length=2048)
    state = feature.state["tfidf"]
    assert len(state["word"]["terms"]) > 20 and len(state["char"]["terms"]) > 100
    rows = train[:50] + TRICKY
    read = TextFeature._texts(pd.Series(rows))  # as loopml reads a cell: '2.0' is the text '2'
    assert read[-1] == "2"
    mine, expected = dense(feature, rows), sklearn_weights(feature, train, read)
    assert np.abs(mine - expected).max() < 1e-6
    assert not mine[len(train[:50]) + 1].any() and not mine[len(train[:50])].any()  # unknown only; empty
    width = len(state["word"]["terms"])
    for block in (mine[:50, :width], mine[:50, width:]):  # l2-normalised per analyzer
        np.testing.assert_allclose(np.linalg.norm(block, axis=1), 1.0, atol=1e-6)


def test_a_long_text_keeps_its_largest_weights_then_id_order():
    train, _ = texts(300, 0)
    feature = fitted_feature(train, max_length=12)
    text = TRICKY[5]
    pairs = feature.transform(pd.Series([text])).numpy()[0]
    raw = sklearn_weights(feature, train, [text], norm=None)[0]
    normalised = sklearn_weights(feature, train, [text])[0]
    present = np.flatnonzero(raw)
    assert len(present) > 12
    order = sorted(present, key=lambda i: (-raw[i], i))[:12]  # largest first, ties: the lower id
    assert raw[order[-1]] == raw[sorted(present, key=lambda i: (-raw[i], i))[12]]  # the cut falls inside a tie
    kept = np.sort(order)
    np.testing.assert_array_equal(pairs[0], kept + 1)
    np.testing.assert_allclose(pairs[1], normalised[kept], atol=1e-6)


# -- a model: exports, the standalone example, save/load ----------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfidf")
    frame(240, 0).to_csv(root / "train.csv", index=False)
    predict_rows().to_csv(root / "rows.csv", index=False)
    return root


@pytest.fixture(scope="module")
def model(root):
    features = {"note": {"type": "text", "tokenizer": "tfidf", "max_length": 64}}
    return loopml.Model(target="label", features=features, training={"epochs": 3, "batch_size": 64}).fit(
        pd.read_csv(root / "train.csv"), progress=False, cache_dir=False)


@pytest.fixture(scope="module")
def exports(model, root):
    return {fmt: export_model(model, root / f"tfidf-{fmt}", fmt) for fmt in FORMATS}


def _script(folder):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"standalone_tfidf_{folder.name.replace('-', '_')}",
                                                  folder / "predict_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preprocessing_json_carries_the_vocabularies(model, exports):
    folder = exports["onnx"].folder
    spec = json.loads((folder / "preprocessing.json").read_text())
    note = next(c for c in spec["columns"] if c["name"] == "note")
    state = model.preprocessor.features["note"].state
    assert note["dtype"] == "float32" and note["max_length"] == state["max_length"] == 64 and "tokenizer" not in note
    assert note["tfidf"] == state["tfidf"] and note.get("standalone") is not False
    assert not [f for f in exports["onnx"].files if f.startswith("tokenizer")]


def test_standalone_tensors_equal_loopmls_exactly(model, exports):
    script = _script(exports["onnx"].folder)
    spec = json.loads((exports["onnx"].folder / "preprocessing.json").read_text())
    note = next(c for c in spec["columns"] if c["name"] == "note")
    cells = TRICKY + [None, "   ", "GOOD good Good", "good good good good fine"]
    expected = model.preprocessor.features["note"].transform(pd.Series(cells, dtype=object)).numpy()
    got = script.text_input(note, cells)
    assert got.dtype == expected.dtype == np.float32 and got.shape == expected.shape == (len(cells), 2, 64)
    np.testing.assert_array_equal(got, expected)
    assert (got[5, 0] > 0).all()  # the long text fills every slot
    assert not got[1].any() and not got[0].any()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_exported_network_matches_loopml_scores(model, exports, root, fmt):
    assert exports[fmt].max_diff < TOL
    x = model.inputs(model._read_inputs(root / "rows.csv", coerce=True))
    assert tuple(x["note"].shape) == (ROWS, 2, 64)
    expected = np.asarray(model.learner.predict_scores(x))
    got = network_outputs(exports[fmt].folder / FORMATS[fmt], fmt, tuple(x[c] for c in model.preprocessor.features))
    assert np.abs(got.reshape(expected.shape) - expected).max() < TOL


#: runs the example with loopml, torch, pandas and tokenizers all out of reach of the tfidf branch
ISOLATED = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); " \
           "leaked = {'loopml', 'torch', 'pandas', 'sklearn', 'tokenizers'} & set(sys.modules); assert not leaked, leaked"


def test_standalone_script_prints_loopml_predictions_without_loopml(model, exports, root):
    folder = exports["onnx"].folder
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]  # -S: no .pth files, so no editable loopml
    probe = subprocess.run([sys.executable, "-S", "-c", "import loopml"], cwd=folder, env=env, capture_output=True)
    assert probe.returncode != 0 and b"No module named 'loopml'" in probe.stderr
    assert "\x00" in (root / "rows.csv").read_text()
    run = subprocess.run([sys.executable, "-S", "-c", ISOLATED, "predict_onnx.py", str(root / "rows.csv")],
                         cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    expected = model.predict(root / "rows.csv", coerce=True)
    assert set(expected) == {"pos", "neg"}
    assert run.stdout.splitlines() == [str(v) for v in expected]


def test_standalone_skips_the_blank_lines_loopml_skips(root, tmp_path):
    """In a one-column file whitespace-only lines are no rows to pandas (so to ``loopml predict``), and none to the
    example either; a quoted field that spans a blank line is one row to both."""
    features = {"note": {"type": "text", "tokenizer": "tfidf"}}
    model = loopml.Model(target="label", features=features, training={"epochs": 1}).fit(
        pd.read_csv(root / "train.csv")[["note", "label"]], progress=False, cache_dir=False)
    folder = export_model(model, tmp_path / "one", "onnx").folder
    path = tmp_path / "blanks.csv"
    path.write_text('note\nred apples fresh\n   \n\t\nblue sky today\n"two lines\n\n in one"\n\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    run = subprocess.run([sys.executable, "-S", "-c", ISOLATED, "predict_onnx.py", str(path)],
                         cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    expected = model.predict(path, coerce=True)
    assert len(expected) == 3 and run.stdout.splitlines() == [str(v) for v in expected]


def test_save_load_and_a_row_alone_predict_as_in_a_batch(model, root, tmp_path):
    rows = predict_rows()
    loaded = loopml.load(model.save(tmp_path / "m"))
    assert loaded.preprocessor.features["note"].state == model.preprocessor.features["note"].state
    batch = model.predict_proba(rows)
    pd.testing.assert_frame_equal(loaded.predict_proba(rows), batch)
    tensors = model.preprocessor.transform(rows)["note"]
    for i in range(len(TRICKY) + 1):
        alone = model.preprocessor.transform(rows.iloc[[i]])["note"]
        assert np.array_equal(alone[0].numpy(), tensors[i].numpy()), i
        np.testing.assert_allclose(model.predict_proba(rows.iloc[[i]]).to_numpy(), batch.iloc[[i]].to_numpy(), atol=1e-6)


# -- config errors, explanations ------------------------------------------------------------------------
@pytest.mark.parametrize("setting, words", [
    ({"encoder": {"type": "bilstm"}}, "only the bag encoder reads them, not bilstm"),
    ({"pretrained_tokenizer": "minilm"}, "remove pretrained_tokenizer"),
])
def test_tfidf_with_a_sequence_encoder_or_a_borrowed_tokenizer_is_refused(root, tmp_path, capsys, setting, words):
    features = {"note": {"type": "text", "tokenizer": "tfidf", **setting}}
    with pytest.raises(LoopmlError, match=words):
        loopml.Model(target="label", features=features)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"target": "label", "features": features}))
    code = main(["train", "-d", str(root / "train.csv"), "-c", str(config), "-o", str(tmp_path / "m"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("tokenizer", ["tfidf", "word"])
@pytest.mark.parametrize("max_length", [0, -1, 10**11])
def test_a_max_length_out_of_range_is_one_config_line(root, tmp_path, capsys, tokenizer, max_length):
    features = {"note": {"type": "text", "tokenizer": tokenizer, "max_length": max_length}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"target": "label", "features": features}))
    code = main(["train", "-d", str(root / "train.csv"), "-c", str(config), "-o", str(tmp_path / "m"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "max_length must be 'auto' or from 1 to 16,384" in err
    assert not (tmp_path / "m").exists()


def test_tfidf_max_length_beyond_the_vocabulary_is_the_vocabulary():
    train, _ = texts(40, 3)
    feature = fitted_feature(train, max_length=16_384)
    assert feature.state["max_length"] == feature.state["vocab_size"] - 1 < 16_384
    rows = [" ".join(train)]  # every term: all of them fit
    np.testing.assert_allclose(dense(feature, rows), sklearn_weights(feature, train, rows), atol=1e-6)


def test_explanations_name_the_terms(model, root, tmp_path, capsys):
    rows = predict_rows()
    terms = set(model.preprocessor.features["note"]._term_list())
    explained = model.explain(rows, [0, 2, 5, 10])
    assert explained[0]["tokens"]["note"] == []  # the empty text has no term
    for i, row in zip([2, 5, 10], explained[1:], strict=True):
        tokens, text = row["tokens"]["note"], rows.loc[i, "note"].lower()
        assert tokens and all(isinstance(t, str) and t in terms and np.isfinite(a) for t, a in tokens)
        assert all(piece in text for t, _ in tokens for piece in t.split()), (text, tokens)  # the text's own terms
    assert len(explained[2]["tokens"]["note"]) == 64
    saved = model.save(tmp_path / "m")
    assert main(["explain", str(saved), "-d", str(root / "rows.csv"), "--rows", "2,5", "--repeats", "1"]) == 0
    assert 'class="tok"' in (saved / "explain.html").read_text()
    capsys.readouterr()
