"""Property test: requests generated from the server's own OpenAPI schema, plus arbitrary JSON,
against a real server on loopback — no response may be a 5xx."""

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve import Server, registered  # noqa: F401  (the fixture)

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@pytest.fixture(scope="module")
def live(registered):  # noqa: F811
    url, _, _ = registered
    server = Server("clf@production", url)
    yield server
    server.stop()


def _resolve(schema: dict, components: dict) -> dict:
    """Inline $refs so hypothesis-jsonschema can read the request schema on its own."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _resolve(components[schema["$ref"].split("/")[-1]], components)
        return {k: _resolve(v, components) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_resolve(v, components) for v in schema]
    return schema


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values matching a JSON schema (the subset FastAPI emits here: anyOf, const, enum, object, array,
    scalars), with optional object fields sometimes left out."""
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries({k: from_schema(v) for k, v in props.items() if k in required},
                                     optional={k: from_schema(v) for k, v in props.items() if k not in required})
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), max_size=5)
    scalars = {"number": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**6, 10**6),
               "integer": st.integers(-10**6, 10**6), "boolean": st.booleans(), "null": st.none(),
               "string": st.text(max_size=int(schema.get("maxLength", 40)))}
    return scalars.get(kind, JSON)


def _body_schema(doc: dict, path: str) -> dict:
    content = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return _resolve(content, doc["components"]["schemas"])


def test_no_5xx_from_schema_generated_or_arbitrary_bodies(live):
    doc = httpx.get(f"{live.url}/openapi.json").json()
    predict = _body_schema(doc, "/v1/models/{name}/predict")
    feedback = _body_schema(doc, "/v1/feedback")
    seen: dict[int, int] = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=from_schema(predict) | JSON, name=st.sampled_from(["clf", "other", "%2e%2e", "clf%00"]))
    def predict_case(body, name):
        r = live.client.post(f"/v1/models/{name}/predict", json=body)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (body, r.text)

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=from_schema(feedback) | JSON)
    def feedback_case(body):
        r = live.client.post("/v1/feedback", json=body)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (body, r.text)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(raw=st.binary(max_size=300), path=st.sampled_from(["/v1/models/clf/predict", "/v1/feedback"]))
    def raw_case(raw, path):
        r = live.client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code < 500, (raw, r.text)

    predict_case()
    feedback_case()
    raw_case()
    assert seen.get(200, 0) + seen.get(201, 0) > 0  # valid requests were generated and answered
    assert all(code < 500 for code in seen)
