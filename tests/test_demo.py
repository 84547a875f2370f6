"""The loop demo's own guards (``examples/demo_loop.py``): it never deletes a folder it did not make, and says
where it looks for its data. The demo itself runs as ``make demo`` (too slow for the suite)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo_loop", ROOT / "examples" / "demo_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_out_is_deleted_only_when_the_demo_made_it(demo, tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "important.txt").write_text("keep me")
    with pytest.raises(demo.CannotRun, match="not empty and was not made by the demo"):
        demo.prepare_out(precious)
    assert (precious / "important.txt").read_text() == "keep me"
    with pytest.raises(demo.CannotRun, match="is not a folder"):
        demo.prepare_out(precious / "important.txt")
    with pytest.raises(demo.CannotRun):  # the repository itself (or a folder above it) is never wiped
        demo.prepare_out(ROOT)
    fresh = tmp_path / "new" / "out"
    demo.prepare_out(fresh)  # absent: made, with the marker
    (fresh / "old-run.txt").write_text("from the last run")
    demo.prepare_out(fresh)  # made by the demo: emptied for the new run
    assert sorted(p.name for p in fresh.iterdir()) == [demo.MARKER]


def test_the_data_is_looked_for_where_the_user_points(demo, tmp_path, monkeypatch):
    monkeypatch.delenv(demo.DATASETS_ENV, raising=False)
    with pytest.raises(demo.CannotRun, match=f"--data DIR or {demo.DATASETS_ENV}=DIR"):
        demo.find_adult(tmp_path / "nope")
    adult = tmp_path / "sets" / "adult"
    adult.mkdir(parents=True)
    (adult / "adult.data").write_text("")
    (adult / "adult.test").write_text("")
    assert demo.find_adult(tmp_path / "sets") == adult  # the folder holding adult/
    assert demo.find_adult(adult) == adult  # or the adult folder itself
    monkeypatch.setenv(demo.DATASETS_ENV, str(tmp_path / "sets"))
    assert demo.find_adult(None) == adult
