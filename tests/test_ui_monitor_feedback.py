"""The dashboard's monitor and labelling pages over a seeded store: drift windows, paged predictions,
the ranked queue, labels written as feedback rows (admin + CSRF only), and logged inputs shown inert."""

import re
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import loopml
from loopml.loop.monitor import monitor
from loopml.registry import Store, db
from loopml.ui.app import create_ui_app
from loopml.ui.context import UISettings

SCRIPT = "<script>alert(1)</script>"


def make(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return pd.DataFrame({"a": a, "b": rng.normal(size=n),
                         "note": [f"{'good' if x > 0 else 'bad'} item {i % 5}" for i, x in enumerate(a)],
                         "label": np.where(a > 0, "pos", "neg")})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("uimf")
    model = loopml.Model(target="label", training={"epochs": 3, "seed": 0}).fit(make(300, 0), progress=False,
                                                                               cache_dir=False)
    return model, model.save(root / "clf")


def _log(store: Store, frame: pd.DataFrame, model, start: float) -> list[str]:
    out = model.predictions(frame)
    rows, ids = [], []
    for i, record in enumerate(frame.to_dict("records")):
        pid = uuid.uuid4().hex
        ids.append(pid)
        rows.append({"id": pid, "model_name": "clf", "model_version": 1, "created_at": start + i * 1e-3,
                     "inputs": record, "latency_ms": 1.5,
                     "outputs": {"prediction": out.iloc[i, 0],
                                 "probabilities": {"neg": float(out.iloc[i, 1]), "pos": float(out.iloc[i, 2])}}})
    store.log_predictions(rows)
    return ids


@pytest.fixture
def seeded(tmp_path, trained):
    model, model_dir = trained
    store = Store(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    store.register("clf", path=model_dir)
    store.promote("clf", 1)
    traffic = make(240, 1).drop(columns=["label"])
    traffic.loc[5, ["a", "note"]] = [_on_the_boundary(model, traffic.loc[5, "b"]), SCRIPT]  # the queue ranks it first
    ids = _log(store, traffic, model, time.time() - 100)
    monitor(store, "clf", last=120)  # two windows: the second over the same rows, a little later
    monitor(store, "clf", last=200)
    client = TestClient(create_ui_app(UISettings(admin_token="t"), store=store))
    return store, client, ids


def _on_the_boundary(model, b: float) -> float:
    """The ``a`` at which the model is least sure of a row with this ``b`` and the script as its note (the margin
    nearest 0, found on a coarse then a fine grid): the most uncertain row, whatever its near neighbours."""
    centre, width = 0.0, 2.0
    for _ in range(3):
        grid = np.linspace(centre - width, centre + width, 201)
        proba = model.predictions(pd.DataFrame({"a": grid, "b": b, "note": SCRIPT})).iloc[:, 1].to_numpy()
        centre, width = float(grid[np.abs(proba - 0.5).argmin()]), width / 50
    return centre


def _feedback(store: Store) -> list[dict]:
    with store.engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(sa.select(db.feedback).order_by(db.feedback.c.id))]


def _login(client: TestClient) -> None:
    assert client.post("/login", data={"token": "t"}, follow_redirects=False).status_code == 303


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def _queue_ids(html: str) -> list[str]:
    return re.findall(r'<tr class="queue-row" tabindex="0" data-id="([0-9a-f]+)"', html)


def test_monitor_page_shows_windows_live_metric_chart_and_loop(seeded):
    store, client, _ = seeded
    listing = client.get("/monitor")
    assert listing.status_code == 200 and 'href="/monitor?model=clf"' in listing.text
    page = client.get("/monitor?model=clf")
    assert page.status_code == 200, page.text
    html = page.text
    windows = store.list_drift_windows("clf")
    for w in windows:
        assert f"#{w['id']}" in html
    grid = html[html.index('id="drift-grid"'):html.index("</table>", html.index('id="drift-grid"'))]
    for col in ("<th>a</th>", "<th>b</th>", "<th>note</th>", "<th>(predictions)</th>"):
        assert col in grid
    newest = windows[0]["results"]
    psi_a = f"{newest['columns']['a']['psi']:.3f}".rstrip("0").rstrip(".")
    assert re.search(rf'class="num lvl-{newest["columns"]["a"]["level"]}"[^>]*>{re.escape(psi_a)}</td>', grid), grid
    assert "live accuracy" in grid and "no labels" in grid and "test accuracy" in grid
    assert '<img class="plot" src="data:image/png;base64,' in html
    assert "loop: never run" in html and "no rollout in progress" in html


def test_monitor_live_metric_and_labels_follow_feedback(seeded):
    store, client, ids = seeded
    newest = ids[-1]
    store.add_feedback("clf", "pos", newest)
    monitor(store, "clf", last=200)
    html = client.get("/monitor?model=clf&per=5").text
    row = re.search(rf'<tr>\s*<td title="{newest}">.*?</tr>', html, re.S).group(0)
    assert row.rstrip("</tr>").rstrip().endswith("pos</td>"), row
    grid = html[html.index('id="drift-grid"'):]
    assert re.search(r'<span class="(good|bad)">[01](\.\d+)?</span> <span class="muted">\(1\)</span>', grid), grid


def test_monitor_unknown_model_and_bad_parameters_are_one_line(seeded):
    _, client, _ = seeded
    page = client.get("/monitor?model=clff")
    assert page.status_code == 404
    assert re.search(r'<p class="error" role="alert">no model named &#39;clff&#39; \(did you mean &#39;clf&#39;\?\)</p>',
                     page.text), page.text
    assert client.get("/monitor?model=clf&windows=0").status_code == 422
    assert client.get("/monitor?model=clf&per=100000").status_code == 422
    assert "Traceback" not in page.text


def test_monitor_predictions_are_paged_newest_first(seeded):
    _, client, ids = seeded
    seen = []
    for number in (1, 2, 3):
        html = client.get(f"/monitor?model=clf&per=100&page={number}").text
        shown = re.findall(r'<td title="([0-9a-f]{32})">', html)
        seen += shown
        assert ('rel="next"' in html) == (number < 3), number
    assert seen == ids[::-1]  # 240 rows: 100 + 100 + 40, newest first, none twice
    assert "page 3 of 3" in html


def test_monitor_lists_only_the_newest_rows(seeded, monkeypatch):
    from loopml.ui import queries_monitor

    _, client, ids = seeded
    monkeypatch.setattr(queries_monitor, "MAX_LISTED", 150)
    last = client.get("/monitor?model=clf&per=100&page=2").text
    assert re.findall(r'<td title="([0-9a-f]{32})">', last) == ids[::-1][100:150]
    assert 'rel="next"' not in last and "The newest 150 predictions are listed" in last
    beyond = client.get("/monitor?model=clf&per=100&page=3")
    assert beyond.status_code == 400 and "the monitor lists the newest 150 predictions" in beyond.text


def test_queue_shows_ranked_rows_with_reasons_read_only_without_login(seeded):
    _, client, _ = seeded
    html = client.get("/feedback?model=clf&n=10").text
    rows = _queue_ids(html)
    assert len(rows) == 10
    assert html.count("margin ") >= 10 and " between neg and pos" in html
    assert "ranked by clf:1 (uncertainty) at " in html
    assert "label-form" not in html and "log in to label" in html
    assert client.get("/feedback?model=clf&strategy=confident").status_code == 422
    assert "valid strategies: uncertainty, drift, diverse, random" in client.get("/feedback?model=clf&strategy=x").text
    assert client.get("/feedback?model=clf&n=0").status_code == 422
    assert client.get("/feedback?model=nope").status_code == 404
    assert client.get("/feedback").status_code == 200


def test_labelling_three_rows_writes_three_feedback_rows(seeded):
    store, client, _ = seeded
    _login(client)
    html = client.get("/feedback?model=clf&n=10").text
    assert 'class="secondary label-button"' in html and '<span class="kbd">1</span> neg' in html
    csrf, queue = _csrf(html), _queue_ids(html)
    picks = queue[:3]
    # htmx: the row comes back as "labelled ✓"; a plain form post is redirected to the queue
    swapped = client.post("/feedback/clf/label", data={"prediction_id": picks[0], "label": "pos", "csrf": csrf},
                          headers={"HX-Request": "true"})
    assert swapped.status_code == 200 and "labelled ✓" in swapped.text and "<html" not in swapped.text
    for pid, label in zip(picks[1:], ["neg", "pos"], strict=True):
        plain = client.post("/feedback/clf/label", data={"prediction_id": pid, "label": label, "csrf": csrf,
                                                         "strategy": "uncertainty", "n": "10"}, follow_redirects=False)
        assert plain.status_code == 303 and plain.headers["location"] == "/feedback?model=clf&strategy=uncertainty&n=10"
    rows = _feedback(store)
    assert [(r["prediction_id"], r["label"]) for r in rows] == list(zip(picks, ["pos", "neg", "pos"], strict=True))
    logged = store.get_prediction(picks[0])
    assert rows[0]["inputs"] == logged["inputs"] and rows[0]["prediction_outputs"] == logged["outputs"]
    assert rows[0]["model_version"] == 1
    # the cached ranking drops the labelled rows
    after = _queue_ids(client.get("/feedback?model=clf&n=10").text)
    assert not set(picks) & set(after) and after[:7] == queue[3:10]
    # the same prediction again: 409, nothing written
    again = client.post("/feedback/clf/label", data={"prediction_id": picks[0], "label": "neg", "csrf": csrf})
    assert again.status_code == 409 and "already labelled" in again.text
    assert len(_feedback(store)) == 3


def test_labels_are_refused_without_admin_csrf_or_a_class(seeded):
    store, client, ids = seeded
    pid = ids[0]
    anonymous = client.post("/feedback/clf/label", data={"prediction_id": pid, "label": "pos"})
    assert anonymous.status_code == 401 and "log in with the admin token first" in anonymous.text
    _login(client)
    csrf = _csrf(client.get("/feedback?model=clf").text)
    forged = client.post("/feedback/clf/label", data={"prediction_id": pid, "label": "pos", "csrf": "0" * 64})
    assert forged.status_code == 403
    wrong = client.post("/feedback/clf/label", data={"prediction_id": pid, "label": "maybe", "csrf": csrf})
    assert wrong.status_code == 422
    assert "label: &#39;maybe&#39; is not a class of &#39;label&#39; (neg, pos)" in wrong.text
    missing = client.post("/feedback/clf/label", data={"prediction_id": "f" * 32, "label": "pos", "csrf": csrf})
    assert missing.status_code == 404 and "no prediction with id" in missing.text
    other = client.post("/feedback/nope/label", data={"prediction_id": pid, "label": "pos", "csrf": csrf})
    assert other.status_code == 404
    assert _feedback(store) == []
    # a class by its canonical key is the class itself
    assert client.post("/feedback/clf/label", data={"prediction_id": pid, "label": "pos", "csrf": csrf},
                       follow_redirects=False).status_code == 303
    assert [r["label"] for r in _feedback(store)] == ["pos"]


def test_a_logged_script_renders_as_text_on_both_pages(seeded):
    _, client, ids = seeded
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    monitor_page = client.get("/monitor?model=clf&per=200&page=2").text
    queue = client.get("/feedback?model=clf&n=20").text
    assert ids[5] in _queue_ids(queue)
    for html in (monitor_page, queue):
        assert escaped in html and SCRIPT not in html
        assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/vendor/htmx.min.js" defer>',
                                                       '<script src="/static/ui.js" defer>']


