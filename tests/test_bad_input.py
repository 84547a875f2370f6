"""Bad input through the real ``loopml`` command: one line naming the problem, exit 2, no traceback, no debris.

Every case runs ``loopml ...`` in its own working directory and with its own ``LOOPML_CACHE_DIR``. The
checks here are on messages, exit codes and files, so most scenarios run the CLI's ``main`` in this
process (``cli_here``: no ~7 CPU-s of imports per command); the few in ``IN_SUBPROCESS`` run
``python -m loopml`` as a real process, proving the one-line / no-traceback contract end to end, and
start up front on a small thread pool. A scenario is a function that writes its input files into the
working directory and returns the command lines to run, in order; every step records the exit code,
stdout, stderr and the directory tree after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--epochs", "2", "-q"]
STEP_TIMEOUT_S = 300


# -- data ----------------------------------------------------------------------------------------


def make_table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Numeric, categorical and binary inputs; a binary target that depends on them (learnable)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    fare = rng.gamma(2.0, 20.0, n).round(2)
    city = rng.choice(["Paris", "Oslo", "Rome", "Lima"], n)
    smoker = rng.choice(["yes", "no"], n)
    logit = (age - 45) / 10 + np.where(city == "Oslo", 2.0, 0.0) - np.where(smoker == "yes", 1.5, 0.0)
    survived = (logit + rng.normal(0, 0.5, n) > 0).astype(int)
    return pd.DataFrame({"age": age, "fare": fare, "city": city, "smoker": smoker, "Survived": survived})


def write_csv(path: Path, df: pd.DataFrame | None = None) -> Path:
    (make_table() if df is None else df).to_csv(path, index=False)
    return path


# -- running the CLI -----------------------------------------------------------------------------


@dataclass
class Step:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    tree: set[str]  # every path under the working directory after this step, relative


@dataclass
class Run:
    cwd: Path
    tree_before: set[str]  # after the scenario wrote its files, before any command
    steps: list[Step]


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def cli(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LOOPML_DEBUG"}  # debug mode prints tracebacks
    env.update(
        LOOPML_CACHE_DIR=str(cache),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        COLUMNS="200",  # help text on one line per option, whatever the terminal
        OMP_NUM_THREADS="1",  # the scenarios run side by side; one torch thread each
    )
    return subprocess.run([sys.executable, "-m", "loopml", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=STEP_TIMEOUT_S)


SCENARIOS: dict[str, Callable[[Path], list[list[str]]]] = {}


def scenario(name: str):
    def register(fn: Callable[[Path], list[list[str]]]):
        SCENARIOS[name] = fn
        return fn

    return register


Runner = Callable[[list[str], Path, Path], subprocess.CompletedProcess]
#: scenarios run as a real ``python -m loopml`` process: a data error, a config error and the top-level help
IN_SUBPROCESS = {"missing_file", "config_invalid_yaml", "help_top"}


def execute(name: str, base: Path, scenarios: dict | None = None, runner: Runner = cli) -> Run:
    """Run scenario ``name`` (from ``scenarios``, by default this module's) in a fresh folder under ``base``."""
    cwd, cache = base / "work", base / "cache"
    cwd.mkdir(parents=True)
    commands = (SCENARIOS if scenarios is None else scenarios)[name](cwd)
    before = tree(cwd)
    steps = []
    for args in commands:
        proc = runner(args, cwd, cache)
        steps.append(Step(args, proc.returncode, proc.stdout, proc.stderr, tree(cwd)))
    return Run(cwd, before, steps)


class Runs:
    """Scenario name -> Run, each run once per module. Those in ``in_subprocess`` start up front on the
    pool (so that the processes overlap); the others run in this process when a test first asks,
    through ``here``, the asking test's in-process runner."""

    def __init__(self, factory: pytest.TempPathFactory, pool: ThreadPoolExecutor, scenarios: dict,
                 in_subprocess: set[str]) -> None:
        self.factory, self.pool, self.scenarios, self.in_subprocess = factory, pool, scenarios, in_subprocess
        self.futures: dict = {}
        self.done: dict[str, Run] = {}
        self.here: Runner | None = None

    def start(self, name: str) -> None:
        if name in self.in_subprocess and name not in self.futures:
            self.futures[name] = self.pool.submit(execute, name, self.factory.mktemp(name), self.scenarios)

    def __getitem__(self, name: str) -> Run:
        if name in self.in_subprocess:
            self.start(name)
            return self.futures[name].result()
        if name not in self.done:
            assert self.here is not None, "in-process scenarios need the function-scoped `runs` fixture"
            self.done[name] = execute(name, self.factory.mktemp(name), self.scenarios, self.here)
        return self.done[name]


def in_process_runner(cli_here, monkeypatch: pytest.MonkeyPatch) -> Runner:
    """``cli``'s environment for ``cli_here``; typer (its own copy of click) names the program as
    ``python -m loopml`` would, not after this interpreter's ``__main__``."""
    import typer._click.utils

    monkeypatch.setattr(typer._click.utils, "_detect_program_name", lambda *a, **k: "python -m loopml")

    def run(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
        return cli_here(args, cwd, env={"LOOPML_CACHE_DIR": str(cache), "LOOPML_DEBUG": None, "COLUMNS": "200"})

    return run


def _wanted(items: list[pytest.Item]) -> list[str]:
    """The scenarios the selected tests of this module will ask for, the slowest (training) first."""
    names: list[str] = []
    for item in items:
        if getattr(item, "module", None) is not sys.modules[__name__]:
            continue
        params = getattr(item, "callspec", None)
        names += list(getattr(item.function, "scenarios", ()))
        names += [v for v in (params.params.values() if params else ()) if isinstance(v, str) and v in SCENARIOS]
    slow = ("predict", "malformed_rows", "encoding")
    return sorted(dict.fromkeys(names), key=lambda n: n not in slow)


@pytest.fixture(scope="module")
def module_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    workers = max(2, min(4, os.cpu_count() or 2))  # import-bound subprocesses: one per core
    with ThreadPoolExecutor(workers) as pool:
        r = Runs(tmp_path_factory, pool, SCENARIOS, IN_SUBPROCESS)
        for name in _wanted(request.session.items):
            r.start(name)
        yield r
        for future in r.futures.values():
            future.cancel()


@pytest.fixture
def runs(module_runs: Runs, cli_here, monkeypatch: pytest.MonkeyPatch) -> Runs:
    module_runs.here = in_process_runner(cli_here, monkeypatch)
    return module_runs


def uses(*names: str):
    """Marks a test as reading these scenarios (so ``runs`` starts them early)."""

    def mark(fn):
        fn.scenarios = names
        return fn

    return mark


# -- assertions ----------------------------------------------------------------------------------


def assert_user_error(step: Step, *fragments: str) -> str:
    """Exit 2, stderr one line 'error: ...' containing every fragment, no traceback, nothing on stdout."""
    context = f"{step.args}\nstdout: {step.stdout!r}\nstderr: {step.stderr!r}"
    assert step.returncode == 2, context
    assert "Traceback" not in step.stderr, context
    lines = step.stderr.strip().splitlines()
    assert len(lines) == 1, context
    assert lines[0].startswith("error: "), context
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert step.stdout == "", context
    return lines[0]


def assert_nothing_left(run: Run, step: Step, before: set[str] | None = None, output: str = "model") -> None:
    """No model directory, no ``<output>.partial``, no ``.tmp`` folders: the directory is as it was."""
    assert not (run.cwd / f"{output}.partial").exists()
    assert [p for p in run.cwd.iterdir() if ".tmp" in p.name] == []
    assert step.tree == (run.tree_before if before is None else before)


def assert_model_saved(run: Run, step: Step, output: str = "model") -> None:
    context = f"{step.args}\nstderr: {step.stderr}"
    assert step.returncode == 0, context
    assert "Traceback" not in step.stderr, context
    assert f"model saved to {(run.cwd / output).resolve()}" in step.stdout.splitlines()
    assert (run.cwd / output / "manifest.json").is_file()
    assert (run.cwd / output / "model.safetensors").is_file()
    assert not (run.cwd / f"{output}.partial").exists()
    assert [p for p in run.cwd.iterdir() if ".tmp" in p.name] == []


# -- scenarios -----------------------------------------------------------------------------------


@scenario("missing_file")
def _missing_file(cwd: Path) -> list[list[str]]:
    return [["train", "--data", "nope.csv", "--target", "Survived", "-o", "model", *TRAIN]]


@scenario("empty_file")
def _empty_file(cwd: Path) -> list[list[str]]:
    (cwd / "empty.csv").write_bytes(b"")
    return [["train", "--data", "empty.csv", "--target", "Survived", "-o", "model", *TRAIN]]


@scenario("header_only")
def _header_only(cwd: Path) -> list[list[str]]:
    (cwd / "header.csv").write_text("age,fare,city,smoker,Survived\n")
    return [["train", "--data", "header.csv", "--target", "Survived", "-o", "model", *TRAIN]]


@scenario("target_typo")
def _target_typo(cwd: Path) -> list[list[str]]:
    write_csv(cwd / "data.csv")
    return [["train", "--data", "data.csv", "--target", "Survivd", "-o", "model", *TRAIN]]


@scenario("one_class")
def _one_class(cwd: Path) -> list[list[str]]:
    write_csv(cwd / "data.csv", make_table().assign(Survived=1))
    return [["train", "--data", "data.csv", "--target", "Survived", "-o", "model", *TRAIN]]


@scenario("all_missing_feature")
def _all_missing_feature(cwd: Path) -> list[list[str]]:
    write_csv(cwd / "data.csv", make_table().assign(fare=np.nan))  # written as empty cells
    return [["train", "--data", "data.csv", "--target", "Survived", "-o", "model", *TRAIN]]


MALFORMED_LINES = [4, 17, 150]  # physical line numbers (line 1 is the header)


@scenario("malformed_rows")
def _malformed_rows(cwd: Path) -> list[list[str]]:
    lines = (write_csv(cwd / "data.csv")).read_text().splitlines()
    for n in MALFORMED_LINES:
        lines[n - 1] += ",surplus,fields"
    (cwd / "data.csv").write_text("\n".join(lines) + "\n")
    base = ["train", "--data", "data.csv", "--target", "Survived", "-o", "model", *TRAIN]
    return [base, [*base, "--skip-bad-rows"]]


CONFIGS = {
    "config_unknown_key": ("training: {epoch: 3}\n", ["unknown config key 'training.epoch'", "did you mean 'epochs'"]),
    "config_wrong_type": ("training: {epochs: ten}\n", ["training.epochs", "valid integer", '"ten"']),
    "config_invalid_yaml": ("training:\n  epochs: [3\n  seed: 1\n", ["config config.yaml is not valid YAML at line 3"]),
}


def _config_scenario(name: str, text: str) -> None:
    @scenario(name)
    def _config(cwd: Path) -> list[list[str]]:
        write_csv(cwd / "data.csv")
        (cwd / "config.yaml").write_text(text)
        return [["train", "--data", "data.csv", "--target", "Survived", "--config", "config.yaml", "-o", "model", "-q"]]


for _name, (_text, _) in CONFIGS.items():
    _config_scenario(_name, _text)

SMART_CITY = "\u201cNew York\u201d"  # cp1252 bytes 0x93 ... 0x94: not valid UTF-8


@scenario("encoding")
def _encoding(cwd: Path) -> list[list[str]]:
    df = make_table()
    df["city"] = df["city"].replace({"Rome": SMART_CITY})
    df.to_csv(cwd / "data.csv", index=False, encoding="cp1252")
    base = ["train", "--data", "data.csv", "--target", "Survived", "-o", "model", *TRAIN]
    return [base, [*base, "--encoding", "cp1252"]]


UNSEEN = ["Atlantis", "Narnia"]  # two city values never seen in training


@scenario("predict")
def _predict(cwd: Path) -> list[list[str]]:
    write_csv(cwd / "train.csv")
    new = make_table(n=6, seed=1).drop(columns=["Survived"])
    new.drop(columns=["age"]).to_csv(cwd / "no_age.csv", index=False)
    rows = new.iloc[[0, 0, 1]].reset_index(drop=True)  # rows 0 and 1 identical except the unseen city
    rows["city"] = [UNSEEN[0], UNSEEN[1], "Paris"]
    rows.to_csv(cwd / "unseen.csv", index=False)
    return [
        ["train", "--data", "train.csv", "--target", "Survived", "-o", "model", *TRAIN],
        ["predict", "model", "--data", "no_age.csv", "-o", "preds_no_age.csv"],
        ["predict", "model", "--data", "unseen.csv", "-o", "preds.csv"],
    ]


@scenario("output_exists")
def _output_exists(cwd: Path) -> list[list[str]]:
    write_csv(cwd / "data.csv")
    (cwd / "model").mkdir()
    (cwd / "model" / "keep.txt").write_text("precious\n")
    return [["train", "--data", "data.csv", "--target", "Survived", "-o", "model", *TRAIN]]


@scenario("resume_without_checkpoint")
def _resume_without_checkpoint(cwd: Path) -> list[list[str]]:
    write_csv(cwd / "data.csv")
    return [["train", "--data", "data.csv", "--target", "Survived", "-o", "model", "--resume", *TRAIN]]


def _not_a_model(command: str) -> None:
    @scenario(f"{command}_not_a_model")
    def _run(cwd: Path) -> list[list[str]]:
        write_csv(cwd / "data.csv")
        (cwd / "notamodel").mkdir()
        (cwd / "notamodel" / "notes.txt").write_text("just a folder\n")
        return [[command, "notamodel", "--data", "data.csv"]]


for _command in ("evaluate", "predict"):
    _not_a_model(_command)

HELP = {
    "help_top": ([], ["Usage: python -m loopml [OPTIONS] COMMAND", "train", "evaluate", "predict", "describe",
                      "schema", "report", "cv", "explain", "runs", "models"]),
    "help_train": (["train"], ["Usage: python -m loopml train [OPTIONS]", "--data", "--target", "--config",
                               "--resume", "--overwrite", "--skip-bad-rows", "--encoding"]),
    "help_evaluate": (["evaluate"], ["Usage: python -m loopml evaluate [OPTIONS]", "Model directory", "NAME@alias",
                                     "--data", "--output", "--report", "--store"]),
    "help_predict": (["predict"], ["Usage: python -m loopml predict [OPTIONS]", "Model directory", "--data",
                                   "--include-inputs", "--store"]),
    "help_describe": (["describe"], ["Usage: python -m loopml describe [OPTIONS]", "--data", "--target",
                                     "--output", "--encoding"]),
    "help_schema": (["schema"], ["Usage: python -m loopml schema [OPTIONS]", "JSON Schema", "--output"]),
}


def _help_scenario(name: str, args: list[str]) -> None:
    @scenario(name)
    def _help(cwd: Path) -> list[list[str]]:
        return [[*args, "--help"]]


for _name, (_args, _) in HELP.items():
    _help_scenario(_name, _args)


# -- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "message"), [
    ("missing_file", "error: file not found: nope.csv"),
    ("empty_file", "error: file is empty: empty.csv"),
    ("header_only", "error: no data rows in header.csv"),
])
def test_unreadable_data_file(runs: Runs, case: str, message: str) -> None:
    run = runs[case]
    line = assert_user_error(run.steps[0])
    assert line == message
    assert_nothing_left(run, run.steps[0])


