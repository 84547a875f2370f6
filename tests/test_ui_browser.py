"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright; nothing downloaded).

One small store per module (a real tiny model with 2 versions, 4 runs with learning curves, 41 logged
predictions of which one's input is ``<script>window.__xss=1</script>``, drift windows, decisions)
and one real ``loopml ui --admin-token`` process on a free loopback port. Every page's requests are
watched: one to anywhere but 127.0.0.1 is aborted and fails the test.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

import pytest
import sqlalchemy as sa

from bench.ui import BROWSER_ARGS, ui_server
from bench.ui_seed import seed

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the dev extra installs it
    sync_playwright = None

CHROMIUM = shutil.which("chromium")
TOKEN = "T-browser-test"
XSS = "<script>window.__xss=1</script>"

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install -e '.[dev]')"),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    from loopml.registry import Store

    root = tmp_path_factory.mktemp("ui_browser")
    url, artifacts = f"sqlite:///{root / 'registry.db'}", str(root / "artifacts")
    _ = Store(url, artifacts).artifacts  # the schema now: `loopml ui` starts (imports) while the model trains
    with ThreadPoolExecutor(1) as pool:
        seeding = pool.submit(seed, url, artifacts, runs=3, versions=0, predictions=40, drift_windows=3, epochs=2)
        with ui_server(url, artifacts, token=TOKEN, log=root / "ui.log") as base:
            yield {**seeding.result(), "base": base, "store": Store(url, artifacts)}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, dashboard):
    """A fresh context (no cookie) whose requests are logged; any not to 127.0.0.1 is aborted and fails the test."""
    context = browser.new_context(viewport={"width": 1366, "height": 850})
    context.set_default_timeout(15_000)
    seen, outside = [], []

    def watch(route):
        url = route.request.url
        seen.append(url)
        if urlsplit(url).hostname != "127.0.0.1":
            outside.append(url)
            route.abort()
        else:
            route.continue_()

    context.route("**/*", watch)
    tab = context.new_page()
    tab.seen, tab.outside = seen, outside
    yield tab
    context.close()
    assert not outside, f"requests left localhost: {outside}"


def login(page, base: str, path: str, token: str = TOKEN) -> None:
    page.goto(f"{base}/login?next={quote(path)}")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def alias_state(store, name: str) -> tuple[int | None, int]:
    from loopml.registry import db

    with store.engine.connect() as c:
        events = c.execute(sa.select(sa.func.count()).select_from(db.alias_events)
                           .where(db.alias_events.c.name == name)).scalar()
    return store.alias_version(name, "production"), events


def test_runs_list_and_compare_two(page, dashboard):
    base, runs = dashboard["base"], dashboard["runs"]
    page.goto(base + "/runs")
    expect(page.locator("#runs-table tbody tr")).to_have_count(len(runs))
    for run_id in runs[:2]:
        page.get_by_label(f"compare run {run_id[:8]}").check()
    page.get_by_role("button", name="Compare selected").click()
    page.wait_for_url("**/runs/compare?**")
    expect(page.get_by_role("heading", name="Compare 2 runs")).to_be_visible()
    metrics = page.locator("#compare-metrics tbody tr")
    expect(metrics.first).to_contain_text("accuracy")
    assert metrics.count() >= 2
    plot = page.locator("img.plot").first
    plot.scroll_into_view_if_needed()
    page.wait_for_function("() => { const i = document.querySelector('img.plot'); "
                           "return i && i.complete && i.naturalWidth > 0; }")
    assert "/runs/compare/curve.png" in plot.get_attribute("src")


def test_open_model(page, dashboard):
    base = dashboard["base"]
    page.goto(base + "/models")
    page.get_by_role("link", name=dashboard["model"], exact=True).first.click()
    expect(page.get_by_role("heading", name=dashboard["model"], exact=True)).to_be_visible()
    for version in dashboard["model_versions"]:
        expect(page.locator(f'#versions-table tr[data-version="{version}"]')).to_be_visible()
    expect(page.locator('#aliases-table tr[data-alias="production"]')).to_contain_text("v1")
    expect(page.get_by_role("link", name="report").first).to_be_visible()


