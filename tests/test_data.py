"""Reading tables (formats, dialects, encodings), column-type inference via ``describe``, splitting, ``schema``."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.model_selection import train_test_split

from loopml.data.read import DataConfig, read_table
from loopml.data.split import SplitConfig, split_frame
from loopml.errors import LoopmlError

ROOT = Path(__file__).resolve().parents[1]
TITANIC = ROOT / ".." / "shared" / "datasets" / "titanic" / "train.csv"


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LOOPML_DEBUG"}
    env.update(LOOPML_CACHE_DIR=str(cwd / ".cache"), COLUMNS="200",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "loopml", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


# -- reading -------------------------------------------------------------------------------------

TABLE = pd.DataFrame({
    "age": [22, 38, 26, 35, 54],
    "fare": [7.25, 71.2833, 7.925, 53.1, 51.8625],
    "sex": ["male", "female", "female", "female", "male"],
    "city": ["Paris", "Oslo", "Rome", "Lima", "Oslo"],
})


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl", "dataframe", "records"])
def test_every_format_reads_to_the_same_table(tmp_path: Path, fmt: str) -> None:
    writers = {
        "csv": lambda p: TABLE.to_csv(p, index=False),
        "tsv": lambda p: TABLE.to_csv(p, sep="\t", index=False),
        "parquet": lambda p: TABLE.to_parquet(p, index=False),
        "jsonl": lambda p: TABLE.to_json(p, orient="records", lines=True),
    }
    if fmt == "dataframe":
        source = TABLE
    elif fmt == "records":
        source = TABLE.to_dict(orient="records")
    else:
        source = tmp_path / f"table.{fmt}"
        writers[fmt](source)
    df = read_table(source, DataConfig())
    pd.testing.assert_frame_equal(df, TABLE)
    assert df.dtypes["age"] == np.int64 and df.dtypes["fare"] == np.float64


def test_format_setting_overrides_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "table.data"  # unknown extension: read as CSV unless told otherwise
    TABLE.to_json(path, orient="records", lines=True)
    pd.testing.assert_frame_equal(read_table(path, DataConfig(format="jsonl")), TABLE)


def test_dataframe_input_is_copied_with_string_column_names() -> None:
    frame = pd.DataFrame({0: [1, 2], 1: ["a", "b"]})
    df = read_table(frame)
    assert list(df.columns) == ["0", "1"]
    assert list(frame.columns) == [0, 1]  # the caller's frame is not modified


def test_header_and_no_header_with_names(tmp_path: Path) -> None:
    (tmp_path / "with.csv").write_text("n,s\n1,x\n2,y\n")
    (tmp_path / "without.csv").write_text("1,x\n2,y\n")
    expected = pd.DataFrame({"n": [1, 2], "s": ["x", "y"]})
    pd.testing.assert_frame_equal(read_table(tmp_path / "with.csv"), expected)
    pd.testing.assert_frame_equal(read_table(tmp_path / "without.csv", DataConfig(header=False, names=["n", "s"])),
                                  expected)
    # without names, a headerless file gets positional names; with the default header=True its first row is one
    assert list(read_table(tmp_path / "without.csv", DataConfig(header=False)).columns) == ["0", "1"]
    assert list(read_table(tmp_path / "without.csv").columns) == ["1", "x"]


def test_names_rename_parquet_columns_and_must_match_the_width(tmp_path: Path) -> None:
    TABLE.to_parquet(tmp_path / "t.parquet", index=False)
    df = read_table(tmp_path / "t.parquet", DataConfig(names=["A", "F", "S", "C"]))
    assert list(df.columns) == ["A", "F", "S", "C"]
    assert df["A"].tolist() == TABLE["age"].tolist()
    with pytest.raises(LoopmlError, match="data.names has 2 names but t.parquet has 4 columns"):
        read_table(tmp_path / "t.parquet", DataConfig(names=["A", "F"]))


def test_semicolon_delimiter(tmp_path: Path) -> None:
    text = "a;b;c\n1;2,5;x\n3;4,5;y\n"  # decimal commas: only ';' separates fields
    expected = pd.DataFrame({"a": [1, 3], "b": ["2,5", "4,5"], "c": ["x", "y"]})
    (tmp_path / "semi.csv").write_text(text)
    (tmp_path / "semi.txt").write_text(text)
    pd.testing.assert_frame_equal(read_table(tmp_path / "semi.csv", DataConfig(delimiter=";")), expected)
    pd.testing.assert_frame_equal(read_table(tmp_path / "semi.txt"), expected)  # sniffed: no extension rule
    assert list(read_table(tmp_path / "semi.csv").columns) == ["a;b;c"]  # .csv means ',' unless told


def test_comment_lines_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("# exported 2024-01-01\na,b\n1,x\n# a note in the middle\n2,y\n")
    df = read_table(tmp_path / "c.csv", DataConfig(comment="#"))
    pd.testing.assert_frame_equal(df, pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))


def test_na_values(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text("a,b,c\n1,?,x\n2,NA,?\n3,,-\n")
    df = read_table(tmp_path / "q.csv")  # '?' is missing by default, besides pandas' own ('', 'NA', ...)
    assert df["b"].isna().tolist() == [True, True, True]
    assert df["c"].isna().tolist() == [False, True, False]
    assert df.loc[2, "c"] == "-"
    custom = read_table(tmp_path / "q.csv", DataConfig(na_values=["-"]))  # replaces '?', keeps pandas' own
    assert custom["b"].tolist()[0] == "?" and custom["b"].isna().tolist() == [False, True, True]
    assert custom["c"].tolist()[:2] == ["x", "?"] and pd.isna(custom.loc[2, "c"])


def test_cp1252_file_with_its_encoding(tmp_path: Path) -> None:
    path = tmp_path / "cp.csv"
    path.write_bytes("name,price\n\u201cCaf\u00e9\u201d,5\u20ac\nna\u00efve \u2013 ok,3\n".encode("cp1252"))
    assert b"\x93Caf\xe9\x94" in path.read_bytes()  # really cp1252 bytes, invalid as UTF-8
    df = read_table(path, DataConfig(encoding="cp1252"))
    assert df["name"].tolist() == ["\u201cCaf\u00e9\u201d", "na\u00efve \u2013 ok"]
    assert df["price"].tolist() == ["5\u20ac", "3"]
    with pytest.raises(LoopmlError, match=r"cannot decode cp.csv as utf-8 \(byte 0x93"):
        read_table(path)


# -- describe -> edit -> train -------------------------------------------------------------------


def test_describe_then_edit_the_schema_and_train_with_it(tmp_path: Path, cli_here) -> None:
    if not TITANIC.is_file():
        pytest.skip(f"Titanic data not found at {TITANIC} (expected /work/shared/datasets/titanic/train.csv)")
    data = str(TITANIC.resolve())
    described = cli(["describe", "--data", data, "--target", "Survived", "-o", "schema.yaml"], tmp_path)
    assert described.returncode == 0, described.stderr
    assert described.stdout.startswith("schema written to schema.yaml")

    text = (tmp_path / "schema.yaml").read_text()
    schema = yaml.safe_load(text)
    assert schema["target"] == {"column": "Survived", "type": "binary"}
    types = {name: section["type"] for name, section in schema["features"].items()}
    assert set(types) == {"PassengerId", "Pclass", "Name", "Sex", "Age", "SibSp", "Parch", "Ticket", "Fare",
                          "Cabin", "Embarked"}
    assert {k: types[k] for k in ("Name", "Sex", "Age", "Embarked", "PassengerId", "Pclass")} == {
        "Name": "text", "Sex": "binary", "Age": "number", "Embarked": "category", "PassengerId": "skip",
        "Pclass": "number",
    }

    edited, n = re.subn(r"(?m)^(  Pclass: )\{type: number\}", r"\1{type: category}", text)
    assert n == 1
    (tmp_path / "schema.yaml").write_text(edited)
    assert yaml.safe_load(edited)["features"]["Pclass"] == {"type": "category"}

    trained = cli_here(["train", "--data", data, "--config", "schema.yaml", "-o", "model", "--epochs", "2", "-q"],
                       tmp_path, env={"LOOPML_DEBUG": None})
    assert trained.returncode == 0, trained.stderr
    config = yaml.safe_load((tmp_path / "model" / "config.yaml").read_text())
    assert config["target"]["column"] == "Survived"
    saved = {name: section["type"] for name, section in config["features"].items()}
    assert saved == {**types, "Pclass": "category"}
    model_schema = json.loads((tmp_path / "model" / "schema.json").read_text())
    pclass = next(c for c in model_schema["columns"] if c["name"] == "Pclass")
    assert (pclass["type"], pclass["reason"]) == ("category", "set in the config")


# -- splitting -----------------------------------------------------------------------------------


def _rows(df: pd.DataFrame) -> set[tuple]:
    return set(df.itertuples(index=False, name=None))


def _with_duplicates(seed: int = 0) -> tuple[pd.DataFrame, int]:
    """150 distinct rows, each repeated 1-6 times, shuffled. Returns (frame, distinct count)."""
    rng = np.random.default_rng(seed)
    distinct = pd.DataFrame({"x": np.arange(150), "c": rng.choice(list("abc"), 150), "y": rng.integers(0, 2, 150)})
    repeated = distinct.loc[distinct.index.repeat(rng.integers(1, 7, 150))]
    return repeated.sample(frac=1.0, random_state=seed).reset_index(drop=True), len(distinct)


def test_split_keeps_duplicates_in_one_split() -> None:
    df, n_distinct = _with_duplicates()
    assert len(df) - n_distinct > 300  # many duplicates
    naive_train, naive_test = train_test_split(df, test_size=0.2, random_state=0)
    assert _rows(naive_train) & _rows(naive_test)  # so a row-by-row split would put copies on both sides
    parts, report = split_frame(df, "y", SplitConfig(duplicates="group"), classification=True)
    assert report["duplicate_rows"] == len(df) - n_distinct
    assert sum(len(p) for p in parts.values()) == len(df)  # grouped, not dropped
    assert sorted(itertools.chain.from_iterable(p.index for p in parts.values())) == list(range(len(df)))
    for a, b in itertools.combinations(parts, 2):
        assert not _rows(parts[a]) & _rows(parts[b]), f"a row is in both {a} and {b}"
    assert all(len(p) for p in parts.values())


def test_split_can_drop_duplicates() -> None:
    df, n_distinct = _with_duplicates()
    parts, report = split_frame(df, "y", SplitConfig(duplicates="drop"), classification=True)
    assert report["duplicate_rows"] == len(df) - n_distinct
    assert sum(len(p) for p in parts.values()) == n_distinct
    everything = pd.concat(parts.values())
    assert not everything.duplicated().any()
    assert _rows(everything) == _rows(df)


def test_stratified_split_keeps_class_ratios() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat(["common", "middle", "rare"], [600, 300, 100])
    df = pd.DataFrame({"x": np.arange(1000), "y": rng.permutation(y)})
    parts, report = split_frame(df, "y", SplitConfig(validation=0.1, test=0.2, seed=7), classification=True)
    assert report["sizes"] == {"train": 700, "validation": 100, "test": 200}
    overall = df["y"].value_counts(normalize=True)
    for name, part in parts.items():
        ratios = part["y"].value_counts(normalize=True).reindex(overall.index, fill_value=0.0)
        assert (ratios - overall).abs().max() <= 0.02, f"{name}: {ratios.to_dict()}"


def test_split_column_is_honoured() -> None:
    df = pd.DataFrame({
        "x": np.arange(12),
        "y": [0, 1] * 6,
        "part": ["train"] * 6 + ["validation"] * 2 + ["test"] * 4,
    })
    parts, report = split_frame(df, "y", SplitConfig(column="part"), classification=True)
    assert report["sizes"] == {"train": 6, "validation": 2, "test": 4}
    assert parts["train"]["x"].tolist() == [0, 1, 2, 3, 4, 5]
    assert parts["validation"]["x"].tolist() == [6, 7]
    assert parts["test"]["x"].tolist() == [8, 9, 10, 11]
    assert all(list(p.columns) == ["x", "y"] for p in parts.values())  # the split column is not a feature

    bad = df.assign(part=df["part"].replace({"test": "holdout"}))
    with pytest.raises(LoopmlError, match="split column 'part' has value 'holdout'"):
        split_frame(bad, "y", SplitConfig(column="part"), classification=True)


def test_same_seed_same_split() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=500), "y": rng.integers(0, 2, 500)})

    def indices(seed: int) -> dict[str, list[int]]:
        parts, _ = split_frame(df, "y", SplitConfig(seed=seed), classification=True)
        return {name: sorted(p.index) for name, p in parts.items()}

    assert indices(11) == indices(11)
    assert indices(11) != indices(12)


# -- loopml schema -------------------------------------------------------------------------------


def test_schema_command_prints_json_schema(tmp_path: Path) -> None:
    result = cli(["schema"], tmp_path)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert {"training", "features", "target", "data", "split"} <= set(schema["properties"])
    assert schema["required"] == ["target"]
    assert schema["additionalProperties"] is False
    features = schema["properties"]["features"]["additionalProperties"]
    assert set(features["discriminator"]["mapping"]) == {"audio", "binary", "category", "date", "image", "number", "skip", "text"}
    training = schema["$defs"]["TrainingConfig"]
    assert training["properties"]["epochs"] == {"default": 50, "minimum": 1, "title": "Epochs", "type": "integer"}
    refs = re.findall(r'"\$ref": "#/\$defs/([^"]+)"', result.stdout)
    assert refs and set(refs) <= set(schema["$defs"])  # every reference resolves
