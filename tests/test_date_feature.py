"""The date feature type: inference, the one canonical parsing, parts, and a model served from JSON strings."""

import datetime

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from loopml.config import feature_config
from loopml.data.infer import column_stats, infer_feature_type
from loopml.errors import LoopmlError
from loopml.features.checks import served_frame
from loopml.features.date import DateFeature, instant

UTC = datetime.UTC


def _fitted(values, **settings) -> DateFeature:
    feature = DateFeature("d", feature_config("date", settings))
    feature.fit(pd.Series(values, dtype=object, name="d"))
    return feature


def _micros(*args, tz=UTC) -> int:
    return (datetime.datetime(*args, tzinfo=tz) - datetime.datetime(1970, 1, 1, tzinfo=UTC)) // datetime.timedelta(
        microseconds=1)


# -- inference ------------------------------------------------------------------------------------
DAYS = pd.date_range("2021-01-01", periods=60, freq="D")


@pytest.mark.parametrize("column", [
    pd.Series(DAYS.strftime("%Y-%m-%d")),  # unique: once dropped as "looks like a row id"
    pd.Series(DAYS.strftime("%Y-%m-%dT%H:%M:%S")),
    pd.Series((DAYS + pd.Timedelta("13h7min")).strftime("%Y-%m-%d %H:%M:%S+02:00")),
    pd.Series(list(DAYS.strftime("%Y-%m-%dT%H:%MZ")[:-2]) + [None, ""]),  # gaps do not count
    pd.Series(DAYS),  # datetime64
    pd.Series(DAYS.tz_localize("Europe/Berlin")),
    pd.Series([d.date() for d in DAYS], dtype=object),
], ids=["dates", "timestamps", "zoned", "with gaps", "datetime64", "datetime64 zoned", "date objects"])
def test_iso_dates_and_timestamps_are_inferred_as_dates(column):
    stats = column_stats(column)
    assert infer_feature_type(column, stats) == "date"
    assert not stats["id_like"]


@pytest.mark.parametrize("column", [
    pd.Series(range(1000, 1060)),  # row ids
    pd.Series([20210101 + i for i in range(60)]),  # yyyymmdd integers are ids or numbers, not dates
    pd.Series([str(20210101 + i) for i in range(60)]),
    pd.Series(np.random.default_rng(0).normal(size=60)),
    pd.Series(DAYS.strftime("%m/%d/%Y")),  # day/month order cannot be known
    pd.Series(list(DAYS.strftime("%Y-%m-%d")[:50]) + ["soon"] * 10),  # 1 in 6 not a date
], ids=["ids", "yyyymmdd ints", "yyyymmdd text", "numbers", "us dates", "mostly dates"])
def test_ids_numbers_and_other_text_are_not_dates(column):
    assert infer_feature_type(column) != "date"


def test_describe_gives_the_reason():
    from loopml.config import load_config
    from loopml.schema import build_schema

    df = pd.DataFrame({"when": DAYS.strftime("%Y-%m-%d"), "y": [0, 1] * 30})
    info = build_schema(df, load_config({"target": "y"})).columns[0]
    assert (info.type, info.reason) == ("date", "100% of values ISO dates or timestamps")


# -- parsing --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("2024-03-05", _micros(2024, 3, 5)),
    (" 2024-03-05 ", _micros(2024, 3, 5)),
    ("2024-03-05T12:30", _micros(2024, 3, 5, 12, 30)),
    ("2024-03-05 12:30:00", _micros(2024, 3, 5, 12, 30)),  # naive: kept as written
    ("2024-03-05T12:30:00Z", _micros(2024, 3, 5, 12, 30)),
    ("2024-03-05 12:30:00+02:00", _micros(2024, 3, 5, 10, 30)),  # zoned: to UTC
    ("2024-03-05T00:30:00-0130", _micros(2024, 3, 5, 2, 0)),
    ("2024-03-05T23:00:00-05", _micros(2024, 3, 6, 4, 0)),
    ("2024-03-05T12:30:00.123456789", _micros(2024, 3, 5, 12, 30, 0, 123456)),
    ("2024-03-05T12:30:00.5", _micros(2024, 3, 5, 12, 30, 0, 500000)),
    ("1969-12-31T23:59:59.999999", -1),
    ("0001-01-01", _micros(1, 1, 1)),
])
def test_iso_text_parses_to_one_instant(text, expected):
    assert instant(text) == expected