@uses("target_typo")
def test_absent_target_suggests_nearest_column(runs: Runs) -> None:
    run = runs["target_typo"]
    line = assert_user_error(run.steps[0], "target column 'Survivd' not found", "(did you mean 'Survived'?)")
    assert line.endswith("columns: age, fare, city, smoker, Survived")
    assert_nothing_left(run, run.steps[0])


@uses("one_class")
def test_target_with_one_class(runs: Runs) -> None:
    run = runs["one_class"]
    assert_user_error(run.steps[0], "target 'Survived' has only one class in the training rows (1)", "at least two")
    assert_nothing_left(run, run.steps[0])


@uses("all_missing_feature")
def test_entirely_missing_feature_column(runs: Runs) -> None:
    run = runs["all_missing_feature"]
    assert_user_error(run.steps[0], "column 'fare' is entirely missing (200 rows)", "exclude")
    assert_nothing_left(run, run.steps[0])


@uses("malformed_rows")
def test_malformed_rows_are_listed_then_skipped(runs: Runs) -> None:
    run = runs["malformed_rows"]
    failed, skipped = run.steps
    assert_user_error(failed, "data.csv: 3 malformed row(s) with too many fields, at line(s) 4, 17, 150",
                      "--skip-bad-rows")
    assert_nothing_left(run, failed)

    assert_model_saved(run, skipped)
    assert "skipped 3 malformed row(s) at line(s) [4, 17, 150]" in skipped.stderr.splitlines()


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config(runs: Runs, case: str) -> None:
    run = runs[case]
    assert_user_error(run.steps[0], *CONFIGS[case][1])
    assert_nothing_left(run, run.steps[0])


