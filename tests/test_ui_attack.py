"""The dashboard attacked: API keys guard the pages (``serve --ui --api-key``, ``ui --api-key``), read-only
sessions cannot change anything, login CSRF, odd requests are one-line 4xx."""

import re
import time

import pytest
from fastapi.testclient import TestClient

from loopml.cli import main
from loopml.registry import Store
from loopml.ui.app import create_ui_app
from loopml.ui.context import UISettings
from tests.test_ui_core import csrf_of, free_port, seed, serve_settings, served  # noqa: F401  (served: a fixture)

COOKIE = "loopml_ui_session"


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"))
    seed(s, time.time())
    return s


def keyed(store: Store, keys=("K1", "K2"), token: str | None = "t") -> TestClient:
    return TestClient(create_ui_app(UISettings(admin_token=token, api_keys=list(keys)), store=store))


PAGES = ["/", "/runs", "/models", "/models/income", "/monitor?model=income", "/feedback", "/decisions",
         f"/runs/{0:032x}", f"/runs/{0:032x}/curve.png?key=loss", "/models/income/1/report",
         "/feedback/income/thumb/p1/note"]


@pytest.mark.parametrize("path", PAGES)
def test_with_api_keys_an_anonymous_visitor_is_sent_to_login(store, path):
    c = keyed(store)
    r = c.get(path, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2F"), (r.status_code, r.text[:200])
    assert "income" not in r.text and "<script>" not in r.text
    assert c.get(path, headers={"X-API-Key": "wrong"}, follow_redirects=False).status_code == 303
    assert c.get(path, headers={"X-API-Key": "K2"}, follow_redirects=False).status_code != 303
    assert c.get(path, headers={"Authorization": "Bearer K1"}, follow_redirects=False).status_code != 303
    assert c.get(path, headers={"Authorization": "Bearer t"}, follow_redirects=False).status_code != 303


def test_with_api_keys_login_page_and_assets_stay_open_and_writes_are_401(store):
    c = keyed(store)
    page = c.get("/login")
    assert page.status_code == 200 and "API key or admin token" in page.text
    assert c.get("/static/ui.js").status_code == 200
    r = c.post("/models/income/promote", data={"version": "1"}, follow_redirects=False)
    assert r.status_code == 401 and "log in" in r.text
    assert store.alias_version("income", "production") == 2


def test_without_api_keys_the_pages_stay_public(store):
    c = keyed(store, keys=())
    assert c.get("/", follow_redirects=False).status_code == 200


def test_an_api_key_logs_in_read_only(store):
    c = keyed(store)
    r = c.post("/login", data={"token": "K2", "next": "/models/income"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/models/income"
    page = c.get("/models/income")
    assert page.status_code == 200 and "read-only · log out" in page.text and "admin · log out" not in page.text
    csrf = csrf_of(page.text)
    refused = c.post("/models/income/promote", data={"version": "1", "csrf": csrf}, follow_redirects=False)
    assert refused.status_code == 403 and "read-only" in refused.text
    assert store.alias_version("income", "production") == 2
    assert c.post("/logout", data={"csrf": "0" * 64}, follow_redirects=False).status_code == 403
    assert c.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    c.cookies.clear()
    assert c.get("/", follow_redirects=False).status_code == 303


def test_the_admin_token_logs_in_as_admin_beside_api_keys(store):
    c = keyed(store)
    assert c.post("/login", data={"token": "t"}, follow_redirects=False).status_code == 303
    page = c.get("/models/income")
    assert "admin · log out" in page.text
    ok = c.post("/models/income/promote", data={"version": "1", "csrf": csrf_of(page.text)}, follow_redirects=False)
    assert ok.status_code == 303 and store.alias_version("income", "production") == 1


def test_api_keys_without_an_admin_token_and_a_wrong_key(store):
    c = keyed(store, token=None)
    wrong = c.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "wrong API key or admin token" in wrong.text and COOKIE not in wrong.cookies
    assert c.post("/login", data={"token": "K1"}, follow_redirects=False).status_code == 303
    assert c.get("/", follow_redirects=False).status_code == 200


def test_removing_a_key_ends_its_sessions_and_cookies_cannot_be_forged(store):
    c = keyed(store)
    c.post("/login", data={"token": "K1"}, follow_redirects=False)
    cookie = c.cookies[COOKIE]
    assert c.get("/", follow_redirects=False).status_code == 200
    other = keyed(store, keys=("K2",))
    other.cookies.set(COOKIE, cookie)
    assert other.get("/", follow_redirects=False).status_code == 303  # K1 is gone: so is its session
    role, expiry, nonce, sig = cookie.split(".")
    for forged in (f"admin.{expiry}.{nonce}.{sig}", f"read.{int(expiry) + 10**6}.{nonce}.{sig}",
                   f"read.{expiry}.{nonce}.{'0' * 64}", f"read.{int(time.time()) - 5}.{nonce}.{sig}", "a.b.c.d", "...",
                   f"{expiry}.{nonce}.{sig}"):
        fresh = keyed(store)
        fresh.cookies.set(COOKIE, forged)
        assert fresh.get("/", follow_redirects=False).status_code == 303, forged


def test_login_from_another_origin_is_refused(store):
    """Login CSRF: another site's form must not log this browser into the attacker's session."""
    c = keyed(store, keys=())
    r = c.post("/login", data={"token": "t"}, headers={"Origin": "http://127.0.0.1:9999"}, follow_redirects=False)
    assert r.status_code == 403 and COOKIE not in r.headers.get("set-cookie", "")
    assert c.post("/login", data={"token": "t"}, headers={"Origin": "http://testserver"},
                  follow_redirects=False).status_code == 303


def test_loopml_ui_takes_repeatable_api_keys(store, capsys, monkeypatch):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.delenv("LOOPML_ADMIN_TOKEN", raising=False)
    port = free_port()
    assert main(["ui", "--store", store._url, "--port", str(port), "--api-key", "a", "--api-key", "b"]) == 0
    assert started["app"].state.ui.settings.api_keys == ["a", "b"]
    assert "pages need a login with an API key" in capsys.readouterr().err
    with TestClient(started["app"], base_url=f"http://127.0.0.1:{port}") as c:
        assert c.get("/", follow_redirects=False).status_code == 303
        assert c.get("/", headers={"X-API-Key": "b"}).status_code == 200


def test_loopml_ui_on_loopback_answers_only_loopback_host_names(store, monkeypatch):
    """DNS rebinding: evil.example re-pointed at 127.0.0.1 must not read a loopback dashboard's logged inputs."""
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.delenv("LOOPML_ADMIN_TOKEN", raising=False)
    port = free_port()
    assert main(["ui", "--store", store._url, "--port", str(port)]) == 0
    with TestClient(started["app"], base_url=f"http://127.0.0.1:{port}") as c:
        assert c.get("/").status_code == 200
        for host in (f"localhost:{port}", f"[::1]:{port}"):
            assert c.get("/", headers={"Host": host}).status_code == 200, host
        evil = c.get("/monitor?model=income", headers={"Host": f"evil.example:{port}"})
        assert evil.status_code == 400 and "<script>" not in evil.text
    assert main(["ui", "--store", store._url, "--port", str(port), "--host", "0.0.0.0", "--admin-token", "t"]) == 0
    with TestClient(started["app"], base_url="http://dashboard.example") as c:  # public: any name it is reached by
        assert c.get("/").status_code == 200


def test_serve_ui_honours_the_api_keys(served):  # noqa: F811
    from loopml.serve.app import create_app

    with TestClient(create_app(serve_settings(served, ui=True, admin_token="t", api_keys=["K"]))) as c:
        r = c.get("/ui/monitor?model=clf", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=%2Fui%2Fmonitor%3Fmodel%3Dclf"
        assert c.get("/ui/login").status_code == 200 and c.get("/ui/static/style.css").status_code == 200
        login = c.post("/ui/login", data={"token": "K", "next": "/ui/monitor?model=clf"}, follow_redirects=False)
        assert login.status_code == 303 and "Path=/ui;" in login.headers["set-cookie"]
        assert c.get("/ui/monitor?model=clf", follow_redirects=False).status_code == 200
        assert c.post("/v1/models/clf/predict", json={"rows": [{"x1": 1.0, "color": "red"}]}).status_code == 401  # API as before


@pytest.mark.parametrize("path", ["/runs/" + "a" * 10_000, "/runs/compare?ids=" + ",".join(["b" * 3000] * 4)])
def test_huge_ids_are_a_short_4xx(store, path):
    r = keyed(store, keys=()).get(path)
    assert 400 <= r.status_code < 500 and len(re.search(r'role="alert">(.*?)</p>', r.text, re.S).group(1)) < 400
