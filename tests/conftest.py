import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("LOOPML_TEST_POSTGRES_URL")
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
    return make_tabular()


def make_tabular() -> pd.DataFrame:
    """The ``tabular`` fixture's table (for module-scoped fixtures, which cannot use a test's fixture)."""
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


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty store: a SQLite file, or a private schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    if not PG_URL:
        pytest.skip("LOOPML_TEST_POSTGRES_URL is not set (.ci/run sets it to the local PostgreSQL server)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(scope="session")
def recoded_champion(tmp_path_factory):
    """The loop tests' champion (tests/test_loop.py ``make``: 900 rows, 10 epochs), trained once per session:
    test_loop, test_loop_turns and test_loop_worker all start from it (read only; stores copy it)."""
    from test_loop import make

    import loopml

    root = tmp_path_factory.mktemp("champion")
    data = root / "train.csv"
    make(900, 0).to_csv(data, index=False)
    model = loopml.Model(target="label", training={"epochs": 10}).fit(data, progress=False, cache_dir=False)
    return model, model.save(root / "champion")


def stop_after_first_checkpoint(monkeypatch) -> Callable[[], None]:
    """Make every training stop with KeyboardInterrupt right after its epoch-0 checkpoint (what kill -9 leaves
    behind: the epoch's checkpoint and nothing after it); returns the function that undoes it."""
    from loopml.train.callbacks import Checkpoint

    save = Checkpoint.on_epoch_end

    def save_then_stop(self, trainer, logs):
        save(self, trainer, logs)
        if logs["epoch"] == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "on_epoch_end", save_then_stop)
    return lambda: monkeypatch.setattr(Checkpoint, "on_epoch_end", save)


@pytest.fixture
def cli_here(monkeypatch, capfd):
    """Run ``loopml ARGS`` through ``loopml.cli.main`` in this process, in folder ``cwd``: the CLI's own code
    without a fresh interpreter's ~7 CPU-s of imports (torch, scikit-learn), for steps whose point is not
    being a separate process. ``env``: variables to set for the call (None: unset)."""
    import subprocess

    from loopml.cli import main

    def run(args: list[str], cwd: Path, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        for name, value in (env or {}).items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        capfd.readouterr()
        code = main(list(args))
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


# -- the suite's cost per test, in CPU seconds (this process and its children), robust to a loaded machine --
CPU_REPORT = os.environ.get("LOOPML_TEST_CPU_REPORT")


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With LOOPML_TEST_CPU_REPORT=FILE: one JSON line per test (setup + call + teardown CPU and wall seconds)."""
    if not CPU_REPORT:
        yield
        return
    import json
    import time

    cpu, wall = _cpu_seconds(), time.perf_counter()
    yield
    with open(CPU_REPORT, "a") as out:
        out.write(json.dumps({"test": item.nodeid, "cpu_s": round(_cpu_seconds() - cpu, 2),
                              "wall_s": round(time.perf_counter() - wall, 2)}) + "\n")
