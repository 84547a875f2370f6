"""Loaders for ../shared/datasets, shared by tests and benchmarks (never copied into the project).

Each returns plain DataFrames read with loopml's own reader; dataset quirks (adult.test's trailing
'.' on labels, sms_spam's raw quotes) are handled here, not in loopml.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from loopml.data.read import DataConfig, read_table

ROOT = Path(__file__).resolve().parent.parent / ".." / "shared" / "datasets"
ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
                 "income"]


def available(name: str = "") -> bool:
    return (ROOT / name).is_dir()


def adult() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The official train and test files; test labels lose their trailing '.'."""
    cfg = DataConfig(header=False, names=ADULT_COLUMNS, comment="|")
    train = read_table(ROOT / "adult" / "adult.data", cfg)
    test = read_table(ROOT / "adult" / "adult.test", cfg)
    test["income"] = test["income"].str.rstrip(".")
    return train, test


def titanic() -> pd.DataFrame:
    return read_table(ROOT / "titanic" / "train.csv")


def california_housing() -> pd.DataFrame:
    return read_table(ROOT / "california_housing" / "housing.csv")


def sms_spam() -> pd.DataFrame:
    cfg = DataConfig(delimiter="\t", header=False, names=["label", "text"], quoting=False)
    return read_table(ROOT / "sms_spam" / "SMSSpamCollection", cfg)


def ag_news() -> pd.DataFrame:
    """class index, and text = title + ' ' + description (as in ../shared/ANCHORS.md)."""
    df = read_table(ROOT / "ag_news_test" / "test.csv", DataConfig(header=False, names=["label", "title", "description"]))
    return pd.DataFrame({"label": df["label"], "text": df["title"] + " " + df["description"]})


def subsample(df: pd.DataFrame, n: int, by: str, seed: int = 0) -> pd.DataFrame:
    """A fixed-seed, class-stratified subset of about ``n`` rows."""
    frac = min(1.0, n / len(df))
    return df.groupby(by, group_keys=False).sample(frac=frac, random_state=seed).sort_index()


def mnist() -> pd.DataFrame:
    """The 10k official MNIST test images as a DataFrame column of 28x28 uint8 arrays."""
    import gzip

    import numpy as np

    folder = ROOT / "mnist_test"
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    return pd.DataFrame({"image": list(images), "label": labels.astype(int)})


def cifar10_folder() -> Path:
    """The folder-per-class layout root: train/<class>/*.jpg."""
    return ROOT / "cifar10_train_subset" / "train"
