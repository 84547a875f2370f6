"""The feature-type contract for every registered type, and the train/serve skew it guards against."""

import datetime
import json
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
import torch

from loopml.config import feature_config
from loopml.data.read import read_table
from loopml.errors import LoopmlError
from loopml.features import FEATURE_TYPES
from loopml.features.base import canonical_key
from loopml.features.checks import SAMPLES, Sample, check_feature_type, register_sample, served_frame
from loopml.features.pipeline import Preprocessor
from loopml.features.target import Target


@pytest.mark.parametrize("type_name", FEATURE_TYPES.names())
def test_feature_type_contract(type_name, tmp_path):
    """Sources agree, state round-trips, row alone == row in batch, missing/unseen as documented, fit resets."""
    assert check_feature_type(type_name, tmp_path)


def test_a_type_without_samples_fails_the_suite(tmp_path, monkeypatch):
    from loopml.features.base import FeatureType

    class Unsampled(FeatureType):
        pass

    monkeypatch.setitem(FEATURE_TYPES._items, "unsampled", Unsampled)
    with pytest.raises(AssertionError, match="'unsampled' has no sample-data generator"):
        check_feature_type("unsampled", tmp_path)


def test_the_suite_catches_source_skew(tmp_path, monkeypatch):
    """The contract fails for a type that keys values by str() as loopml did before canonical keys."""
    from loopml.features.category import CategoryFeature

    def str_keys(column):  # the old keys: str() of whatever the reader produced
        return [None if pd.isna(v) else str(v).strip() for v in column.tolist()]

    monkeypatch.setattr("loopml.features.category.canonical_keys", str_keys)
    assert CategoryFeature.fit.__globals__["canonical_keys"] is str_keys
    with pytest.raises(AssertionError, match="learns another state|tensors differ"):
        check_feature_type("category", tmp_path)


def test_register_sample_covers_a_plugin_type(tmp_path, monkeypatch):
    from loopml.features.samples import number_samples

    monkeypatch.setitem(SAMPLES, "number", SAMPLES["number"])  # restored after the test

    @register_sample("number")
    def only_integers(folder):
        return [s for s in number_samples(folder) if s.case == "integers"]

    assert check_feature_type("number", tmp_path) == ["integers"]


# -- the issue's cases, end to end through the reader and the server's frame -----------------------
CSV = "c,b,y\n1,0,a\n2,1,b\n3,0,a\n,1,b\n1,,a\n2,0,b\n3,1,a\n2,1,b\n"


def _fitted(type_name: str, column: pd.Series, **settings):
    feature = FEATURE_TYPES.get(type_name)(column.name, feature_config(type_name, settings))
    feature.fit(column)
    return feature


def test_category_from_csv_with_a_gap_matches_json_integers(tmp_path):
    df = read_table(_write(tmp_path, CSV))
    assert df["c"].dtype == np.float64  # the gap made pandas read floats
    feature = _fitted("category", df["c"], min_frequency=1)
    assert feature.state["vocab"][:3] == ["2", "1", "3"]
    served = served_frame("category", [{"x": 2}, {"x": 2.0}, {"x": "2"}, {"x": " 2 "}, {"x": "2.0"}])
    assert feature.transform(served["x"]).tolist() == [1] * 5  # "2" is vocabulary entry 1, not unknown (0)


def test_binary_from_csv_with_a_gap_matches_json_one(tmp_path):
    df = read_table(_write(tmp_path, CSV))
    feature = _fitted("binary", df["b"])
    assert feature.state["values"] == ["0", "1"] and feature.state["positive"] == "1"
    served = served_frame("binary", [{"x": 1}, {"x": 0}, {"x": True}, {"x": "1"}, {"x": 1.0}, {"x": False}])
    assert feature.transform(served["x"]).squeeze(1).tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]


def test_bundles_saved_with_float_keys_still_read_json_integers():
    """States written before canonical keys ('1.0', 'True') keep working after loading."""
    old = {
        "features": {
            "c": {"config": {"type": "category"}, "state": {"vocab": ["1.0", "2.0", "<missing>"], "mode": "1.0"}},
            "b": {"config": {"type": "binary"}, "state": {"positive": "1.0", "values": ["0.0", "1.0"], "fill": 1.0}},
            "f": {"config": {"type": "binary"}, "state": {"positive": "True", "values": ["False", "True"], "fill": 0.0}},
        },
        "target": {"column": "y", "kind": "category", "state": {"classes": [1, 2, 3]}},
    }
    pre = Preprocessor.from_dict(json.loads(json.dumps(old)))
    frame = pd.DataFrame({"c": pd.Series([2, "1", None, 9], dtype=object), "b": [1, 0, None, "1"],
                          "f": [True, "false", None, 1]})
    out = pre.transform(frame)
    assert out["c"].tolist() == [2, 1, 3, 0]
    assert out["b"].squeeze(1).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert out["f"].squeeze(1).tolist() == [1.0, 0.0, 0.0, 1.0]


