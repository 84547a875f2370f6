"""The dashboard's models and decisions pages: lists, detail, promote / rollback with the admin session and
CSRF (and refused without), the sandboxed version report, decision filters and paging, escaping."""

import json
import re
import time

import pytest
from fastapi.testclient import TestClient

from loopml.registry import Store, db
from loopml.ui.app import create_ui_app
from loopml.ui.context import UISettings

XSS = "<script>alert(1)</script>"


def _bundle(root, i: int, report: bool = False):
    folder = root / f"m{i}"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "loopml-model", "n": i, "config_hash": f"c{i}"}))
    (folder / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.8 + i / 100, "f1": 0.7},
                                                     "train": {"accuracy": 0.99}}))
    if report:
        (folder / "report.html").write_text(f"<!DOCTYPE html><html><body><h1>report of m{i}</h1></body></html>")
    return folder


@pytest.fixture
def store(store_url, tmp_path):
    """A small store (SQLite file, or a private schema on the PostgreSQL server): two models, four versions."""
    s = Store(store_url, str(tmp_path / "artifacts"))
    bundles = tmp_path / "bundles"
    run = s.start_run("income", {"lr": 0.1})
    s.end_run(run, "finished", {"accuracy": 0.81}, model_dir=_bundle(bundles, 1, report=True))
    s.register("income", run=run, description="first")
    s.register("income", path=_bundle(bundles, 2), description=f"second {XSS}", parent_version=1,
               lineage={"reason": "drift", "parent_version": 1, "data": {"rows": 300}})
    s.register("income", path=_bundle(bundles, 3), parent_version=2)
    s.register("churn", path=_bundle(bundles, 4))
    s.promote("income", 1, "production", reason="first release", actor="alice")
    s.promote("income", 2, "production", reason=XSS, actor="bob")
    s.add_gate_decision("income", 2, 1, True, "beats v1 by 2 points", {"candidate": {"accuracy": 0.82}, "delta": 0.02})
    s.add_gate_decision("income", 3, 2, False, f"worse {XSS}", {"delta": -0.01, "bootstrap": [0.1, 0.2]}, kind="rollout")
    s.add_gate_decision("churn", None, 1, False, "no drift", {}, kind="loop")
    return s


@pytest.fixture
def client(store, tmp_path):
    app = create_ui_app(UISettings(store=store.url, artifacts=str(tmp_path / "artifacts"), admin_token="t",
                                   actor="ui:admin"), store=store)
    return TestClient(app)


def _login(client) -> str:
    r = client.post("/login", data={"token": "t", "next": "/models/income"})
    assert r.status_code == 200 and "promote-form" in r.text
    return re.search(r'name="csrf" value="([0-9a-f]+)"', r.text)[1]


def _events(store):
    return store.alias_history("income", "production")


def test_models_list_shows_versions_aliases_and_production_metrics(client):
    r = client.get("/models")
    assert r.status_code == 200
    assert 'href="/models/income"' in r.text and 'href="/models/churn"' in r.text
    assert "production → v2" in r.text and "v3" in r.text
    assert "accuracy 0.82" in r.text  # the production version's (v2) test accuracy
    paged = client.get("/models?per=1&page=2")
    assert "income" in paged.text and 'href="/models/churn"' not in paged.text and "page 2 of 2" in paged.text
    assert client.get("/models?per=999").status_code == 422


def test_model_detail_versions_lineage_aliases_audit_log_escaped(client, store):
    r = client.get("/models/income")
    assert r.status_code == 200
    body = r.text
    assert body.index('data-version="3"') < body.index('data-version="2"') < body.index('data-version="1"')
    run_id = store.get_version("income", 1)["run_id"]
    assert f'href="/runs/{run_id}"' in body
    assert "data.rows" in body and "&#34;reason&#34;: &#34;drift&#34;" in body  # lineage table and JSON
    assert 'href="/models/income/1/report"' in body and 'href="/models/income/2/report"' not in body
    assert XSS not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body  # reason and description
    assert "first release" in body and "alice" in body and "bob" in body
    assert body.index("bob") < body.index("alice")  # audit log newest first
    # not logged in: the forms are there but disabled
    assert "log in to promote" in body and "<fieldset disabled>" in body
    # audit log paging keeps its own page
    one = client.get("/models/income?eper=1&epage=2")
    assert "alice" in one.text and "bob" not in one.text and "page 2 of 2 · 2 events" in one.text