def test_thumbnails_need_a_media_root_and_an_image_column(seeded):
    _, client, ids = seeded
    assert client.get(f"/feedback/clf/thumb/{ids[0]}/note").status_code == 404


def test_monitor_shows_the_loop_schedule_and_rollouts_in_progress(seeded):
    from loopml.loop.rollout import insert_rollout
    from loopml.loop.worker import write_state

    store, client, _ = seeded
    write_state(store, "clf", cycles=3, last_cycle_at=time.time() - 60, next_cycle_at=time.time() + 60,
                state={"phase": "idle"})
    with store.writer.begin() as c:
        insert_rollout(c, "clf", alias="production", candidate=2, champion=1, mode="canary", percent=10.0,
                       numbers={"candidate_labels": 7})
    html = client.get("/monitor?model=clf").text
    assert "no worker running; 3 cycles, last " in html and "(when a worker runs); idle" in html
    assert re.search(r"rollout: clf:2 canary 10%\s*<span class=\"tag\">trial</span> since .*\(champion :1, 7 live labels\)",
                     html), html


def test_a_regressor_label_is_a_finite_number():
    from types import SimpleNamespace

    from loopml.ui.auth import UIError
    from loopml.ui.pages.feedback import check_label

    target = SimpleNamespace(kind="number", column="price")
    assert check_label(target, "3.5") == 3.5
    for bad, line in (("cheap", "label: a number is expected for 'price'"), ("1e309", "is not"), ("nan", "is not")):
        with pytest.raises(UIError) as refused:
            check_label(target, bad)
        assert refused.value.status == 422 and line in refused.value.message, refused.value.message


