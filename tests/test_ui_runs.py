"""The dashboard's runs pages: list (filter, sort by a metric, paging), one run, comparing runs."""

import html
import re
import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from loopml.registry import Store, db
from loopml.ui.app import create_ui_app
from loopml.ui.context import UISettings

XSS = "<script>alert(1)</script>"


def _run(store: Store, experiment: str, params: dict, metrics: dict | None, status: str = "finished",
         epochs: int = 0, error: str | None = None) -> str:
    run_id = store.start_run(experiment, params)
    for epoch in range(epochs):
        store.log_metrics(run_id, epoch, {"train_loss": 1.0 / (epoch + 1), "val_loss": 1.2 / (epoch + 1) + 0.01 * epoch,
                                          "lr": 0.01})
    if status != "running":
        store.end_run(run_id, status, metrics, error=error)
    return run_id


@pytest.fixture
def seeded(store_url, tmp_path):
    store = Store(store_url, str(tmp_path / "artifacts"))
    ids = {}
    ids["a"] = _run(store, "churn", {"lr": 0.01, "model": {"depth": 3, "width": 64}},
                    {"test": {"accuracy": 0.81, "loss": 0.40}}, epochs=5)
    ids["b"] = _run(store, "churn", {"lr": 0.10, "model": {"depth": 3, "width": 32}},
                    {"test": {"accuracy": 0.86, "loss": 0.35}}, epochs=5)
    ids["c"] = _run(store, "price", {"lr": 0.01, "note": XSS}, {"test": {"rmse": 3.5}}, status="failed",
                    error=f"ValueError: {XSS}")
    ids["d"] = _run(store, "price", {"lr": 0.02}, None, status="running")
    for i in range(6):  # a page's worth of filler, older than the runs above
        ids[f"f{i}"] = _run(store, "filler", {"i": i}, {"test": {"accuracy": 0.5 + i / 100}})
    with store.writer.begin() as c:  # started_at distinct and known: a..d newest, fillers older
        for n, key in enumerate(["a", "b", "c", "d"] + [f"f{i}" for i in range(6)]):
            c.execute(db.runs.update().where(db.runs.c.id == ids[key]).values(started_at=2_000_000_000.0 - n * 60))
        c.execute(db.registered_models.insert().values(name="churn-model", created_at=time.time(), latest_version=1))
        c.execute(db.model_versions.insert().values(name="churn-model", version=1, run_id=ids["b"], artifact_uri="x",
                                                    created_at=time.time(), metrics={}))
    client = TestClient(create_ui_app(UISettings(admin_token="t"), store=store))
    return client, store, ids


def _listed(html: str) -> list[str]:
    return re.findall(r'name="ids" value="([0-9a-f]{32})"', html)


def test_list_newest_first_with_links_and_compare_form(seeded):
    client, _, ids = seeded
    r = client.get("/runs")
    assert r.status_code == 200
    assert _listed(r.text)[:4] == [ids["a"], ids["b"], ids["c"], ids["d"]]
    assert f'href="/runs/{ids["a"]}"' in r.text
    assert 'action="/runs/compare"' in r.text and 'method="get"' in r.text
    assert "10 rows" in r.text


def test_filter_by_experiment_and_status(seeded):
    client, _, ids = seeded
    assert set(_listed(client.get("/runs?experiment=churn").text)) == {ids["a"], ids["b"]}
    assert _listed(client.get("/runs?status=failed").text) == [ids["c"]]
    assert _listed(client.get("/runs?experiment=price&status=running").text) == [ids["d"]]
    page = client.get("/runs").text  # the experiment menu lists each experiment once
    assert page.count('<option value="churn"') == 1 and '<option value="filler"' in page


def test_bad_filters_are_one_line_4xx(seeded):
    client, _, _ = seeded
    r = client.get("/runs?status=finsihed")
    assert r.status_code == 400 and "nearest: 'finished'" in html.unescape(r.text) and "Traceback" not in r.text
    r = client.get("/runs?experiment=chrun")
    assert r.status_code == 404 and "nearest: 'churn'" in html.unescape(r.text)
    assert client.get("/runs?order=up").status_code == 400
    assert client.get("/runs?sort=bogus").status_code == 400
    assert client.get("/runs?sort=metric:a%22b").status_code == 400  # not a metric key (a quote)
    assert client.get("/runs?per=0").status_code == 422


def test_sort_by_metric_both_ways_missing_last(seeded):
    client, _, ids = seeded
    desc = _listed(client.get("/runs?sort=metric:test.accuracy&order=desc").text)
    assert desc[:2] == [ids["b"], ids["a"]] and desc[2] == ids["f5"]
    assert set(desc[-2:]) == {ids["c"], ids["d"]}  # no test.accuracy: last either way
    asc = _listed(client.get("/runs?sort=metric:test.accuracy&order=asc").text)
    assert asc[:2] == [ids["f0"], ids["f1"]] and set(asc[-2:]) == {ids["c"], ids["d"]}
    assert _listed(client.get("/runs?sort=metric:test.loss&order=asc&experiment=churn").text) == [ids["b"], ids["a"]]