def test_unknown_model_or_version_is_a_404_with_the_nearest_name(client):
    r = client.get("/models/incme")
    assert r.status_code == 404 and "no model named &#39;incme&#39; (did you mean &#39;income&#39;?)" in r.text
    assert "Traceback" not in r.text
    assert client.get("/models/income/9/report").status_code == 404
    assert client.get("/models/incme/1/report").status_code == 404
    assert client.get("/models/income/0/report").status_code == 422
    assert client.get("/models/income/x/report").status_code == 422


def test_report_is_served_sandboxed_and_confined(client, store, tmp_path):
    r = client.get("/models/income/1/report")
    assert r.status_code == 200 and "report of m1" in r.text
    csp = r.headers["content-security-policy"]
    assert csp.startswith("sandbox") and "script-src" not in csp and "default-src 'none'" in csp
    missing = client.get("/models/income/2/report")
    assert missing.status_code == 404 and "has no report" in missing.text
    assert str(tmp_path) not in missing.text
    # traversal: the path never comes from the request; a crafted URL does not reach another route or file
    for url in ("/models/income/1/../../../etc/passwd", "/models/income/%2e%2e/report", "/models/..%2f..%2fetc/1/report"):
        assert client.get(url).status_code in (404, 422), url
    # a version whose stored artifact path points out of the root, or a report symlinked out of it: refused
    outside = tmp_path / "secret.html"
    outside.write_text("secret")
    with store.writer.begin() as c:
        c.execute(db.model_versions.update().where(db.model_versions.c.name == "income", db.model_versions.c.version == 3)
                  .values(artifact_uri="../secret-dir"))
    assert client.get("/models/income/3/report").status_code == 404
    folder = store.artifacts.fetch(store.get_version("churn", 1)["artifact_uri"])
    (folder / "report.html").symlink_to(outside)
    leaked = client.get("/models/churn/1/report")
    assert leaked.status_code == 404 and "secret" not in leaked.text