def test_target_classes_stay_as_trained_and_accept_any_spelling(tmp_path):
    df = read_table(_write(tmp_path, "c,y\n1,1\n2,2\n3,\n4,3\n5,1\n"))
    target = Target("y", "category")
    target.fit(df["y"])
    assert target.classes == [1, 2, 3]  # whole floats from the CSV are served as integers
    assert [target.class_of(v) for v in (2, 2.0, "2", " 2", "2.0", 7, None)] == [2, 2, 2, 2, 2, None, None]
    assert target.transform(pd.Series([3, "1", 2.0])).tolist() == [2, 0, 1]
    labels, _ = target.decode(np.eye(3, dtype=np.float32))
    assert labels.tolist() == [1, 2, 3] and all(type(v) is int for v in labels.tolist())


def test_positive_class_matches_by_canonical_key():
    target = Target("y", "binary")
    target.fit(pd.Series([0.0, 1.0, 1.0, np.nan]), positive_class="0")
    assert target.classes == [1, 0]
    with pytest.raises(LoopmlError, match="positive_class 'yes' is not a class"):
        Target("y", "binary").fit(pd.Series([0, 1]), positive_class="yes")


def test_blank_target_is_missing_not_a_class():
    target = Target("y", "category")
    target.fit(pd.Series(["a", "b", " ", "a"], dtype=object))
    assert target.classes == ["a", "b"]
    with pytest.raises(LoopmlError, match="1 missing values"):
        target.transform(pd.Series(["a", ""]))


@pytest.mark.parametrize(("value", "key"), [
    (2, "2"), (2.0, "2"), ("2", "2"), (" 2.0 ", "2"), (np.int8(2), "2"), (np.float32(0.1), "0.1"), (0.1, "0.1"),
    (True, "1"), (np.bool_(False), "0"), ("TRUE", "1"), ("False", "0"), (-0.0, "0"), (1e20, "100000000000000000000"),
    ("12345678901234567891", "12345678901234567891"), (float("inf"), "inf"), ("red ", "red"),
    (None, None), (float("nan"), None), (pd.NA, None), (pd.NaT, None), ("", None), ("   ", None),
    ("9" * 100, "9" * 100), ("1_000", "1_000"), ("nan", "nan"),
    (Decimal("2.50"), "2.5"), (Decimal("2"), "2"), (pd.Timestamp("2020-01-02"), "2020-01-02"),
    (datetime.date(2020, 1, 2), "2020-01-02"), (datetime.datetime(2020, 1, 2), "2020-01-02"),
    (pd.Timestamp("2020-01-02 10:30"), "2020-01-02 10:30:00"), (b" x ", "x"), ("2\u0662", "2\u0662"),
    ("\ud800", "\ud800"), (".5", "0.5"), ("5.", "5"), ("-0", "0"), ("1e999", "inf"),
])
def test_canonical_key(value, key):
    assert canonical_key(value) == key


def test_served_frame_keeps_each_value_as_sent():
    """A big integer id next to a null is not widened to a float (which would change its key)."""
    big = 12345678901234567891
    frame = served_frame("category", [{"x": big}, {"x": None}])
    assert frame["x"].tolist()[0] == big and canonical_key(frame["x"].iloc[0]) == str(big)


def test_sample_generators_give_the_same_rows_in_every_form(tmp_path):
    """The samples themselves: every frame and JSON form has the rows of the reference frame."""
    from loopml.features import samples  # noqa: F401

    for type_name, generator in SAMPLES.items():
        for sample in generator(tmp_path / type_name):
            assert isinstance(sample, Sample)
            sizes = {len(s) for s in sample.frames.values()} | {len(v) for v in sample.json_forms.values()}
            assert len(sizes) == 1, f"{type_name}/{sample.case}: forms of different lengths {sizes}"


def test_image_rows_decode_identically_alone_and_batched(tmp_path):
    """One media row through the server's frame equals the row in a batch (a direct, small case)."""
    from loopml.features.samples import image_samples

    sample = image_samples(tmp_path)[0]
    col = sample.frames["object"].rename("x")
    col.attrs["base_dir"] = str(sample.media_dir)
    feature = _fitted("image", col)
    batch = feature.transform(col)
    alone = feature.transform(served_frame("image", [{"x": col.iloc[2]}], sample.media_dir)["x"])
    assert torch.equal(alone, batch[2:3])