def test_sort_by_unknown_metric_is_a_clear_error(seeded):
    client, _, _ = seeded
    r = client.get("/runs?sort=metric:test.acuracy")
    assert r.status_code == 400 and "nearest: 'test.accuracy'" in html.unescape(r.text)
    # a filter with no runs at all: an empty page, not an error
    assert client.get("/runs?experiment=churn&status=killed&sort=metric:nope").status_code == 200


def test_paging_is_stable_and_complete(seeded):
    client, _, ids = seeded
    seen = []
    for page in (1, 2, 3, 4):
        r = client.get(f"/runs?per=3&page={page}&sort=metric:test.accuracy")
        assert r.status_code == 200
        seen += _listed(r.text)
    assert sorted(seen) == sorted(ids.values()) and len(seen) == 10
    first = client.get("/runs?per=3&status=finished").text
    assert 'rel="next"' in first and "status=finished" in re.search(r'rel="next" href="([^"]+)"', first).group(1)


def test_run_detail(seeded):
    client, _, ids = seeded
    r = client.get(f"/runs/{ids['b']}")
    assert r.status_code == 200
    assert "churn" in r.text and "finished" in r.text and "model.width" in r.text and "test.accuracy" in r.text
    assert 'href="/models/churn-model"' in r.text and "churn-model v1" in r.text
    curves = re.findall(r'src="(/runs/[0-9a-f]+/curve\.png\?key=[^"]+)"', r.text)
    assert [c.rsplit("=", 1)[1] for c in curves] == ["loss", "lr"]
    png = client.get(curves[0].replace("&amp;", "&"))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert client.get(f"/runs/{ids['b']}/curve.png?key=nope").status_code == 404
    assert client.get(f"/runs/{ids['b'][:10]}").status_code == 200  # a unique prefix, like the CLI
    assert client.get("/runs/0000deadbeef").status_code == 404


def test_user_values_are_escaped(seeded):
    client, _, ids = seeded
    r = client.get(f"/runs/{ids['c']}")
    assert r.status_code == 200
    assert XSS not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert "ValueError" in r.text  # the run's error is shown (escaped)
    compare = client.get(f"/runs/compare?ids={ids['a']},{ids['c']}")
    assert compare.status_code == 200 and XSS not in compare.text and "&lt;script&gt;" in compare.text


def test_compare_two_runs(seeded):
    client, _, ids = seeded
    r = client.get(f"/runs/compare?ids={ids['a']},{ids['b']}")
    assert r.status_code == 200
    table = r.text.split('id="compare-metrics"')[1].split("</table>")[0]
    rows = {re.search(r"<td>([\w.]+)", row).group(1): row for row in table.split("<tr>")[2:]}
    # b is best on both: higher accuracy, lower loss; the mark sits in b's column (the 2nd)
    for key in ("test.accuracy", "test.loss"):
        cells = re.findall(r"<td class=\"num[^\"]*\">(.*?)</td>", rows[key], re.S)
        assert "★" not in cells[0] and "★" in cells[1], key
    params = r.text.split('id="compare-params"')[1].split("</table>")[0]
    differing = re.findall(r'<tr class="differs"><td><code>([\w.]+)</code>', params)
    assert differing == ["lr", "model.width"]  # model.depth is the same: not highlighted
    assert "<code>model.depth</code>" not in params  # the same in both: only under "show all"
    every = r.text.split('id="compare-params-all"')[1].split("</details>")[0]
    assert "<code>model.depth</code>" in every and "show all" in every
    plots = re.findall(r'<img class="plot"[^>]*src="([^"]+)"', r.text)
    assert len(plots) == 3  # lr, train_loss, val_loss
    png = client.get(plots[0].replace("&amp;", "&"))
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    # the list's checkboxes send ?ids=a&ids=b: the same page
    assert client.get(f"/runs/compare?ids={ids['a']}&ids={ids['b']}").status_code == 200


def test_compare_refuses_bad_ids(seeded):
    client, _, ids = seeded
    for query, status, words in [
        (f"ids={ids['a']}", 400, "2 to 4"),
        ("", 400, "got 0"),
        (",".join(ids[k] for k in ("a", "b", "c", "d", "f0")), 400, "got 5"),
        (f"ids={ids['a']},ffffffffffffffff", 404, "no run 'ffffffffffffffff'"),
        (f"ids={ids['a']},{ids['a'][:8]}", 400, "same run"),
    ]:
        r = client.get("/runs/compare?" + (query if query.startswith("ids=") or not query else "ids=" + query))
        assert r.status_code == status and words in html.unescape(r.text), (query, r.status_code)
        assert "Traceback" not in r.text
    assert client.get(f"/runs/compare/curve.png?ids={ids['a']},{ids['b']}&key=nope").status_code == 404


def test_store_has_the_ui_indexes(seeded):
    _, store, _ = seeded
    inspector = sa.inspect(store.engine)
    runs = {tuple(i["column_names"]) for i in inspector.get_indexes("runs")}
    assert {("started_at", "id"), ("status", "started_at", "id"), ("experiment", "started_at", "id")} <= runs
    assert ("run_id", "key", "step") in {tuple(i["column_names"]) for i in inspector.get_indexes("run_metrics")}
    assert ("run_id",) in {tuple(i["column_names"]) for i in inspector.get_indexes("model_versions")}
