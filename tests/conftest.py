import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for bench.realdata

from bench import realdata  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own tensor cache, so no test depends on another's leftovers."""
    monkeypatch.setenv("LOOPML_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    # and its own registry store and artifact root (never ./.loopml of the checkout)
    registry = tmp_path_factory.mktemp("registry")
    monkeypatch.setenv("LOOPML_STORE", f"sqlite:///{registry / 'registry.db'}")
    monkeypatch.setenv("LOOPML_ARTIFACTS", str(registry / "artifacts"))


def needs_dataset(name: str):
    return pytest.mark.skipif(
        not realdata.available(name), reason=f"../shared/datasets/{name} is not present on this machine"
    )


@pytest.fixture
def tabular() -> pd.DataFrame:
    """A small learnable table: numbers, a category, a flag, free text and a binary target."""
    rng = np.random.default_rng(0)
    n = 400
    x1, x2 = rng.normal(size=n), rng.exponential(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    score = 1.5 * x1 - x2 + (color == "red") * 1.0 + rng.normal(scale=0.5, size=n)
    words = np.where(score > 0, "great fine good", "poor bad awful")
    return pd.DataFrame({
        "x1": x1, "x2": x2, "color": color, "flag": rng.choice(["yes", "no"], size=n),
        "note": [f"{w} item number {i % 7}" for i, w in enumerate(words)],
        "label": np.where(score > 0, "pos", "neg"),
    })
