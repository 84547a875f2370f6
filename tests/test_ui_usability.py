"""The dashboard as a new user meets it: empty states that name real commands, timestamps that say their zone,
counts in the right number, wide tables that scroll inside the page (not the page) on a narrow screen, and links
from a model to its monitor and labelling queue."""

import re
import shutil
import time

import pytest
from fastapi.testclient import TestClient

from loopml.registry import Store, db
from loopml.ui.app import create_ui_app
from loopml.ui.context import UISettings, when, when_text


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"))


def client(store: Store) -> TestClient:
    return TestClient(create_ui_app(UISettings(admin_token="t"), store=store))


def seed_one_model(store: Store, now: float) -> None:
    """One run, one model with one version and 30 metric columns (a wide table), nothing else."""
    metrics = {"test": {f"metric_{i:02d}": 0.5 for i in range(30)}}
    with store.writer.begin() as c:
        c.execute(db.runs.insert(), [{"id": "a" * 32, "experiment": "e", "status": "finished", "started_at": now,
                                      "metrics": metrics}])
        c.execute(db.registered_models.insert(), [{"name": "income", "created_at": now, "latest_version": 1,
                                                   "description": ""}])
        c.execute(db.model_versions.insert(), [{"name": "income", "version": 1, "artifact_uri": "x",
                                                "metrics": metrics, "created_at": now, "run_id": "a" * 32}])


def test_empty_states_name_commands_that_exist(store):
    c = client(store)
    for path in ("/monitor", "/feedback"):
        html = c.get(path).text
        assert "loopml register NAME --run" not in html  # no such command
        assert "loopml train … --register NAME" in html and "loopml models register RUN_OR_DIR --name NAME" in html


def test_timestamps_say_their_zone():
    ts = 1_796_000_000.0
    assert when_text(ts).endswith(" UTC") and when_text(None) == "—" and when_text(float("nan")) == "—"
    assert str(when(ts)) == f'<time datetime="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))}">{when_text(ts)}</time>'


def test_pages_show_utc_times_and_singular_counts(store):
    seed_one_model(store, time.time())
    c = client(store)
    for path in ("/runs", "/models", "/models/income"):
        html = c.get(path).text
        assert re.search(r'<time datetime="[0-9T:-]+Z">[0-9 :-]+ UTC</time>', html), path
        assert " · 1 rows" not in html and " · 1 row<" in html, path
    monitor = c.get("/monitor", params={"model": "income"}).text
    assert "last 0 windows" not in monitor and "<h2>Drift</h2>" in monitor


def test_model_page_links_to_its_monitor_and_labelling_queue(store):
    seed_one_model(store, time.time())
    html = client(store).get("/models/income").text
    assert 'href="/monitor?model=income"' in html and 'href="/feedback?model=income"' in html


def test_wide_tables_scroll_inside_their_box(store):
    seed_one_model(store, time.time())
    c = client(store)
    assert re.search(r'<div class="scroll"><table id="runs-table">', c.get("/runs").text)
    assert re.search(r'<div class="scroll"><table id="versions-table">', c.get("/models/income").text)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_no_page_is_wider_than_a_narrow_window(store, tmp_path):
    """At 800 px the page itself never scrolls sideways (a 30-metric runs table scrolls in its own box)."""
    import socket
    import threading

    import uvicorn
    from playwright.sync_api import sync_playwright

    seed_one_model(store, time.time())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_ui_app(UISettings(admin_token="t"), store=store), port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                              "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 800, "height": 768})
            for path in ("/", "/runs", "/models", "/models/income", "/monitor?model=income", "/decisions"):
                page.goto(f"http://127.0.0.1:{port}{path}")
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= 800, f"{path} is {width} px wide at an 800 px window"
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_serve_workers_get_time_to_start():
    """`serve --ui --workers 2` on a busy machine: uvicorn's 5 s health ping killed each worker while it imported
    torch and loaded its model, and respawned it forever (the port never answered)."""
    import inspect

    from loopml import cli

    assert cli.WORKER_HEALTHCHECK_S >= 60
    assert "timeout_worker_healthcheck=WORKER_HEALTHCHECK_S" in inspect.getsource(cli)


def test_a_long_text_input_is_capped_in_the_queue():
    """A 7,000-character logged text made its queue row 1,600 px tall (two screens per row): the text box is capped
    and scrolls on its own."""
    from pathlib import Path

    css = (Path(__file__).resolve().parents[1] / "loopml/ui/static/style.css").read_text()
    rule = re.search(r"dl\.inputs \.text \{([^}]*)\}", css)
    assert rule and "max-height" in rule.group(1) and "overflow-y: auto" in rule.group(1)