def test_a_stale_ranking_is_shown_while_it_is_ranked_again(seeded, monkeypatch):
    from loopml.ui.pages import feedback

    _, client, _ = seeded
    first = client.get("/feedback?model=clf&n=5").text
    assert "re-ranking now" not in first
    monkeypatch.setattr(feedback, "TTL_S", -1.0)
    stale = client.get("/feedback?model=clf&n=5").text
    assert "re-ranking now" in stale and _queue_ids(stale) == _queue_ids(first)
    cache = client.app.state.ui.caches
    key = ("feedback.queue", "clf", 1, "uncertainty")
    deadline = time.time() + 60
    while cache[key]["refreshing"] and time.time() < deadline:
        time.sleep(0.1)
    monkeypatch.setattr(feedback, "TTL_S", 60.0)  # the fresh list is used as it is: no thread left running
    assert not cache[key]["refreshing"] and _queue_ids(client.get("/feedback?model=clf&n=5").text) == _queue_ids(first)


def test_image_thumbnails_only_for_files_inside_the_media_root(tmp_path, seeded, monkeypatch):
    from types import SimpleNamespace

    from PIL import Image

    from loopml.ui.pages import feedback

    store, _, _ = seeded
    media = tmp_path / "media"
    media.mkdir()
    Image.new("RGB", (640, 480), (200, 30, 30)).save(media / "cat.png")
    (tmp_path / "outside.png").write_bytes((media / "cat.png").read_bytes())
    image = SimpleNamespace(config=SimpleNamespace(type="image"))
    fake = SimpleNamespace(preprocessor=SimpleNamespace(features={"img": image}))
    monkeypatch.setattr(feedback, "production", lambda ctx, name: (1, fake))
    rows = [{"id": f"{i:032x}", "model_name": "clf", "model_version": 1, "created_at": time.time(),
             "inputs": {"img": path}, "outputs": {"prediction": "pos"}, "latency_ms": 1.0}
            for i, path in enumerate(["cat.png", "../outside.png", str(tmp_path / "outside.png"), "missing.png"])]
    store.log_predictions(rows)
    client = TestClient(create_ui_app(UISettings(admin_token="t", media_root=str(media)), store=store))
    small = client.get(f"/feedback/clf/thumb/{rows[0]['id']}/img")
    assert small.status_code == 200 and small.headers["content-type"] == "image/png"
    from io import BytesIO

    assert max(Image.open(BytesIO(small.content)).size) <= 160
    for r in rows[1:]:
        refused = client.get(f"/feedback/clf/thumb/{r['id']}/img")
        assert refused.status_code == 404 and str(tmp_path) not in refused.text
    assert client.get(f"/feedback/clf/thumb/{rows[0]['id']}/note").status_code == 404
    ctx = client.app.state.ui
    shown = [feedback._inputs(ctx, {"inputs": r["inputs"]}, {"img": "image"})[0]["thumb"] for r in rows]
    assert shown == [True, False, False, False]
