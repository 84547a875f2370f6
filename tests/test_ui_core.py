"""The dashboard's core: login and CSRF, security headers, read-only mode, the overview page, ``loopml ui``,
``loopml serve --ui`` (mounted at /ui) and /docs without a CDN."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from loopml.cli import main
from loopml.registry import Store, db
from loopml.ui.app import create_ui_app
from loopml.ui.context import UISettings

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "<script>alert(1)</script>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui_client(store: Store, token: str | None = "t") -> TestClient:
    return TestClient(create_ui_app(UISettings(admin_token=token), store=store))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no csrf field on the page"
    return found.group(1)


def login(client: TestClient) -> str:
    r = client.post("/login", data={"token": "t"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    return csrf_of(client.get("/").text)


def seed(store: Store, now: float) -> None:
    """Rows written directly (no training): 3 runs, 2 models with 3 versions, predictions new and old, feedback,
    drift windows, decisions, a loop worker's state; hostile text where a user or a log could put it."""
    rows = {
        db.runs: [{"id": f"{i:032x}", "experiment": "income", "status": "finished", "started_at": now - 100 * i,
                   "metrics": {"test": {"accuracy": 0.8}}} for i in range(3)],
        db.registered_models: [{"name": "income", "created_at": now, "latest_version": 2, "description": ""},
                               {"name": "churn", "created_at": now, "latest_version": 1, "description": ""}],
        db.model_versions: [{"name": n, "version": v, "artifact_uri": "x", "metrics": metrics, "created_at": now}
                            for n, v, metrics in (("income", 1, {"test": {"accuracy": 0.81}}),
                                                  ("income", 2, {"test": {"accuracy": 0.875}}),
                                                  ("churn", 1, {"validation": {"r2": 0.5}}))],
        db.aliases: [{"name": "income", "alias": "production", "version": 2, "updated_at": now}],
        db.predictions: [{"id": f"p{i:031x}", "model_name": "income", "model_version": 2,
                          "created_at": now - (10 if i < 7 else 3 * 86400), "inputs": {"note": SCRIPT},
                          "outputs": {"prediction": "yes"}, "latency_ms": 1.0, "served": True} for i in range(10)],
        db.feedback: [{"model_name": "income", "label": "yes", "created_at": now} for _ in range(4)],
        db.drift_windows: [{"model_name": "income", "model_version": 2, "start": now - 60, "end": now - 30, "rows": 50,
                            "drift": False, "results": {}, "created_at": now - 30},
                           {"model_name": "income", "model_version": 2, "start": now - 30, "end": now, "rows": 77,
                            "drift": True, "results": {}, "created_at": now}],
        db.gate_decisions: [{"model_name": "churn", "candidate_version": None, "champion_version": 1, "promoted": False,
                             "reason": "no drift", "numbers": {"skipped": True}, "at": now - 100 + i, "kind": "loop"}
                            for i in range(12)]
        + [{"model_name": "income", "candidate_version": 2, "champion_version": 1, "promoted": True,
            "reason": SCRIPT, "numbers": {}, "at": now - 5, "kind": "retrain"}],
        db.loop_state: [{"model_name": "income", "next_cycle_at": now + 60, "last_cycle_at": now - 60, "cycles": 3,
                         "state": {"phase": "idle"}, "updated_at": now}],
    }
    with store.writer.begin() as c:
        for table, values in rows.items():
            c.execute(table.insert(), values)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"))


@pytest.fixture
def any_store(store_url, tmp_path) -> Store:
    """SQLite, and PostgreSQL where LOOPML_TEST_POSTGRES_URL names a server (conftest's ``store_url``)."""
    return Store(store_url, str(tmp_path / "artifacts"))


