"""The Open Inference Protocol ("v2", the REST shape of KServe, Triton and Seldon) beside ``/v1``.

One tensor per input column (shape ``[n]`` or ``[n, 1]``, ``data`` flat or nested, JSON only: the
binary tensor extension is refused with a 400 that says so). Each row becomes the record a ``/v1``
request would send, is validated by the same request model and goes through the same predict path
(``predict_items`` in app.py: batcher, runner checks, prediction log, feedback ids, shadow, metrics).
Out: ``label`` (BYTES) and ``probabilities`` (FP64, ``[n, classes]``) for a classifier, ``prediction``
(FP64) for regression, and ``prediction_id`` (BYTES) for ``POST /v1/feedback``. FP64 because those
are the exact numbers ``/v1`` answers; FP32 would round a native learner's float64 scores.

The model name is the served model's name as ``/v1/models`` lists it: the registry name for
``NAME@alias`` / ``NAME:version``, the bundle folder's name for a path; the version is its registry
version (0 for a path). Errors are ``{"error": "..."}`` (``V2ErrorShape``, for every /v2 response).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from pydantic import ValidationError

import loopml
from loopml.errors import did_you_mean
from loopml.serve.schema import StrictJSONResponse, printable

FLOATS = ("FP64", "FP32", "FP16")
INT_RANGES = {"INT64": (-2**63, 2**63 - 1), "INT32": (-2**31, 2**31 - 1), "INT16": (-2**15, 2**15 - 1),
              "INT8": (-2**7, 2**7 - 1), "UINT64": (0, 2**64 - 1), "UINT32": (0, 2**32 - 1),
              "UINT16": (0, 2**16 - 1), "UINT8": (0, 2**8 - 1)}
NUMBERS = (*FLOATS, *INT_RANGES)
#: the datatypes an input column of each feature type accepts (what JSON carries for /v1 is the guide)
ACCEPTED = {"number": NUMBERS, "binary": ("BYTES", "BOOL", *NUMBERS), "category": ("BYTES", *INT_RANGES),
            "text": ("BYTES",), "image": ("BYTES",), "audio": ("BYTES",), "date": ("BYTES",),
            "skip": ("BYTES", "BOOL", *NUMBERS)}
HOSTILE = {"string_unicode": "not valid Unicode text (a lone surrogate such as \\ud800?)",
           "finite_number": "not a finite number"}
TOP_LEVEL = ("id", "parameters", "inputs", "outputs")
TOP_LEVEL_KEYS = frozenset(TOP_LEVEL)
TENSOR_KEYS = frozenset(("name", "shape", "datatype", "parameters", "data"))
#: the request as the protocol defines it, for /docs and /openapi.json (the route checks it by hand, naming the input)
INFER_REQUEST = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"},
    "parameters": {"type": "object"},
    "inputs": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
            "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": ["BOOL", "BYTES", *NUMBERS]},
            "parameters": {"type": "object"}, "data": {"type": "array", "description": "flat (row-major) or nested"}}}},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}
TAGS = ["Open Inference Protocol v2"]
BINARY_REFUSED = ("binary tensor data is not supported here: send JSON tensors "
                  "(tritonclient: set_data_from_numpy(..., binary_data=False))")


class V2Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _fail(message: str, status: int = 400) -> V2Error:
    return V2Error(status, printable(message))


def _advertised(feature) -> str:
    """The one datatype metadata names for a column (others in ``ACCEPTED`` are taken too)."""
    kind = feature.config.type
    if kind == "number":
        return "FP64"
    if kind == "binary":
        values = [str(v) for v in (feature.state or {}).get("values", [])]
        # booleans and 0/1 share canonical keys ("0", "1"): INT64 is named, BOOL is accepted as well
        return "INT64" if values and all(v.lstrip("-").isdigit() for v in values) else "BYTES"
    return "BYTES"


def model_metadata(served) -> dict:
    plan = plan_of(served)
    inputs = [{"name": c, "datatype": plan.columns[c].advertised, "shape": [-1]} for c in plan.inputs]
    outputs = [{"name": name, "datatype": "FP64" if name in ("prediction", "probabilities") else "BYTES", "shape": [-1]}
               for name in plan.outputs]
    for output in outputs:
        if output["name"] == "probabilities":  # a parameter is a string: the class order as JSON
            output.update(shape=[-1, len(plan.classes)], parameters={"classes": plan.classes_json})
    target = served.model.preprocessor.target
    return {"name": served.name, "versions": [str(served.version)], "platform": "loopml", "inputs": inputs,
            "outputs": outputs, "parameters": {"target": target.column, "task": target.kind,
                                               "backend": served.runner.backend}}


def _flatten(data: Any, shape: list[int], name: str) -> list:
    """Row-major elements of ``data``, given flat or nested as ``shape`` says (the protocol allows both)."""
    expected = math.prod(shape)
    if not isinstance(data, list):
        raise _fail(f"input '{name}': data must be a JSON array")
    if all(not isinstance(v, list) for v in data):
        flat = data
    else:
        flat = []

        def walk(node: Any, depth: int) -> None:
            if depth == len(shape):
                if isinstance(node, list):
                    raise _fail(f"input '{name}': data is nested deeper than shape {shape}")
                flat.append(node)
                return
            if not isinstance(node, list) or len(node) != shape[depth]:
                raise _fail(f"input '{name}': nested data does not match shape {shape} at depth {depth}")
            for child in node:
                walk(child, depth + 1)

        walk(data, 0)
    if len(flat) != expected:
        raise _fail(f"input '{name}': shape {shape} holds {expected} elements, data has {len(flat)}")
    return flat


def _is_unicode(text: str) -> bool:
    """False for a string with a lone surrogate (``"\\ud800"``): it has no UTF-8 form to answer with."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_float(v: Any) -> bool:
    return (type(v) is float and math.isfinite(v)) or type(v) is int