@uses("encoding")
def test_wrong_encoding_then_explicit_encoding(runs: Runs) -> None:
    run = runs["encoding"]
    failed, fixed = run.steps
    assert_user_error(failed, "cannot decode data.csv as utf-8", "byte 0x93", "--encoding", "cp1252")
    assert_nothing_left(run, failed)

    assert_model_saved(run, fixed)
    pre = json.loads((run.cwd / "model" / "preprocessing.json").read_text(encoding="utf-8"))
    assert set(pre["features"]["city"]["state"]["vocab"]) == {"Paris", "Oslo", SMART_CITY, "Lima"}


@uses("predict")
def test_predict_input_missing_a_feature_column(runs: Runs) -> None:
    run = runs["predict"]
    trained, no_age, _ = run.steps
    assert_model_saved(run, trained)
    assert_user_error(no_age, "input is missing column(s): age")
    assert_nothing_left(run, no_age, before=trained.tree)  # no preds_no_age.csv, no temporary file


@uses("predict")
def test_predict_unseen_category_maps_to_unknown(runs: Runs) -> None:
    run = runs["predict"]
    predicted = run.steps[2]
    assert predicted.returncode == 0, predicted.stderr
    assert "Traceback" not in predicted.stderr
    assert predicted.stdout == "3 predictions written to preds.csv\n"
    preds = pd.read_csv(run.cwd / "preds.csv")
    assert list(preds.columns) == ["Survived_prediction", "Survived_probability_0", "Survived_probability_1"]
    assert len(preds) == 3
    assert preds["Survived_prediction"].isin([0, 1]).all()
    np.testing.assert_allclose(preds["Survived_probability_0"] + preds["Survived_probability_1"], 1.0, rtol=1e-6)
    # both unseen values land in the same 'unknown' bucket: same inputs otherwise, same prediction
    assert preds.loc[0, "Survived_prediction"] == preds.loc[1, "Survived_prediction"]
    np.testing.assert_allclose(preds.iloc[0, 1:].to_numpy(float), preds.iloc[1, 1:].to_numpy(float), rtol=1e-6)


