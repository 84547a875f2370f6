"""Input checks before anything is fitted or written (issue 11), through the real ``loopml`` command.

Non-finite numbers in training data, values a trained model cannot read at predict/evaluate
(error by default, ``--coerce`` reads them as missing and counts them), and messages that used
to mislead: the missing-target count, a class of one row, a one-row file, deeply nested config,
a number target holding text, a damaged registry file. Each failure is exit 2 with one line on
stderr, no traceback, and leaves the working directory as it was.

As in test_bad_input, every scenario is a list of commands run in its own directory, once per module:
in this process (``cli_here``) except those in ``IN_SUBPROCESS``, real ``python -m loopml`` processes
started up front on a small pool (CLI start-up is import-bound).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_bad_input import TRAIN, Run, Runs, Step, assert_user_error, in_process_runner, make_table

import loopml
import loopml.config
from loopml.errors import LoopmlError

SCENARIOS: dict[str, Callable[[Path], list[list[str]]]] = {}


def scenario(fn: Callable[[Path], list[list[str]]]) -> Callable[[Path], list[list[str]]]:
    SCENARIOS[fn.__name__.lstrip("_")] = fn
    return fn


#: real ``python -m loopml`` processes: a refused training file and a damaged store, end to end
IN_SUBPROCESS = {"infinite", "damaged_store"}


@pytest.fixture(scope="module")
def module_runs(tmp_path_factory: pytest.TempPathFactory):
    with ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 2))) as pool:
        r = Runs(tmp_path_factory, pool, SCENARIOS, IN_SUBPROCESS)
        for name in IN_SUBPROCESS:
            r.start(name)
        yield r
        for future in r.futures.values():
            future.cancel()


@pytest.fixture
def runs(module_runs: Runs, cli_here, monkeypatch: pytest.MonkeyPatch) -> Runs:
    module_runs.here = in_process_runner(cli_here, monkeypatch)
    return module_runs


def run_of(runs: Runs, name: str) -> Run:
    return runs[name]


def assert_unchanged(run: Run, step: Step, before: set[str] | None = None) -> None:
    """Nothing written: no model directory, no .partial, no temporary or output file."""
    assert step.tree == (run.tree_before if before is None else before), step.tree ^ (before or run.tree_before)


def train_step(data: str, *extra: str) -> list[str]:
    return ["train", "--data", data, "--target", "Survived", "-o", "model", *TRAIN, *extra]


# -- scenarios: training data ----------------------------------------------------------------------


@scenario
def _infinite(cwd: Path) -> list[list[str]]:
    df = make_table()
    df["fare"] = df["fare"].astype(object)
    df.loc[5, "fare"], df.loc[9, "fare"] = "inf", "-inf"  # pandas reads both as float infinities
    df.to_csv(cwd / "data.csv", index=False)
    return [train_step("data.csv")]


@scenario
def _huge(cwd: Path) -> list[list[str]]:
    df = make_table().astype({"age": float})
    df.loc[5, "age"] = 1e308  # finite, but (x - mean) / std and a float32 cast overflow
    df.to_csv(cwd / "data.csv", index=False)
    return [train_step("data.csv")]


@scenario
def _rare_class(cwd: Path) -> list[list[str]]:
    df = make_table().assign(Survived="no")
    df.loc[7, "Survived"] = "yes"
    df.to_csv(cwd / "data.csv", index=False)
    return [train_step("data.csv")]


@scenario
def _one_row(cwd: Path) -> list[list[str]]:
    row = make_table().iloc[:1].copy()
    row["fare"] = np.nan  # used to be reported as "column 'fare' is entirely missing (1 rows)"
    row.to_csv(cwd / "data.csv", index=False)
    return [train_step("data.csv")]


@scenario
def _deep_config(cwd: Path) -> list[list[str]]:
    make_table().to_csv(cwd / "data.csv", index=False)
    (cwd / "lists.yaml").write_text("training: " + "[" * 10_000 + "]" * 10_000 + "\n")
    (cwd / "maps.yaml").write_text("training: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n")
    return [train_step("data.csv", "--config", name) for name in ("lists.yaml", "maps.yaml")]


@scenario
def _number_target_text(cwd: Path) -> list[list[str]]:
    make_table().to_csv(cwd / "data.csv", index=False)
    (cwd / "config.yaml").write_text("target: {column: city, type: number}\n")
    return [["train", "--data", "data.csv", "--config", "config.yaml", "-o", "model", *TRAIN]]


@scenario
def _damaged_store(cwd: Path) -> list[list[str]]:
    make_table().to_csv(cwd / "data.csv", index=False)
    (cwd / "garbage.db").write_bytes(np.random.default_rng(0).bytes(5000))
    (cwd / "truncated.db").write_bytes(_sqlite_store_bytes()[:8192])
    (cwd / "holed.db").write_bytes(_holed(_sqlite_store_bytes(runs=300)))
    return [
        ["runs", "list", "--store", "sqlite:///garbage.db"],
        ["models", "list", "--store", "sqlite:///truncated.db"],
        ["runs", "list", "--store", "sqlite:///holed.db"],
        [*train_step("data.csv"), "--store", "sqlite:///garbage.db"],
    ]


def _sqlite_store_bytes(runs: int = 0) -> bytes:
    """A migrated store (with ``runs`` runs in it) as the bytes of its file."""
    import tempfile

    from loopml.registry import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/registry.db")
        store.engine  # noqa: B018  (opening migrates it)
        for _ in range(runs):
            store.start_run("exp", {"padding": "x" * 500})
        store.engine.dispose()  # checkpoints the WAL into the file
        return Path(tmp, "registry.db").read_bytes()


def _holed(data: bytes) -> bytes:
    """Garbage over a page in the middle: opening works, the first query that reads it fails."""
    middle = len(data) // 2
    return data[:middle] + np.random.default_rng(1).bytes(8192) + data[middle + 8192:]


# -- scenario: a trained model, then predict/evaluate with values it cannot read -------------------


@scenario
def _trained_model(cwd: Path) -> list[list[str]]:
    df = make_table()
    df["Survived"] = df["Survived"].astype(object)
    df.loc[[3, 50, 120, 199], "Survived"] = None  # 4 missing targets anywhere in the file
    df["fare"] = df["fare"].astype(object)
    df.loc[[10, 11], "fare"] = "inf"
    df.to_csv(cwd / "train.csv", index=False)
    (cwd / "config.yaml").write_text("data: {non_finite: missing}\n")
    new = make_table(n=6, seed=1)
    bad_numbers = new.drop(columns=["Survived"]).astype({"age": object})
    bad_numbers.loc[2, "age"], bad_numbers.loc[4, "age"] = "old", "free"
    bad_numbers.to_csv(cwd / "old.csv", index=False)
    infinite = new.drop(columns=["Survived"]).astype({"fare": object})
    infinite.loc[1, "fare"] = "1e309"
    infinite.to_csv(cwd / "inf.csv", index=False)
    labelled = new.astype({"smoker": object})
    labelled.loc[3, "smoker"] = "sometimes"
    labelled.to_csv(cwd / "labelled.csv", index=False)
    return [
        [*train_step("train.csv"), "--config", "config.yaml"],
        ["predict", "model", "--data", "old.csv", "-o", "preds.csv"],
        ["predict", "model", "--data", "old.csv", "-o", "preds.csv", "--coerce"],
        ["predict", "model", "--data", "inf.csv", "-o", "preds_inf.csv"],
        ["evaluate", "model", "--data", "labelled.csv", "-o", "metrics.json"],
        ["evaluate", "model", "--data", "labelled.csv", "-o", "metrics.json", "--coerce"],
    ]


# -- tests: training data ----------------------------------------------------------------------


def test_infinite_values_refused_before_training(runs) -> None:
    run = run_of(runs, "infinite")
    assert_user_error(run.steps[0], "column 'fare' (2, e.g. inf at row 6 of data.csv)", "finite", "3.4e+38",
                      "data.non_finite: missing")
    assert_unchanged(run, run.steps[0])


def test_huge_finite_value_refused_before_training(runs) -> None:
    run = run_of(runs, "huge")
    assert_user_error(run.steps[0], "column 'age' (1, e.g. 1e+308 at row 6 of data.csv)", "3.4e+38")
    assert_unchanged(run, run.steps[0])


def test_class_with_one_row_names_it(runs) -> None:
    run = run_of(runs, "rare_class")
    line = assert_user_error(run.steps[0], "class 'yes' of target 'Survived' has only 1 row",
                             "need at least 3 per class for a stratified split", "split.stratify: false")
    assert "only one class" not in line
    assert_unchanged(run, run.steps[0])


def test_one_row_file_says_too_few_rows(runs) -> None:
    run = run_of(runs, "one_row")
    line = assert_user_error(run.steps[0], "data.csv has too few rows: 1 row with a target",
                             "training needs at least 3")
    assert "entirely missing" not in line
    assert_unchanged(run, run.steps[0])


def test_deeply_nested_config(runs) -> None:
    run = run_of(runs, "deep_config")
    lists, maps = run.steps
    assert_user_error(lists, "config lists.yaml nests too deeply (at most 32 levels)")
    assert_user_error(maps, "config maps.yaml nests too deeply (at most 32 levels)")
    for step in run.steps:
        assert "RecursionError" not in step.stderr
        assert_unchanged(run, step)


def test_config_nesting_and_anchor_expansion_limits(tmp_path: Path) -> None:
    """Nesting YAML can parse but validation could not, and anchors that expand a tiny file a
    billion-fold ("billion laughs"): both refused before validation walks them."""
    forty = tmp_path / "forty.yaml"
    forty.write_text("training:\n" + "".join("  " * i + f"  k{i}:\n" for i in range(40)) + "\n")
    with pytest.raises(LoopmlError, match=r"config forty.yaml nests more than 32 levels deep \(at training\.k0\.k1\."):
        loopml.config.load_config(forty, target="Survived")
    laughs = tmp_path / "laughs.yaml"
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    laughs.write_text("\n".join(lines) + "\ntarget: Survived\ntraining: {epochs: *a8}\n")
    with pytest.raises(LoopmlError, match=r"config laughs.yaml holds more than 100,000 values"):
        loopml.config.load_config(laughs)
    with pytest.raises(LoopmlError, match=r"config nests more than 32 levels deep"):
        deep: list = []
        for _ in range(10_000):
            deep = [deep]
        loopml.config.load_config({"target": "Survived", "training": {"epochs": deep}})


def test_number_target_with_text_values(runs) -> None:
    run = run_of(runs, "number_target_text")
    assert_user_error(run.steps[0], "target 'city' is a number target but has non-numeric values",
                      "at row 1 of data.csv", "(200 of 200)", "target.type")
    assert_unchanged(run, run.steps[0])


def test_damaged_store_is_a_user_error(runs) -> None:
    run = run_of(runs, "damaged_store")
    garbage, truncated, holed, train = run.steps
    assert_user_error(garbage, "the store sqlite:///garbage.db is damaged (file is not a database)")
    assert_user_error(truncated, "the store sqlite:///truncated.db is damaged (database disk image is malformed)")
    assert_user_error(holed, "the store sqlite:///holed.db is damaged")
    assert_user_error(train, "the store sqlite:///garbage.db is damaged")
    for step in run.steps:
        assert "internal error" not in step.stderr
    assert_unchanged(run, train)


# -- tests: a trained model and values it cannot read ----------------------------------------------


def test_missing_targets_counted_over_the_whole_file_and_non_finite_policy(runs) -> None:
    run = run_of(runs, "trained_model")
    trained = run.steps[0]
    assert trained.returncode == 0, trained.stderr
    notes = trained.stderr.splitlines()
    assert "dropped 4 row(s) with a missing 'Survived' from the data file" in notes
    assert "read non-finite or out-of-range numbers as missing (data.non_finite: missing): fare (2)" in notes
    assert (run.cwd / "model" / "manifest.json").is_file()


def test_predict_refuses_non_numeric_values_then_coerces_and_counts(runs) -> None:
    run = run_of(runs, "trained_model")
    trained, refused, coerced = run.steps[:3]
    assert_user_error(refused, "column 'age': 'old' at row 3 is not a number", "2 such values", "--coerce")
    assert_unchanged(run, refused, before=trained.tree)  # no preds.csv, no temporary file
    assert coerced.returncode == 0, coerced.stderr
    assert coerced.stderr.splitlines() == ["note: coerced 2 value(s) to missing: age (2) (--coerce)"]
    assert coerced.stdout == "6 predictions written to preds.csv\n"
    assert len(pd.read_csv(run.cwd / "preds.csv")) == 6


def test_predict_refuses_non_finite_values(runs) -> None:
    run = run_of(runs, "trained_model")
    step = run.steps[3]
    assert_user_error(step, "column 'fare': inf at row 2 is not a number (finite and within")
    assert not (run.cwd / "preds_inf.csv").exists()


def test_evaluate_refuses_a_third_binary_value_then_coerces(runs) -> None:
    run = run_of(runs, "trained_model")
    refused, coerced = run.steps[4:6]
    assert_user_error(refused, "column 'smoker': 'sometimes' at row 4 is not one of the two values seen in "
                               "training ('no', 'yes')")
    assert refused.tree == run.steps[3].tree  # no metrics.json, no report
    assert coerced.returncode == 0, coerced.stderr
    assert "note: coerced 1 value(s) to missing: smoker (1) (--coerce)" in coerced.stderr.splitlines()
    assert (run.cwd / "metrics.json").is_file()


# -- the Python API: same rule ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model() -> loopml.Model:
    return loopml.Model(target="Survived", training={"epochs": 2}).fit(make_table(), progress=False)


def test_api_predict_same_rule_with_coerce(small_model: loopml.Model) -> None:
    new = make_table(n=5, seed=2).drop(columns=["Survived"]).astype({"age": object, "smoker": object})
    new.loc[1, "age"], new.loc[2, "smoker"] = "old", "maybe"
    with pytest.raises(LoopmlError, match=r"column 'age': 'old' at row 2 is not a number"):
        small_model.predict(new)
    labels = small_model.predict(new, coerce=True)
    assert len(labels) == 5
    assert small_model.last_coerced == {"age": 1, "smoker": 1}
    small_model.predict(make_table(n=5, seed=2))
    assert small_model.last_coerced == {}
    with pytest.raises(LoopmlError, match=r"'smoker': 'maybe' at row 3"):
        small_model.evaluate(new.assign(Survived=1, age=30))


def test_api_huge_values_in_range_train_to_finite_outputs() -> None:
    """Values near the float32 limit are accepted, and every statistic and tensor stays finite."""
    df = make_table().astype({"age": float})
    df["fare"] = df["fare"] * 1e36  # up to ~1e38: inside ±3.4e38
    df.loc[0, "age"] = -3e38
    model = loopml.Model(target="Survived", training={"epochs": 2},
                         features={"fare": {"type": "number", "normalize": "minmax"}}).fit(df, progress=False)
    proba = model.predict_proba(df).to_numpy()
    assert np.isfinite(proba).all()
    assert np.isfinite(model.metrics["test"]["log_loss"])


def test_api_non_finite_missing_policy_counts_per_column() -> None:
    df = make_table().astype({"age": float})
    df.loc[[4, 8], "fare"] = np.inf
    df.loc[6, "age"] = -np.inf
    df["smoker_age"] = df["age"].astype(object)
    df.loc[[1, 2], "smoker_age"] = "-"  # a stray placeholder in a number column: read as missing, counted
    model = loopml.Model(target="Survived", training={"epochs": 1}, data={"non_finite": "missing"})
    model.fit(df, progress=False)
    assert model.info["data_report"]["non_finite_as_missing"] == {"age": 1, "fare": 2, "smoker_age": 1}
    assert model.info["data_report"]["non_numeric_as_missing"] == {"smoker_age": 2}
    with pytest.raises(LoopmlError, match=r"non-finite or out-of-range numbers in columns 'age' \(1, e.g. -inf at row 7\)"):
        loopml.Model(target="Survived", training={"epochs": 1}).fit(df, progress=False)


def test_api_number_column_without_numbers() -> None:
    with pytest.raises(LoopmlError, match=r"column 'city' is a number column but holds no numbers, e.g. 'Paris' at row 1"):
        loopml.Model(target="Survived", features={"city": {"type": "number"}}).fit(
            make_table().assign(city=["Lima", "Paris"] * 100).iloc[1:], progress=False)


def test_a_column_named_like_loopmls_own_is_refused():
    """Retraining adds '__loopml_split__' to its data: a user's column of that name would be silently overwritten."""
    from loopml.errors import LoopmlError

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=60), "__loopml_split__": rng.choice(["x", "y"], 60),
                       "label": rng.choice(["p", "q"], 60)})
    with pytest.raises(LoopmlError, match="'__loopml_split__': names starting with '__loopml_' are reserved"):
        loopml.Model(target="label", training={"epochs": 1}).fit(df, progress=False, cache_dir=False)
