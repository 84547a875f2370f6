"""The Open Inference Protocol (v2) beside /v1: a client no one here wrote (tritonclient's HTTP client)
against a real `loopml serve` on loopback, and hostile v2 requests in-process (TestClient, to stay fast)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import needs_dataset
from test_serve import Server

import loopml
from loopml.registry import Store

KEY = "v2-secret"


@pytest.fixture(scope="module")
def adult_served(tmp_path_factory):
    """A classifier on a fixed-seed adult subset, registered and served by a real `loopml serve` process."""
    from bench import realdata

    train, test = realdata.adult()
    root = tmp_path_factory.mktemp("v2")
    url = f"sqlite:///{root / 'registry.db'}"
    store = Store(url, str(root / "artifacts"))
    model = loopml.Model(target="income", training={"epochs": 1, "seed": 0}).fit(
        realdata.subsample(train, 500, "income"), progress=False, cache_dir=False)
    store.register("adult", path=model.save(root / "m1"))
    store.promote("adult", 1)
    rows = test.dropna().drop(columns=["income"]).sample(100, random_state=0).reset_index(drop=True)
    server = Server("adult@production", url, "--api-key", KEY)
    server.client.headers["x-api-key"] = KEY
    yield server, url, rows
    if server.proc.poll() is None:
        server.stop()


def _tensor(client_module, name: str, column: pd.Series, datatype: str):
    values = column.to_numpy(dtype=object if datatype == "BYTES" else np.float64)
    tensor = client_module.InferInput(name, [len(values)], datatype)
    tensor.set_data_from_numpy(values, binary_data=False)
    return tensor


def _texts(values: np.ndarray) -> list[str]:
    """A BYTES output as text (tritonclient gives str for JSON outputs, bytes for binary ones)."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