@pytest.mark.parametrize("value", [
    "2023-02-29", "2024-13-01", "2024-03-05T24:00", "2024-03-05T12:60", "2024-03-05T12:00+25:00", "20240305",
    "03/05/2024", "2024-3-5", "yesterday", "2024-03-05T12", "", 20240305, 1.5, True, [2024, 3, 5],
])
def test_other_values_are_not_dates(value):
    assert instant(value) is None


def test_objects_and_text_agree():
    berlin = datetime.timezone(datetime.timedelta(hours=1))
    same = [datetime.datetime(2024, 3, 5, 13, 30, tzinfo=berlin), pd.Timestamp("2024-03-05 12:30", tz="UTC"),
            pd.Timestamp("2024-03-05 07:30", tz="America/New_York"), "2024-03-05T12:30:00Z",
            np.datetime64("2024-03-05T12:30:00.000000000")]
    assert {instant(v) for v in same} == {_micros(2024, 3, 5, 12, 30)}
    assert instant(datetime.date(2024, 3, 5)) == instant(pd.Timestamp("2024-03-05")) == instant("2024-03-05")


# -- parts, tensors, missing values ---------------------------------------------------------------
def test_table_columns_are_plain_parts():
    feature = _fitted(["2024-03-05T12:30:00", "2024-03-09T00:00:00", None])
    assert feature.state["has_time"]
    parts = feature.table_columns(pd.Series(["2024-03-05T12:45:00+00:00", "2024-12-31", None, "nonsense"]))
    assert list(parts) == ["ordinal", "year", "month", "day", "dayofweek", "hour"]
    assert [parts[k][0] for k in ("year", "month", "day", "dayofweek", "hour")] == [2024, 3, 5, 1, 12.75]
    assert parts["ordinal"][0] == (datetime.date(2024, 3, 5) - datetime.date(1970, 1, 1)).days + 12.75 / 24
    assert parts["dayofweek"][1] == 1 and parts["day"][1] == 31
    for k, v in parts.items():
        assert np.isnan(v[2]) and np.isnan(v[3]), k  # missing and unreadable values are NaN for the trees
    dates_only = _fitted(["2024-03-05", "2024-03-06"])
    assert not dates_only.state["has_time"] and "hour" not in dates_only.table_columns(pd.Series(["2024-03-05"]))


def test_network_tensor_is_standardised_and_cyclic():
    values = [f"2024-{m:02d}-15T{h:02d}:00:00" for m in range(1, 13) for h in (0, 6, 12, 18)]
    feature = _fitted(values + [None])
    x = feature.transform(pd.Series(values + [None]))
    assert x.dtype == torch.float32 and x.shape == (49, feature.encoder_inputs()["width"]) == (49, 11)
    present = x[:-1]
    assert abs(float(present[:, 0].mean())) < 1e-5 and abs(float(present[:, 0].std(unbiased=False)) - 1) < 1e-4
    assert torch.allclose(present[:, 2] ** 2 + present[:, 3] ** 2, torch.ones(48))  # month on the unit circle
    hour = present[:4, 8:10]  # 00, 06, 12, 18 h: a quarter turn apart
    assert torch.allclose(hour, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]]), atol=1e-6)
    assert (x[-1, :-1] == 0).all() and x[-1, -1] == 1 and (present[:, -1] == 0).all()
    # december and january are neighbours on the month circle
    dec, jan, jun = feature.transform(pd.Series(["2024-12-15", "2025-01-15", "2024-06-15"]))[:, 2:4]
    assert torch.dist(dec, jan) < torch.dist(dec, jun)