def test_promotion_refused_without_token(page, dashboard):
    base, store, name = dashboard["base"], dashboard["store"], dashboard["model"]
    before = alias_state(store, name)
    page.goto(f"{base}/models/{name}")
    expect(page.locator("#promote-form button[type=submit]")).to_be_disabled()
    login(page, base, f"/models/{name}", token="not-the-token")
    expect(page.get_by_role("alert")).to_contain_text("wrong admin token")
    # the form is inert for a visitor; a hand-made POST with that (cookie-less) browser is refused too
    response = page.request.post(f"{base}/models/{name}/promote",
                                 form={"version": "2", "alias": "production", "reason": "sneaky"})
    assert response.status == 401
    assert "log in with the admin token" in response.text()
    assert alias_state(store, name) == before


def test_promote_with_the_token(page, dashboard):
    base, store, name = dashboard["base"], dashboard["store"], dashboard["model"]
    current, events = alias_state(store, name)
    target = max(v for v in dashboard["model_versions"] if v != current)
    login(page, base, f"/models/{name}")
    page.wait_for_url(f"**/models/{name}")
    form = page.locator("#promote-form")
    form.get_by_label("Version").fill(str(target))
    form.get_by_label("Alias").fill("production")
    form.get_by_label("Reason").fill("browser test: v2 reviewed")
    with page.expect_navigation():
        form.get_by_role("button", name="Promote").click()
    assert page.url.endswith(f"/models/{name}#aliases"), page.locator("main").inner_text()
    expect(page.locator('#aliases-table tr[data-alias="production"]')).to_contain_text(f"v{target}")
    assert alias_state(store, name) == (target, events + 1)
    latest = store.alias_history(name, "production")[0]
    assert (latest["action"], latest["from_version"], latest["to_version"]) == ("promote", current, target)
    assert latest["reason"] == "browser test: v2 reviewed" and latest["actor"] == "ui"


def test_script_input_renders_as_text(page, dashboard):
    base, name = dashboard["base"], dashboard["model"]
    for path in (f"/feedback?model={name}&n=100", f"/monitor?model={name}"):
        page.goto(base + path)
        page.wait_for_load_state("load")
        assert page.evaluate("typeof window.__xss") == "undefined", path
    page.goto(f"{base}/feedback?model={name}&n=100")
    expect(page.get_by_text(XSS, exact=True)).to_be_visible()
    assert page.locator("#feedback-queue script").count() == 0


def test_label_three_by_click_and_one_by_key(page, dashboard):
    from loopml.registry import db

    base, store, name = dashboard["base"], dashboard["store"], dashboard["model"]
    login(page, base, f"/feedback?model={name}&n=100")
    page.wait_for_url("**/feedback?**")
    open_rows = page.locator("#feedback-queue tr.queue-row:not(.done)").filter(has_not_text="window.__xss")
    given = {}
    for label in ("neg", "pos", "neg"):
        row = open_rows.first
        pid = row.get_attribute("data-id")
        row.locator("button.label-button", has_text=label).click()
        expect(page.locator(f'#feedback-queue tr.done[data-id="{pid}"]')).to_have_count(1)
        given[pid] = label
    row = open_rows.first
    pid = row.get_attribute("data-id")
    row.focus()
    page.keyboard.press("2")  # the second class: pos
    expect(page.locator(f'#feedback-queue tr.done[data-id="{pid}"]')).to_have_count(1)
    given[pid] = "pos"
    with store.engine.connect() as c:
        rows = dict(c.execute(sa.select(db.feedback.c.prediction_id, db.feedback.c.label)
                              .where(db.feedback.c.prediction_id.in_(list(given)))).all())
    assert rows == given


def test_no_request_leaves_localhost(page, dashboard):
    base, name, runs = dashboard["base"], dashboard["model"], dashboard["runs"]
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    for path in ("/", "/runs", f"/runs/{runs[0]}", f"/runs/compare?ids={runs[0]},{runs[1]}", "/models",
                 f"/models/{name}", f"/models/{name}/1/report", f"/monitor?model={name}", f"/feedback?model={name}",
                 "/decisions"):
        response = page.goto(base + path)
        assert response.status == 200, path
        page.wait_for_load_state("load")
    assert any(u.endswith("/static/ui.js") for u in page.seen) and any(u.endswith("/static/style.css") for u in page.seen)
    assert page.outside == [], page.outside
    assert all(urlsplit(u).hostname == "127.0.0.1" for u in page.seen)
    assert problems == [], problems  # a CSP violation or a script error shows up here
