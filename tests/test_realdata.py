"""Acceptance floors on ../shared/datasets with default settings, fixed seeds, CPU only.

Each run uses the whole dataset (they train in seconds here), so the floors are the issue's own.
"""

from conftest import needs_dataset

import loopml
from bench import realdata


def _fit(target, data, **kwargs):
    test = kwargs.pop("test", None)
    return loopml.Model(target=target, **kwargs).fit(data, test=test, progress=False)


@needs_dataset("adult")
def test_adult_official_split():
    train, test = realdata.adult()
    m = _fit("income", train, test=test)
    assert m.metrics["test"]["accuracy"] >= 0.85
    assert m.metrics["test"]["roc_auc"] >= 0.90


@needs_dataset("titanic")
def test_titanic():
    m = _fit("Survived", realdata.titanic())
    assert m.schema.target_kind == "binary"
    assert m.metrics["test"]["accuracy"] >= 0.78


@needs_dataset("california_housing")
def test_california_housing_regression():
    m = _fit("median_house_value", realdata.california_housing())
    assert m.schema.target_kind == "number"
    assert m.metrics["test"]["r2"] >= 0.75


@needs_dataset("sms_spam")
def test_sms_spam_deduplicated():
    m = _fit("label", realdata.sms_spam(), split={"duplicates": "drop"})
    assert m.info["data_report"]["split"]["duplicate_rows"] == 403
    assert m.metrics["test"]["accuracy"] >= 0.97
    assert m.metrics["test"]["per_class"]["spam"]["f1"] >= 0.90


@needs_dataset("ag_news_test")
def test_ag_news():
    m = _fit("label", realdata.ag_news())
    assert m.schema.target_kind == "category" and m.preprocessor.target.classes == [1, 2, 3, 4]
    assert m.metrics["test"]["accuracy"] >= 0.80