def _int_check(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


#: each datatype's test of one JSON element (null is a missing value and passes)
ELEMENT_OK: dict[str, Callable[[Any], bool]] = {
    **dict.fromkeys(FLOATS, _is_float), **{d: _int_check(*r) for d, r in INT_RANGES.items()},
    "BOOL": lambda v: type(v) is bool, "BYTES": lambda v: type(v) is str}


@dataclass(frozen=True)
class Column:
    kind: str
    advertised: str
    accepted: frozenset


@dataclass(frozen=True)
class Plan:
    """What a request to one served version may hold and what it answers: made once per version, not per request."""

    columns: dict[str, Column]  # the model's inputs, then the ignored ones (row ids: any scalar, as on /v1)
    inputs: list[str]  # the columns a request must send
    classes: list[str] | None  # None for regression
    classes_json: str
    outputs: list[str]


def plan_of(served) -> Plan:
    pre = served.model.preprocessor
    columns = {c: Column(f.config.type, _advertised(f), frozenset(ACCEPTED.get(f.config.type, ("BYTES",))))
               for c, f in pre.features.items()}
    inputs = list(columns)
    for c in served.model.schema.columns:
        if c.type == "skip":
            columns.setdefault(c.name, Column("skip", "BYTES", frozenset(ACCEPTED["skip"])))
    classes = None if pre.target.kind == "number" else [str(c) for c in pre.target.classes]
    outputs = ["prediction"] if classes is None else ["label", "probabilities"]
    return Plan(columns, inputs, classes, json.dumps(classes), [*outputs, "prediction_id"])


def _shape_error(name: str, shape: Any) -> V2Error:
    return _fail(f"input '{name}': shape {str(shape)[:60]} is not [n] or [n, 1] (one value per row)")


def _values(tensor: Any, i: int, plan: Plan, seen: dict) -> tuple[str, list]:
    """One input tensor's name and elements, checked against its column and datatype (null = a missing value,
    as on /v1). Runs per tensor of every request: the common flat ``[n]`` case takes no detours."""
    if type(tensor) is not dict or type(tensor.get("name")) is not str:
        raise _fail(f"inputs[{i}]: a tensor is an object with a string 'name'")
    name = tensor["name"]
    if not tensor.keys() <= TENSOR_KEYS:
        extra = next(k for k in tensor if k not in TENSOR_KEYS)
        raise _fail(f"input '{name}': unknown field '{extra}'{did_you_mean(extra, TENSOR_KEYS)}")
    params = tensor.get("parameters")
    if params is not None:
        if type(params) is not dict:
            raise _fail(f"input '{name}': parameters must be an object")
        if "binary_data_size" in params or "shared_memory_region" in params:
            raise _fail(f"input '{name}': {BINARY_REFUSED}")
    column = plan.columns.get(name)
    if column is None:
        raise _fail(f"unknown input '{name}'{did_you_mean(name, plan.inputs)}")
    if name in seen:
        raise _fail(f"input '{name}' is given twice")
    datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
    if datatype not in column.accepted:
        others = ", ".join(d for d in ACCEPTED.get(column.kind, sorted(column.accepted)) if d != column.advertised)
        also = f"; also accepted: {others}" if others else ""
        raise _fail(f"input '{name}': datatype {str(datatype)[:20]!r} does not fit this {column.kind} column "
                    f"({column.advertised} expected{also})")
    if "data" not in tensor:
        raise _fail(f"input '{name}': no 'data'")
    if type(shape) is list and len(shape) == 1 and type(shape[0]) is int and type(data) is list and shape[0] == len(data):
        flat = data  # a nested element is no valid element of any datatype: the check below refuses it
    elif type(shape) is not list or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) \
            or not all(type(d) is int and d >= 0 for d in shape):
        raise _shape_error(name, shape)
    else:
        flat = _flatten(data, shape, name)
    ok = ELEMENT_OK[datatype]
    for k, value in enumerate(flat):
        if value is not None and not ok(value):
            why = "not a finite number" if datatype in FLOATS and type(value) is float else f"not {datatype} data"
            raise _fail(f"input '{name}': element {k} ({repr(value)[:60]}) is {why}")
    return name, flat