# -- sessions, CSRF, headers --------------------------------------------------------------------------------------
def test_login_logout_and_a_wrong_token(store):
    c = ui_client(store)
    assert "log in" in c.get("/").text
    wrong = c.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "wrong admin token" in wrong.text and "loopml_ui_session" not in wrong.cookies
    assert "log out" not in c.get("/").text
    r = c.post("/login", data={"token": "t"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    flags = r.headers["set-cookie"].lower()
    assert "httponly" in flags and "samesite=strict" in flags and "path=/;" in flags
    csrf = csrf_of(c.get("/").text)
    assert "log out" in c.get("/").text
    out = c.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/"
    assert "loopml_ui_session" in out.headers.get("set-cookie", "")  # cleared
    c.cookies.clear()
    assert "log out" not in c.get("/").text


def test_csrf_is_refused_without_the_field_or_from_another_origin(store):
    c = ui_client(store)
    csrf = login(c)
    assert c.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert c.post("/logout", data={"csrf": "0" * 64}, follow_redirects=False).status_code == 403
    evil = c.post("/logout", data={"csrf": csrf}, headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert evil.status_code == 403 and "CSRF" in evil.text
    assert c.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303  # the real form passes
    # a bearer token is not ambient (no cookie): no CSRF field needed; a wrong one is not a session
    fresh = ui_client(store)
    assert fresh.post("/logout", headers={"Authorization": "Bearer t"}, follow_redirects=False).status_code == 303
    assert fresh.post("/logout", headers={"Authorization": "Bearer x"}, follow_redirects=False).status_code == 401


@pytest.mark.parametrize("target", ["//evil.com", "https://evil.com/", "/\\evil.com", "evil.com"])
def test_login_never_redirects_to_another_site(store, target):
    c = ui_client(store)
    r = c.post("/login", data={"token": "t", "next": target}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert 'value="/"' in c.get("/login", params={"next": target}).text
    ok = ui_client(store).post("/login", data={"token": "t", "next": "/runs?page=2"}, follow_redirects=False)
    assert ok.headers["location"] == "/runs?page=2"


def test_security_headers_on_pages_errors_and_assets(store):
    c = ui_client(store)
    for path in ("/", "/login", "/no-such-page", "/static/style.css"):
        r = c.get(path)
        csp = r.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp, path
        assert r.headers.get("x-content-type-options") == "nosniff" and r.headers.get("x-frame-options") == "DENY"
    assert c.get("/no-such-page").status_code == 404
    assert c.get("/").headers.get("cache-control") == "no-store"


def test_read_only_without_a_token(store):
    c = ui_client(store, token=None)
    page = c.get("/").text
    assert "read-only" in page and "log in" not in page and 'name="csrf"' not in page
    r = c.post("/login", data={"token": ""}, follow_redirects=False)
    assert r.status_code == 403 and "read-only" in r.text
    assert c.post("/logout", headers={"Authorization": "Bearer "}).status_code == 403


# -- the overview --------------------------------------------------------------------------------------------------
def test_the_overview_renders_on_an_empty_store(any_store):
    r = ui_client(any_store).get("/")
    assert r.status_code == 200
    assert "No registered models yet" in r.text and "No loop worker" in r.text and "No retrain or gate" in r.text
    assert re.findall(r'class="big">(\d+)<', r.text) == ["0"] * 5


def test_the_overview_on_a_seeded_store(any_store):
    seed(any_store, time.time())
    r = ui_client(any_store).get("/")
    assert r.status_code == 200
    html = r.text
    # runs, models, versions, predictions in the last 24 h (7 of 10), feedback rows
    assert re.findall(r'class="big">(\d+)<', html) == ["3", "2", "3", "7", "4"]
    models = html.split('id="overview-models"')[1].split("</table>")[0]
    assert models.index("churn") < models.index("income")
    assert 'href="/models/income#v2">v2</a>' in models and "accuracy 0.875" in models
    assert "drift</span>" in models and "77 rows" in models  # the newest window, not the first
    assert "r2" not in models  # churn has no production version: no metric shown
    loops = html.split('id="overview-loops"')[1].split("</table>")[0]
    assert "income" in loops and "idle" in loops and "stopped" in loops
    decisions = html.split('id="overview-decisions"')[1].split("</table>")[0]
    assert decisions.count("<tr>") == 1 + 10  # header + the newest 10 of 13
    assert "promoted" in decisions and 'href="/decisions?model=income' in decisions
    assert SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for link in re.findall(r'(?:href|src)="([^"]+)"', html):
        assert link.startswith("/") or link == "data:,", link  # data:, is the empty favicon


def test_the_overview_counts_use_an_index_not_a_scan(store):
    """The 24-hour count reads an index range (SQLite's plan names it), and the counts are reused for a few
    seconds: a new prediction shows once they expire."""
    from loopml.ui.pages import overview

    seed(store, time.time())
    query = str(overview.sa.select(overview.sa.func.count()).select_from(db.predictions)
                .where(db.predictions.c.created_at >= 0).compile(compile_kwargs={"literal_binds": True}))
    with store.engine.connect() as c:
        plan = " ".join(str(r[-1]) for r in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
    assert "SEARCH" in plan and "created_at>" in plan and "SCAN" not in plan, plan
    app = create_ui_app(UISettings(store=store._url), store=store)
    c = TestClient(app)
    assert re.findall(r'class="big">(\d+)<', c.get("/").text)[3] == "7"
    store.log_predictions([{"id": "n" * 32, "model_name": "income", "model_version": 2, "created_at": time.time(),
                            "inputs": {}, "outputs": {}, "latency_ms": 1.0}])
    assert re.findall(r'class="big">(\d+)<', c.get("/").text)[3] == "7"
    app.state.ui.caches["overview"].clear()
    assert re.findall(r'class="big">(\d+)<', c.get("/").text)[3] == "8"


# -- loopml ui ------------------------------------------------------------------------------------------------------
def test_ui_refuses_a_public_host_without_a_token(store, capsys, monkeypatch):
    monkeypatch.delenv("LOOPML_ADMIN_TOKEN", raising=False)
    assert main(["ui", "--host", "0.0.0.0", "--store", store._url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to bind 0.0.0.0" in err[0] and "--admin-token" in err[0]
    assert main(["ui", "--port", "0", "--store", store._url]) == 2
    assert "--port 0 is not a port" in capsys.readouterr().err


def test_ui_says_what_it_serves_and_passes_host_and_port_to_uvicorn(store, capsys, monkeypatch):
    import uvicorn

    store.engine  # noqa: B018  the file exists
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    port = free_port()
    assert main(["ui", "--store", store._url, "--port", str(port), "--admin-token", "s3cret"]) == 0
    assert started["host"] == "127.0.0.1" and started["port"] == port
    assert started["app"].state.ui.settings.admin_token == "s3cret"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dashboard on http://127.0.0.1:{port}/ (admin actions need the token)"]
    monkeypatch.setenv("LOOPML_ADMIN_TOKEN", "from-env")
    assert main(["ui", "--store", store._url, "--port", str(port), "--host", "0.0.0.0"]) == 0  # a token: any host
    assert started["host"] == "0.0.0.0" and started["app"].state.ui.settings.admin_token == "from-env"


def test_serve_has_a_ui_flag(capsys):
    assert main(["serve", "--help"]) == 0
    assert "--ui" in capsys.readouterr().out


def test_ui_refuses_a_store_that_does_not_exist_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "registry.db"
    assert main(["ui", "--store", f"sqlite:///{missing}", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no store at {missing}" in err[0]
    assert not missing.parent.exists()
    assert main(["ui", "--store", "not a url", "--port", str(free_port())]) == 2
    assert "is not a SQLAlchemy URL" in capsys.readouterr().err


def test_ui_refuses_a_port_in_use(store, capsys):
    store.engine  # noqa: B018  the file exists
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--store", store._url, "--port", str(port)]) == 2
    assert "the port is in use" in capsys.readouterr().err


def test_a_real_loopml_ui_process_answers_and_stops_on_sigterm(store):
    seed(store, time.time())
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOOPML_ADMIN_TOKEN": ""}
    proc = subprocess.Popen([sys.executable, "-m", "loopml", "ui", "--store", store._url, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.HTTPError:
                assert time.time() < deadline, "loopml ui did not answer"
                time.sleep(0.2)
        assert r.status_code == 200 and "income" in r.text and "read-only" in r.text
        assert httpx.get(f"http://127.0.0.1:{port}/static/vendor/htmx.min.js", timeout=2).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().strip().splitlines()
    assert err[0] == (f"dashboard on http://127.0.0.1:{port}/ "
                      "(read-only: start with --admin-token to promote, roll back, label)"), err
    assert not any("Traceback" in line for line in err), err


# -- loopml serve --ui and /docs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import loopml

    root = tmp_path_factory.mktemp("serveui")
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=200)
    df = pd.DataFrame({"x1": x1, "color": rng.choice(["red", "blue"], size=200), "label": np.where(x1 > 0, "yes", "no")})
    model = loopml.Model(target="label", learner={"type": "lightgbm", "n_estimators": 5}).fit(
        df, progress=False, cache_dir=False)
    url = f"sqlite:///{root / 'registry.db'}"
    store = Store(url, str(root / "artifacts"))
    store.register("clf", path=model.save(root / "m"))
    store.promote("clf", 1)
    return url, root


def serve_settings(served, **extra):
    from loopml.serve.app import ServeSettings

    url, root = served
    return ServeSettings(model="clf@production", store=url, monitor_interval_s=0, log_durability="none",
                         poll_interval_s=30, **extra)


def test_serve_ui_mounts_the_dashboard_at_ui(served):
    from loopml.serve.app import create_app

    with TestClient(create_app(serve_settings(served, ui=True, admin_token="t"))) as c:
        r = c.get("/ui/")
        assert r.status_code == 200 and "clf" in r.text and "accuracy" in r.text
        links = [link for link in re.findall(r'(?:href|src|action)="([^"]+)"', r.text) if link != "data:,"]
        assert links and all(link.startswith("/ui/") for link in links), links
        assert c.get("/ui/static/style.css").status_code == 200
        assert c.get("/ui/models/clf").status_code in (200, 404)  # another helper's page; never a 500
        assert c.get("/v1/models").status_code == 200  # the API is unchanged beside it
        r = c.post("/ui/login", data={"token": "t"}, follow_redirects=False)  # the same admin token
        assert r.status_code == 303 and r.headers["location"] == "/ui/"
        assert "Path=/ui;" in r.headers["set-cookie"]
        assert "log out" in c.get("/ui/").text
    with TestClient(create_app(serve_settings(served))) as c:  # off unless asked
        assert c.get("/ui/").status_code == 404


def test_serve_ui_through_the_workers_factory(served, monkeypatch):
    from loopml.serve.app import create_app_from_env

    monkeypatch.setenv("LOOPML_SERVE", serve_settings(served, ui=True).model_dump_json())
    with TestClient(create_app_from_env()) as c:
        assert c.get("/ui/").status_code == 200


def test_docs_use_no_cdn(served):
    from loopml.serve.app import create_app

    with TestClient(create_app(serve_settings(served))) as c:
        docs = c.get("/docs")
        assert docs.status_code == 200 and "swagger-ui" in docs.text
        assert not re.findall(r"https?://", docs.text), re.findall(r"https?://\S+", docs.text)
        assets = re.findall(r'(?:href|src)="([^"]+)"', docs.text)
        assert "/_static/swagger-ui-bundle.js" in assets and "/_static/swagger-ui.css" in assets
        for asset in assets:
            if asset.startswith("/"):
                assert c.get(asset).status_code == 200, asset
        assert '"validatorUrl": null' in docs.text
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/redoc").status_code == 404  # off: it would need a CDN script