def test_fit_refuses_a_column_without_dates_and_drops_missing_rows():
    with pytest.raises(LoopmlError, match=r"column 'd' is a date column but holds no ISO 8601 dates.*'03/05/2024'"):
        _fitted(["03/05/2024", None, "04/05/2024"])
    feature = _fitted(["2024-03-05", None, "2024-03-06"], missing="drop")
    assert feature.missing_rows(pd.Series(["2024-03-05", None, " ", float("nan")])).tolist() == [False, True, True, True]


# -- end to end: train on a table, predict from JSON strings --------------------------------------
def _weekend_table(n: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    stamps = pd.Timestamp("2023-01-02") + pd.to_timedelta(rng.integers(0, 700, n), "D") + pd.to_timedelta(
        rng.integers(0, 24 * 60, n), "min")
    when = pd.Series(stamps, dtype="datetime64[ns]").dt.tz_localize("UTC")
    when[[3, 17]] = pd.NaT
    label = np.where(when.dt.day_of_week >= 5, "weekend", "weekday")
    label[[3, 17]] = "weekday"
    return pd.DataFrame({"when": when, "noise": rng.normal(size=n).round(3), "label": label})


def test_a_model_with_a_date_column_predicts_from_json_strings(tmp_path):
    import loopml

    df = _weekend_table()
    train = df.astype({"when": object})
    train.loc[[5, 9], "when"] = "sometime"  # training reads these as missing, and counts them
    model = loopml.Model(target="label", training={"epochs": 20, "seed": 0, "batch_size": 16},
                         split={"test": 0.0}).fit(train, progress=False, cache_dir=False)
    assert model.info["data_report"]["unreadable_dates_as_missing"] == {"when": 2}
    assert model.preprocessor.features["when"].config.type == "date"
    assert model.preprocessor.features["when"].state["has_time"]
    expected = model.predict_proba(df.drop(columns=["label"]))
    assert float((expected.idxmax(axis=1).to_numpy() == df["label"].to_numpy()).mean()) > 0.9

    # the same instants as JSON strings in other zones, naive-in-UTC and null
    as_text = [None if pd.isna(t) else t.tz_convert("Asia/Tokyo").isoformat() for t in df["when"]]
    records = [{"when": w, "noise": v} for w, v in zip(as_text, df["noise"], strict=True)]
    np.testing.assert_allclose(model.predict_proba(records).to_numpy(), expected.to_numpy(), rtol=1e-6, atol=1e-7)
    naive = [{"when": None if pd.isna(t) else t.strftime("%Y-%m-%d %H:%M:%S"), "noise": v}
             for t, v in zip(df["when"], df["noise"], strict=True)]
    np.testing.assert_allclose(model.predict_proba(naive).to_numpy(), expected.to_numpy(), rtol=1e-6, atol=1e-7)

    # saved and loaded: the state is JSON and predicts the same
    model.save(tmp_path / "m")
    loaded = loopml.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict_proba(records).to_numpy(), expected.to_numpy(), rtol=1e-6, atol=1e-7)

    # a value that is not a date: refused like a non-number, or read as missing with coerce
    bad = [{"when": "last tuesday", "noise": 0.1}, {"when": "2024-03-05", "noise": 0.1}]
    with pytest.raises(LoopmlError, match="column 'when': 'last tuesday' at row 1 is not an ISO 8601 date"):
        loaded.predict(bad)
    coerced = loaded.predict_proba(bad, coerce=True)
    assert loaded.last_coerced == {"when": 1}
    missing = loaded.predict_proba([{"when": None, "noise": 0.1}])
    np.testing.assert_allclose(coerced.to_numpy()[:1], missing.to_numpy(), rtol=1e-6)


def test_the_server_schema_refuses_what_training_cannot_read():
    from loopml.serve.schema import input_model

    request = input_model("m", {"when": "date"}, [])
    for ok in ("2024-03-05", "2024-03-05T12:30:00+02:00", " 2024-03-05 ", "", None):
        request.model_validate({"when": ok})
    for bad in ("yesterday", "2023-02-29", 20240305):
        with pytest.raises(ValidationError, match="when"):
            request.model_validate({"when": bad})
    frame = served_frame("date", [{"x": "2024-03-05T12:30:00Z"}, {"x": None}])
    assert frame["x"].tolist() == ["2024-03-05T12:30:00Z", None]