@needs_dataset("adult")
def test_tritonclient_health_metadata_and_infer_match_v1_and_the_loaded_model(adult_served):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    server, url, rows = adult_served
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("adult")
        assert client.get_server_metadata()["name"] == "loopml"
        meta = client.get_model_metadata("adult")
        assert meta["platform"] == "loopml" and meta["versions"] == ["1"]
        datatypes = {i["name"]: i["datatype"] for i in meta["inputs"]}
        assert list(datatypes) == list(rows.columns)
        assert datatypes["age"] == "FP64" and datatypes["workclass"] == "BYTES" and datatypes["sex"] == "BYTES"
        outputs = {o["name"]: o for o in meta["outputs"]}
        classes = json.loads(outputs["probabilities"]["parameters"]["classes"])
        assert outputs["probabilities"]["shape"] == [-1, 2] and outputs["label"]["datatype"] == "BYTES"
        with pytest.raises(InferenceServerException, match="unknown model 'adults'"):
            client.get_model_metadata("adults")

        inputs = [_tensor(httpclient, c, rows[c], datatypes[c]) for c in rows.columns]
        wanted = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("label", "probabilities", "prediction_id")]
        result = client.infer("adult", inputs, outputs=wanted, request_id="batch-1", headers={"x-api-key": KEY})
        labels = _texts(result.as_numpy("label"))
        probabilities = result.as_numpy("probabilities")
        ids = _texts(result.as_numpy("prediction_id"))
        assert result.get_response()["id"] == "batch-1" and probabilities.shape == (100, 2) and len(set(ids)) == 100

        records = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")]
        v1 = server.client.post("/v1/models/adult/predict", json=records).json()["predictions"]
        assert labels == [str(p["prediction"]) for p in v1]
        np.testing.assert_allclose(probabilities, [[p["probabilities"][c] for c in classes] for p in v1], rtol=1e-12)
        loaded = loopml.load(Store(url).resolve("adult:1")["path"]).predict(rows)
        assert labels == [str(v) for v in loaded]

        # the same feedback ids as /v1: a v2 prediction takes a label
        assert server.client.post("/v1/feedback", json={"prediction_id": ids[0], "label": classes[0]}).status_code == 201
        # no outputs named: tritonclient asks for binary outputs; JSON comes back and it still reads it
        plain = client.infer("adult", inputs, headers={"x-api-key": KEY})
        assert _texts(plain.as_numpy("label")) == labels and plain.as_numpy("prediction_id").shape == (100,)
        with pytest.raises(InferenceServerException, match="API key"):  # auth as on /v1, in the v2 error shape
            client.infer("adult", inputs)
        binary = [httpclient.InferInput("age", [100], "FP64")]
        binary[0].set_data_from_numpy(rows["age"].to_numpy(np.float64), binary_data=True)
        with pytest.raises(InferenceServerException, match="binary tensor data is not supported"):
            client.infer("adult", binary, headers={"x-api-key": KEY})
    finally:
        client.close()
    metrics = server.client.get("/metrics").text  # the shared predict path counted v2's rows with /v1's
    assert 'loopml_predictions_total{model="adult"} 300.0' in metrics
    assert 'route="/v2/models/{name}/infer",status="200"' in metrics
    assert server.stop()
    logged = {r["id"] for r in Store(url).list_predictions("adult")}
    assert set(ids) <= logged  # the prediction log has every v2 row


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    """In-process: a classifier (number, 0/1 and red/blue binaries, a category, an ignored id column) behind an API key."""
    from fastapi.testclient import TestClient

    from loopml.serve.app import ServeSettings, create_app

    root = tmp_path_factory.mktemp("v2-attack")
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    df = pd.DataFrame({"row_id": [f"r{i}" for i in range(200)], "x": x, "flag": rng.choice([0, 1], size=200),
                       "color": rng.choice(["red", "blue"], size=200), "size": rng.choice(["S", "M", "L"], size=200),
                       "label": np.where(x > 0, "yes", "no")})
    url = f"sqlite:///{root / 'registry.db'}"
    store = Store(url, str(root / "artifacts"))
    model = loopml.Model(target="label", exclude=["row_id"], training={"epochs": 1, "seed": 0}).fit(
        df, progress=False, cache_dir=False)
    store.register("a", path=model.save(root / "m1"))
    store.promote("a", 1)
    settings = ServeSettings(model="a@production", store=url, artifacts=str(root / "artifacts"), monitor_interval_s=0,
                             log_durability="none", max_body_bytes=20_000, max_records=50, api_keys=[KEY])
    with TestClient(create_app(settings), headers={"x-api-key": KEY}) as c:
        yield c


def _body(n: int = 2) -> dict:
    return {"inputs": [{"name": "x", "shape": [n], "datatype": "FP64", "data": [0.5 * i - 0.2 for i in range(n)]},
                       {"name": "flag", "shape": [n, 1], "datatype": "INT64", "data": [[i % 2] for i in range(n)]},
                       {"name": "color", "shape": [n], "datatype": "BYTES", "data": ["red", None][:n] + ["blue"] * (n - 2)},
                       {"name": "size", "shape": [n], "datatype": "BYTES", "data": ["S", "L"][:n] + ["M"] * (n - 2)}]}


def _error(response, status: int, *words: str) -> str:
    """A v2 error: the status, strict JSON {"error": ...} naming ``words``, no traceback."""
    assert response.status_code == status, response.text
    text = json.loads(response.content, parse_constant=lambda c: pytest.fail(f"{c} in a response"))["error"]
    assert "Traceback" not in text and all(w in text for w in words), text
    return text


