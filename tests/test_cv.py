"""Cross-validation: stratified folds, duplicates kept together, per-fold preprocessing."""

import json

import numpy as np
import pandas as pd
import pytest

from loopml.cli import main
from loopml.cv import cross_validate, fold_assignments
from loopml.errors import LoopmlError


def test_folds_are_stratified_disjoint_and_keep_duplicates_together(tabular):
    df = pd.concat([tabular, tabular.iloc[:30]], ignore_index=True)  # 30 exact duplicates
    folds = fold_assignments(df, "label", "binary", 5, seed=0)
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    for i in range(30):
        assert folds[i] == folds[400 + i]
    share = df.groupby(folds)["label"].apply(lambda s: (s == "pos").mean())
    assert share.max() - share.min() < 0.1


def test_cross_validate_reports_every_fold_and_mean(tabular):
    result = cross_validate({"target": "label", "training": {"epochs": 6}}, tabular, folds=3)
    assert len(result["folds"]) == 3 and sum(f["rows"] for f in result["folds"]) == len(tabular)
    accuracies = [f["accuracy"] for f in result["folds"]]
    assert result["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert result["std"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    assert result["mean"]["accuracy"] > 0.8


def test_cv_cli_writes_json_and_report(tabular, tmp_path):
    csv = tmp_path / "d.csv"
    tabular.to_csv(csv, index=False)
    out = tmp_path / "cv"
    config = tmp_path / "c.yaml"  # 3 epochs: what is checked is the output, not the model (50 epochs took ~20 s)
    config.write_text("target: label\ntraining: {epochs: 3}\n")
    assert main(["cv", "-d", str(csv), "-t", "label", "-c", str(config), "--folds", "2", "-o", str(out), "-q"]) == 0
    result = json.loads((out / "cv.json").read_text())
    assert result["k"] == 2 and "accuracy" in result["mean"]
    assert 'id="cross-validation"' in (out / "cv-report.html").read_text()
    assert main(["cv", "-d", str(csv), "-t", "nope", "-o", str(out), "-q"]) == 2


def test_too_many_folds_for_a_class_is_a_clear_error(tabular):
    with pytest.raises(LoopmlError, match="only"):
        cross_validate({"target": "label"}, tabular.iloc[:6], folds=5)