def request_rows(plan: Plan, body: Any, max_records: int) -> tuple[list[dict], list[str] | None]:
    """The /v1 records of a v2 infer body (one per row), and the outputs asked for (None = all)."""
    if type(body) is not dict:
        raise _fail("body: an inference request is a JSON object with 'inputs'")
    if not body.keys() <= TOP_LEVEL_KEYS:
        extra = next(k for k in body if k not in TOP_LEVEL_KEYS)
        raise _fail(f"body: unknown field '{extra}'{did_you_mean(extra, TOP_LEVEL)}")
    if "id" in body and (type(body["id"]) is not str or not _is_unicode(body["id"])):
        raise _fail("id: a string of valid Unicode text is expected (it is echoed in the answer)")
    if type(body.get("parameters", {})) is not dict:
        raise _fail("parameters: an object is expected")
    inputs = body.get("inputs")
    if type(inputs) is not list or not inputs:
        raise _fail("inputs: a non-empty array of tensors is required")
    columns: dict[str, list] = {}
    for i, tensor in enumerate(inputs):
        name, flat = _values(tensor, i, plan, columns)
        columns[name] = flat
    if len(columns) < len(plan.columns):
        missing = [c for c in plan.inputs if c not in columns]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise _fail(f"missing input '{missing[0]}'{more}")
    n = len(flat)
    if any(len(values) != n for values in columns.values()):
        shown = ", ".join(f"{k}: {len(v)}" for k, v in list(columns.items())[:4])
        raise _fail(f"inputs: every input needs the same number of rows ({shown})")
    if n == 0:
        raise _fail("inputs: zero rows have nothing to predict")
    if n > max_records:
        raise _fail(f"inputs: at most {max_records} rows per request", 413)
    names = list(columns)
    records = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return records, _requested_outputs(plan, body.get("outputs"))


def _requested_outputs(plan: Plan, outputs: Any) -> list[str] | None:
    if outputs is None:
        return None
    if type(outputs) is not list or not all(type(o) is dict and type(o.get("name")) is str for o in outputs):
        raise _fail("outputs: an array of objects with a string 'name' is expected")
    names = [o["name"] for o in outputs]
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise _fail(f"output '{twice[:60]}' is asked for twice")
    for name in names:
        if name not in plan.outputs:
            raise _fail(f"unknown output '{name}'{did_you_mean(name, plan.outputs)} (outputs: {', '.join(plan.outputs)})")
    return names