@uses("output_exists")
def test_existing_output_needs_overwrite(runs: Runs) -> None:
    run = runs["output_exists"]
    assert_user_error(run.steps[0], "output model already exists", "--overwrite")
    assert_nothing_left(run, run.steps[0])  # the tree is unchanged: model/ holds only keep.txt
    assert (run.cwd / "model" / "keep.txt").read_text() == "precious\n"


@uses("resume_without_checkpoint")
def test_resume_without_checkpoint(runs: Runs) -> None:
    run = runs["resume_without_checkpoint"]
    assert_user_error(run.steps[0], "nothing to resume: no checkpoint in model.partial")
    assert_nothing_left(run, run.steps[0])


@pytest.mark.parametrize("case", ["evaluate_not_a_model", "predict_not_a_model"])
def test_not_a_model_directory(runs: Runs, case: str) -> None:
    run = runs[case]
    line = assert_user_error(run.steps[0])
    assert line == "error: not a loopml model directory (no manifest.json): notamodel"
    assert_nothing_left(run, run.steps[0])


@pytest.mark.parametrize("case", list(HELP))
def test_help(runs: Runs, case: str) -> None:
    run = runs[case]
    step = run.steps[0]
    assert step.returncode == 0, step.stderr
    assert step.stderr == ""
    for fragment in HELP[case][1]:
        assert fragment in step.stdout, f"{fragment!r} not in help:\n{step.stdout}"
    assert step.tree == run.tree_before == set()