def test_promote_with_admin_session_and_csrf_moves_alias_and_audits(client, store):
    csrf = _login(client)
    r = client.post("/models/income/promote", data={"version": "3", "alias": "production", "reason": XSS, "csrf": csrf},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/models/income#aliases"
    assert store.alias_version("income", "production") == 3
    last = _events(store)[0]
    assert (last["action"], last["from_version"], last["to_version"], last["actor"], last["reason"]) == \
        ("promote", 2, 3, "ui:admin", XSS)
    page = client.get("/models/income")
    assert XSS not in page.text and "Promote</button>" in page.text
    # rollback: back to 2, audited
    r = client.post("/models/income/rollback", data={"alias": "production", "reason": "v3 misbehaves", "csrf": csrf},
                    follow_redirects=False)
    assert r.status_code == 303 and store.alias_version("income", "production") == 2
    assert _events(store)[0]["action"] == "rollback" and _events(store)[0]["reason"] == "v3 misbehaves"
    # a new alias
    r = client.post("/models/income/promote", data={"version": "1", "alias": "staging", "csrf": csrf},
                    follow_redirects=False)
    assert r.status_code == 303 and store.alias_version("income", "staging") == 1


def test_promote_refused_without_login_or_with_bad_csrf_leaves_store_unchanged(client, store):
    before = len(_events(store))
    r = client.post("/models/income/promote", data={"version": "3", "reason": "x"}, follow_redirects=False)
    assert r.status_code == 401 and "log in" in r.text
    r = client.post("/models/income/rollback", data={"reason": "x"}, follow_redirects=False)
    assert r.status_code == 401
    _login(client)
    r = client.post("/models/income/promote", data={"version": "3", "csrf": "0" * 64}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post("/models/income/promote", data={"version": "3"}, follow_redirects=False)
    assert r.status_code == 403
    r = client.post("/models/income/promote", data={"version": "3", "csrf": _login(client)},
                    headers={"origin": "https://evil.example"}, follow_redirects=False)
    assert r.status_code == 403
    assert store.alias_version("income", "production") == 2 and len(_events(store)) == before


@pytest.mark.parametrize("data, status, line", [
    ({"version": "9"}, 404, "has no version 9"),
    ({"version": "0"}, 422, "version"),
    ({"version": "abc"}, 422, "version"),
    ({"version": "1", "alias": "bad alias!"}, 400, "alias &#39;bad alias!&#39; is not valid"),
    ({"version": "1", "alias": "a" * 65}, 422, "alias"),
    ({"version": "1", "reason": "r" * 501}, 422, "reason"),
])
def test_promote_validates_its_form(client, store, data, status, line):
    csrf = _login(client)
    r = client.post("/models/income/promote", data={**data, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == status and line in r.text and "Traceback" not in r.text
    assert store.alias_version("income", "production") == 2 and len(_events(store)) == 2


def test_store_refusals_are_one_line_4xx(client, store):
    csrf = _login(client)
    r = client.post("/models/churn/rollback", data={"alias": "production", "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 409 and "no earlier version to roll back to" in r.text
    r = client.post("/models/incme/promote", data={"version": "1", "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 404 and "did you mean &#39;income&#39;" in r.text
    assert store.alias_version("churn", "production") is None


def test_decisions_filters_paging_numbers_and_escaping(client, store):
    r = client.get("/decisions")
    assert r.status_code == 200
    body = r.text
    assert body.count("data-decision=") == 3
    assert body.index("no drift") < body.index("worse") < body.index("beats v1")  # newest first
    assert XSS not in body and "worse &lt;script&gt;" in body
    assert "candidate.accuracy" in body and "<details>" in body and "bootstrap" in body
    assert 'href="/models/churn"' in body
    only = client.get("/decisions?model=income&kind=rollout")
    assert only.text.count("data-decision=") == 1 and "worse" in only.text
    assert client.get("/decisions?outcome=promoted").text.count("data-decision=") == 1
    assert client.get("/decisions?outcome=rejected").text.count("data-decision=") == 2
    assert client.get("/decisions?kind=retrain").text.count("data-decision=") == 1
    assert client.get("/decisions?kind=loop&outcome=promoted").text.count("data-decision=") == 0
    paged = client.get("/decisions?per=2&page=2")
    assert paged.text.count("data-decision=") == 1 and "beats v1" in paged.text and "page 2 of 2" in paged.text
    assert 'href="/decisions?per=2&amp;page=1' in paged.text or "page=1&amp;per=2" in paged.text
    filtered = client.get("/decisions?model=income&per=1")
    assert "model=income" in filtered.text and "page 1 of 2" in filtered.text
    bad = client.get("/decisions?kind=retrian")
    assert bad.status_code == 400 and "did you mean &#39;retrain&#39;" in bad.text
    assert client.get("/decisions?outcome=maybe").status_code == 400
    unknown = client.get("/decisions?model=incom")
    assert unknown.status_code == 400 and "did you mean &#39;income&#39;" in unknown.text


def test_a_decision_written_before_0007_is_a_retrain_after_0008(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = db.create_engine(url)
    db.migrate(engine, "0007")
    with engine.begin() as c:
        c.execute(db.registered_models.insert().values(name="income", created_at=time.time(), latest_version=0))
        c.execute(db.gate_decisions.insert().values(model_name="income", candidate_version=None, champion_version=None,
                                                    promoted=False, reason="legacy row", numbers=None, at=time.time(),
                                                    kind=None))
    engine.dispose()
    store = Store(url, str(tmp_path / "artifacts"))  # opening migrates to head
    client = TestClient(create_ui_app(UISettings(admin_token="t"), store=store))
    r = client.get("/decisions?kind=retrain")
    assert r.status_code == 200 and "legacy row" in r.text and r.text.count("data-decision=") == 1


def test_counts_are_bounded_and_the_pager_says_so(client, store, monkeypatch):
    from loopml.ui import queries_models

    for i in range(3):
        store.promote("income", 1 + i % 3, "staging", reason=f"move {i}", actor="carol")
    monkeypatch.setattr(queries_models, "COUNT_CAP", 2)
    r = client.get("/decisions?per=1")
    assert "2+ decisions" in r.text and 'rel="next"' in r.text and "page 1 of" not in r.text
    last = client.get("/decisions?per=1&page=3")
    assert last.text.count("data-decision=") == 1 and 'rel="next"' not in last.text
    events = client.get("/models/income?eper=2")
    assert "2+ events" in events.text and "older →" in events.text
    assert "move 2" in events.text and "move 0" not in events.text


def test_a_script_may_promote_with_the_bearer_token_and_a_read_only_dashboard_refuses(client, store):
    r = client.post("/models/income/promote", data={"version": "1", "reason": "scripted"},
                    headers={"authorization": "Bearer t"}, follow_redirects=False)
    assert r.status_code == 303 and store.alias_version("income", "production") == 1
    assert client.post("/models/income/rollback", data={}, headers={"authorization": "Bearer wrong"},
                       follow_redirects=False).status_code == 401
    read_only = TestClient(create_ui_app(UISettings(), store=store))
    page = read_only.get("/models/income")
    assert "Read-only" in page.text and "<fieldset disabled>" in page.text
    r = read_only.post("/models/income/promote", data={"version": "3"}, headers={"authorization": "Bearer t"},
                       follow_redirects=False)
    assert r.status_code == 403 and store.alias_version("income", "production") == 1