def _write(folder, text: str):
    path = folder / "rows.csv"
    path.write_text(text)
    return path


def test_a_model_trained_from_csv_serves_json_values_as_trained(tmp_path):
    """The issue's case end to end: CSV with gaps -> train -> the server's runner on JSON 2 / 2.0 / "2" / true."""
    import loopml
    from loopml.serve.runner import TorchRunner
    from loopml.serve.schema import input_model

    rng = np.random.default_rng(0)
    n = 300
    level = rng.integers(1, 4, n).astype(object)
    flag = rng.integers(0, 2, n).astype(object)
    level[5], flag[7] = None, None  # one gap each: pandas reads both columns as floats
    label = np.where((level == 3) | (flag == 1), "hi", "lo")
    path = tmp_path / "train.csv"
    noise = rng.normal(size=n).round(3)  # distinct rows (the split groups duplicates)
    pd.DataFrame({"level": level, "flag": flag, "noise": noise, "label": label}).to_csv(path, index=False)
    model = loopml.Model(target="label", features={"level": {"type": "category"}, "flag": {"type": "binary"}},
                         training={"epochs": 3, "seed": 0}).fit(path, progress=False, cache_dir=False)
    pre = model.preprocessor
    assert pre.features["level"].state["vocab"][:3] != ["1.0", "2.0", "3.0"]
    assert set(pre.features["level"].state["vocab"]) >= {"1", "2", "3"}

    rows = pd.read_csv(path).drop(columns=["label"]).iloc[:20]
    expected = model.predict_proba(rows).to_numpy()
    request_model = input_model("m", {c: f.config.type for c, f in pre.features.items()}, [])
    runner = TorchRunner(model)
    csv_values = rows.to_dict(orient="records")
    spellings = {
        "ints": lambda v: None if pd.isna(v) else int(v),
        "floats": lambda v: None if pd.isna(v) else float(v),
        "strings": lambda v: None if pd.isna(v) else str(int(v)),
    }
    for spelling, as_json in spellings.items():
        payload = json.loads(json.dumps([{c: (v if c == "noise" else as_json(v)) for c, v in r.items()}
                                         for r in csv_values]))
        records = [request_model.model_validate(r).model_dump(by_alias=True) for r in payload]
        served = runner.predict(records)
        got = np.array([[p["probabilities"][str(c)] for c in pre.target.classes] for p in served])
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=spelling)
        alone = runner.predict(records[:1])[0]["probabilities"]  # the network's float32 sums vary with batch size
        np.testing.assert_allclose(list(alone.values()), list(served[0]["probabilities"].values()), rtol=1e-6)
        first, batch = pre.transform(runner.frame(records[:1])), pre.transform(runner.frame(records))
        assert all(torch.equal(first[c], batch[c][:1]) for c in first), spelling
    as_bools = [{"level": 2, "flag": None if pd.isna(v) else bool(v), "noise": 0.0} for v in rows["flag"]]
    served = runner.predict([request_model.model_validate(r).model_dump(by_alias=True) for r in as_bools])
    ints = runner.predict([{"level": 2, "flag": None if pd.isna(v) else int(v), "noise": 0.0} for v in rows["flag"]])
    assert served == ints
    for third in (2, "yes", 0.5):  # the same rule as `loopml predict`: a third value is refused, not read as the fill
        with pytest.raises(LoopmlError, match="flag: .* is not one of the two values seen in training"):
            runner.predict([{"level": 2, "flag": 1, "noise": 0.0}, {"level": 2, "flag": third, "noise": 0.0}])


def test_jsonl_reads_values_as_the_server_does(tmp_path):
    """No dates guessed from column names, floats exactly as written (pandas' reader rounds some)."""
    rows = [{"date": "2020-01-01", "v": 1.0000000000000002, "c": 2}, {"date": "2020-01-02", "v": 0.1 + 0.2, "c": None}]
    rng = np.random.default_rng(0)
    rows += [{"date": "2020-01-03", "v": float(x), "c": 1} for x in rng.random(500) * 1000]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    df = read_table(path)
    assert df["date"].tolist()[:2] == ["2020-01-01", "2020-01-02"]
    assert df["v"].tolist() == [r["v"] for r in rows]
    array = tmp_path / "rows.json"
    array.write_text(json.dumps(rows[:2]))
    assert read_table(array)["v"].tolist() == [r["v"] for r in rows[:2]]
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(LoopmlError, match="record 2 is not a JSON object"):
        read_table(tmp_path / "bad.jsonl")