def response_outputs(plan: Plan, predictions: list[dict], wanted: list[str] | None) -> list[dict]:
    n = len(predictions)
    out = []
    if plan.classes is None:
        out.append({"name": "prediction", "datatype": "FP64", "shape": [n], "data": [p["prediction"] for p in predictions]})
    else:
        classes = plan.classes
        out.append({"name": "label", "datatype": "BYTES", "shape": [n], "data": [str(p["prediction"]) for p in predictions]})
        out.append({"name": "probabilities", "datatype": "FP64", "shape": [n, len(classes)],
                    "data": [p["probabilities"][c] for p in predictions for c in classes],
                    "parameters": {"classes": plan.classes_json}})
    out.append({"name": "prediction_id", "datatype": "BYTES", "shape": [n], "data": [p["prediction_id"] for p in predictions]})
    return out if wanted is None else [o for name in wanted for o in out if o["name"] == name]


def _refuse_constant(word: str) -> None:
    raise ValueError(f"{word} is not JSON (strict JSON has no NaN or Infinity)")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)  # made once: json.loads with options builds one per call


def parse_body(raw: bytes) -> Any:
    try:
        return _DECODER.decode(raw.decode("utf-8"))  # JSON between systems is UTF-8 (RFC 8259)
    except RecursionError:
        raise _fail("body: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _fail(f"body: not valid JSON ({str(e)[:120]})") from None


def add_v2_routes(app: FastAPI, state: dict, max_records: int, client_key: Callable,
                  predict_items: Callable[[Request, Any, list], Awaitable[tuple[int, list[dict]]]]) -> None:
    """The v2 routes over the served model in ``state["served"]`` (read per request: they follow hot swaps).
    Health and metadata are open, as /health and /v1/models are; infer needs the API key as /v1 predict does.
    On the app's own router, not an included ``APIRouter``: FastAPI matches an included router's routes
    through a slower nested path, which cost /v2 infer a measurable share of its throughput."""
    router = app.router
    plans: dict[str, Any] = {}  # the served version's input plan, remade after a swap

    def served_as(name: str, version: str | None):
        served = state["served"]
        if name != served.name:
            raise _fail(f"unknown model '{name}'; this server serves '{served.name}'", 404)
        if version is not None and version != str(served.version):
            raise _fail(f"model '{name}' has no version '{version}' here; this server serves version {served.version}", 404)
        return served

    def answer(content: dict, status: int = 200) -> StrictJSONResponse:
        return StrictJSONResponse(content, status_code=status)

    def error(e: V2Error) -> StrictJSONResponse:
        return answer({"error": e.message}, e.status)

    # infer first: routes match in order, and infer is the hot one
    documented = {"requestBody": {"required": True, "content": {"application/json": {"schema": INFER_REQUEST}}}}

    @router.post("/v2/models/{name}/infer", tags=TAGS, dependencies=[Depends(client_key)], summary="v2: inference",
                 openapi_extra=documented)
    # the /versions/{v} variants are left out of /openapi.json: the same operations, twice the fuzzing (README has them)
    @router.post("/v2/models/{name}/versions/{version}/infer", tags=TAGS, dependencies=[Depends(client_key)],
                 include_in_schema=False)
    async def infer(name: str, request: Request, version: str | None = None) -> StrictJSONResponse:
        try:
            served = served_as(name, version)
            input_class = state["input_class"]  # read with ``served``: a swap between them is caught in predict_items
            if request.headers.get("inference-header-content-length") is not None:
                raise _fail(BINARY_REFUSED)
            body = parse_body(await request.body())
            if plans.get("of") is not served:
                plans.update(of=served, plan=plan_of(served))
            plan = plans["plan"]
            records, wanted = request_rows(plan, body, max_records)
            items = [_validated(input_class, record, i) for i, record in enumerate(records)]
        except V2Error as e:
            return error(e)
        version_number, predictions = await predict_items(request, served, items)
        content = {"model_name": served.name, "model_version": str(version_number),
                   "outputs": response_outputs(plan, predictions, wanted)}
        if "id" in body:
            content["id"] = body["id"]
        return answer(content)

    @router.get("/v2/health/live", tags=TAGS, summary="v2: liveness")
    async def live() -> StrictJSONResponse:
        return answer({"live": True})

    @router.get("/v2/health/ready", tags=TAGS, summary="v2: readiness (as /ready)")
    async def ready(request: Request) -> StrictJSONResponse:
        log_health = request.app.state.predictions.health()
        ok = state["ready"] and log_health["status"] != "unavailable"
        if ok:
            return answer({"ready": True})
        why = "starting or stopping" if not state["ready"] else f"prediction log unavailable: {log_health.get('reason')}"
        return answer({"ready": False, "error": f"not ready ({why})"}, 503)

    @router.get("/v2", tags=TAGS, summary="v2: server metadata")
    async def server() -> StrictJSONResponse:
        return answer({"name": "loopml", "version": loopml.__version__, "extensions": []})

    @router.get("/v2/models/{name}", tags=TAGS, summary="v2: model metadata")
    @router.get("/v2/models/{name}/versions/{version}", tags=TAGS, include_in_schema=False)
    async def metadata(name: str, version: str | None = None) -> StrictJSONResponse:
        try:
            return answer(model_metadata(served_as(name, version)))
        except V2Error as e:
            return error(e)

    @router.get("/v2/models/{name}/ready", tags=TAGS, summary="v2: model readiness")
    @router.get("/v2/models/{name}/versions/{version}/ready", tags=TAGS, include_in_schema=False)
    async def model_ready(name: str, version: str | None = None) -> StrictJSONResponse:
        try:
            served = served_as(name, version)
        except V2Error as e:
            return error(e)
        if not state["ready"]:
            return answer({"name": served.name, "ready": False, "error": "not ready (starting or stopping)"}, 503)
        return answer({"name": served.name, "ready": True})



def _validated(input_class, record: dict, row: int):
    """The /v1 request model's checks on one row; a failure names the input and the row."""
    try:
        return input_class.model_validate(record)
    except ValidationError as e:
        errors = e.errors()
        # a value that fails every branch of a union (str | int | float) is reported by what is wrong with it
        hostile = next((err for err in errors if err["type"] in HOSTILE), None)
        first = hostile or errors[0]
        where = first["loc"][0] if first.get("loc") else "?"
        message = HOSTILE[first["type"]] if hostile else first.get("msg", "invalid value")
        raise _fail(f"input '{where}', row {row}: {message}") from None


class V2ErrorShape:
    """Every /v2 error response as the protocol shapes it, ``{"error": "..."}`` (also the 413 of the body cap
    and the 401 of the API key, which are answered before any v2 route runs); a 422 from the shared predict
    path (a value the model refuses) is a 400 here, as v2 clients expect."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/v2" or path.startswith("/v2/")):
            await self.app(scope, receive, send)
            return
        held: dict = {}

        async def reshape(message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"], held["body"] = message, b""
                return
            if "start" not in held:
                await send(message)
                return
            held["body"] += message.get("body", b"")
            if message.get("more_body"):
                return
            status, payload = _as_v2_error(held["start"]["status"], held["body"])
            headers = [(k, v) for k, v in held["start"].get("headers", [])
                       if k.lower() not in (b"content-length", b"content-type")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            await send({**held["start"], "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})

        await self.app(scope, receive, reshape)


def _as_v2_error(status: int, body: bytes) -> tuple[int, bytes]:
    try:
        content = json.loads(body)
    except ValueError:
        content = None
    status = 400 if status == 422 else status
    if isinstance(content, dict) and isinstance(content.get("error"), str):  # a v2 route's own answer
        return status, body
    if isinstance(content, dict) and "detail" in content:
        detail = content["detail"]
        message = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=True)[:500]
    else:
        message = body.decode("utf-8", "replace")[:500] or f"HTTP {status}"
    return status, json.dumps({"error": printable(message)}, ensure_ascii=True, allow_nan=False).encode("ascii")