def test_v2_rows_match_v1_and_outputs_are_selectable(v2):
    body = {**_body(), "id": "req-7", "parameters": {"anything": 1}}
    r = v2.post("/v2/models/a/versions/1/infer", json=body)
    assert r.status_code == 200 and r.json()["id"] == "req-7" and r.json()["model_version"] == "1"
    out = {o["name"]: o for o in r.json()["outputs"]}
    v1 = v2.post("/v1/models/a/predict", json=[{"x": -0.2, "flag": 0, "color": "red", "size": "S"},
                                                 {"x": 0.3, "flag": 1, "color": None, "size": "L"}]).json()["predictions"]
    assert out["label"]["data"] == [p["prediction"] for p in v1]
    assert out["probabilities"]["data"] == [p["probabilities"][c] for p in v1 for c in ("no", "yes")]
    nested = {**_body(), "outputs": [{"name": "prediction_id"}, {"name": "label"}]}
    nested["inputs"][0] = {**nested["inputs"][0], "shape": [2, 1], "data": [[-0.2], [0.3]]}
    r = v2.post("/v2/models/a/infer", json=nested)
    assert [o["name"] for o in r.json()["outputs"]] == ["prediction_id", "label"]
    assert r.json()["outputs"][1]["data"] == out["label"]["data"]
    ignored = {"inputs": [*_body()["inputs"], {"name": "row_id", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
    assert v2.post("/v2/models/a/infer", json=ignored).status_code == 200  # an excluded column: accepted, ignored


def _with(change) -> dict:
    body = _body()
    change(body)
    return body


@pytest.mark.parametrize("change, words", [
    (lambda b: b["inputs"][0].update(datatype="BYTES"), ("input 'x'", "BYTES", "FP64 expected")),
    (lambda b: b["inputs"][2].update(datatype="FP32"), ("input 'color'", "element 0", "not FP32 data")),
    (lambda b: b["inputs"][3].update(datatype="FP32"), ("input 'size'", "category column", "BYTES expected")),
    (lambda b: b["inputs"][0].update(shape=[3]), ("input 'x'", "shape [3] holds 3 elements, data has 2")),
    (lambda b: b["inputs"][0].update(shape=[1, 2]), ("input 'x'", "not [n] or [n, 1]")),
    (lambda b: b["inputs"][0].update(shape=[2], data=[[1.0, 2.0]]), ("input 'x'", "nested data does not match")),
    (lambda b: b["inputs"][1].update(shape=[1], data=[1]), ("same number of rows",)),
    (lambda b: b["inputs"][0].update(name="xx"), ("unknown input 'xx'", "did you mean 'x'")),
    (lambda b: b["inputs"].pop(2), ("missing input 'color'",)),
    (lambda b: b["inputs"].append(dict(b["inputs"][0])), ("input 'x' is given twice",)),
    (lambda b: b["inputs"][0].update(data=["0.5", 1.0]), ("input 'x'", "element 0", "not FP64 data")),
    (lambda b: b["inputs"][1].update(data=[[1], [True]]), ("input 'flag'", "element 1", "not INT64 data")),
    (lambda b: b["inputs"][1].update(data=[[1], [7]]), ("flag", "not one of the two values")),
    (lambda b: b["inputs"][0].update(data=[1e308, 1.0]), ("x", "out of range")),
    (lambda b: b["inputs"][0].update(parameters={"binary_data_size": 16}), ("binary tensor data is not supported",)),
    (lambda b: b["inputs"][0].update(datatype="FP64", values=[1]), ("unknown field 'values'",)),
    (lambda b: b.update(input=[]), ("unknown field 'input'", "did you mean 'inputs'")),
    (lambda b: b.update(outputs=[{"name": "labels"}]), ("unknown output 'labels'", "did you mean 'label'")),
    (lambda b: b.update(inputs=[]), ("non-empty array",)),
    (lambda b: b.update(id=5), ("id: a string",)),
    (lambda b: b.update(outputs=[{"name": "label"}, {"name": "label"}]), ("output 'label' is asked for twice",)),
    (lambda b: [t.update(shape=[0], data=[]) for t in b["inputs"]], ("zero rows",)),
])
def test_bad_tensors_are_400_naming_the_input(v2, change, words):
    _error(v2.post("/v2/models/a/infer", json=_with(change)), 400, *words)


def test_hostile_bodies_never_reach_a_500(v2):
    good = json.dumps(_body())
    for constant in ("NaN", "Infinity", "-Infinity"):  # not JSON at all
        _error(v2.post("/v2/models/a/infer", content=good.replace("0.3", constant)), 400, "not valid JSON", constant)
    _error(v2.post("/v2/models/a/infer", content=good.replace("0.3", "1e999")), 400, "element 1", "not a finite number")
    _error(v2.post("/v2/models/a/infer", content=good.replace('"red"', '"\\ud800"')), 400, "input 'color'", "surrogate")
    lone = json.dumps({**_body(), "id": "a\ud800"})  # echoed, it would be a lone surrogate in the answer
    _error(v2.post("/v2/models/a/infer", content=lone), 400, "id: a string of valid Unicode")
    _error(v2.post("/v2/models/a/infer", content=b"{not json"), 400, "not valid JSON")
    _error(v2.post("/v2/models/a/infer", content=b"[" * 5000 + b"]" * 5000), 400, "body")
    _error(v2.post("/v2/models/a/infer", json=[1, 2]), 400, "JSON object")
    _error(v2.post("/v2/models/a/infer", json=_body(51)), 413, "at most 50 rows")
    _error(v2.post("/v2/models/a/infer", json=_body(1500)), 413, "request body over 20000 bytes")  # the body cap
    _error(v2.post("/v2/models/a/infer", content=good, headers={"Inference-Header-Content-Length": "10"}), 400, "binary")


def test_names_versions_and_keys(v2):
    _error(v2.post("/v2/models/b/infer", json=_body()), 404, "unknown model 'b'", "serves 'a'")
    _error(v2.post("/v2/models/a/versions/2/infer", json=_body()), 404, "no version '2'", "serves version 1")
    _error(v2.get("/v2/models/b"), 404, "unknown model 'b'")
    _error(v2.get("/v2/models/a/versions/9"), 404, "no version '9'")
    _error(v2.get("/v2/nowhere"), 404, "Not Found")
    _error(v2.post("/v2/models/a/infer", json=_body(), headers={"x-api-key": "wrong"}), 401, "API key")
    assert v2.get("/v2/models/a", headers={"x-api-key": ""}).status_code == 200  # metadata is open, as /v1/models
    meta = v2.get("/v2/models/a").json()
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == \
        [("x", "FP64", [-1]), ("flag", "INT64", [-1]), ("color", "BYTES", [-1]), ("size", "BYTES", [-1])]
    assert v2.get("/v2/health/live").json() == {"live": True} and v2.get("/v2/health/ready").json() == {"ready": True}
    assert v2.get("/v1/models/nope/predict").json().get("detail")  # /v1 keeps its own error shape


def test_regression_answers_an_fp64_prediction(tmp_path):
    from fastapi.testclient import TestClient

    from loopml.serve.app import ServeSettings, create_app

    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": rng.normal(size=120)})
    df["y"] = 3 * df["x"] + 1
    path = loopml.Model(target="y", training={"epochs": 1, "seed": 0}).fit(df, progress=False, cache_dir=False).save(
        tmp_path / "reg")
    settings = ServeSettings(model=str(path), store=f"sqlite:///{tmp_path / 'r.db'}", artifacts=str(tmp_path / "a"),
                             monitor_interval_s=0, log_durability="none")
    with TestClient(create_app(settings)) as c:
        meta = c.get("/v2/models/reg").json()  # a bundle folder is served under its folder name, version 0
        assert meta["versions"] == ["0"] and [o["name"] for o in meta["outputs"]] == ["prediction", "prediction_id"]
        r = c.post("/v2/models/reg/versions/0/infer",
                   json={"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [0.0, 1.0, -1.0]}]})
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        v1 = c.post("/v1/models/reg/predict", json=[{"x": 0.0}, {"x": 1.0}, {"x": -1.0}]).json()["predictions"]
        assert out["datatype"] == "FP64" and out["data"] == [p["prediction"] for p in v1]
