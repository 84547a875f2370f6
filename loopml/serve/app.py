"""The HTTP API. Thin routes over a ``Batcher`` (queues, batches) and a runner (torch or ONNX);
the prediction log and feedback go to the store, the former off the request path."""


import asyncio
import gc
import hmac
import json
import logging
import os
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

from fastapi import Body, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from loopml.data.validate import FLOAT32_MAX, NUMBER_RANGE
from loopml.errors import LoopmlError
from loopml.registry.records import FeedbackExists
from loopml.serve.batcher import Batcher, BatchFailed, QueueFull
from loopml.serve.docs import vendored_docs
from loopml.serve.limits import LimitsAndMetrics
from loopml.serve.metrics import ServerMetrics
from loopml.serve.predlog import DURABILITY, LogUnavailable, PredictionLog, default_spool_dir, parse_retention
from loopml.serve.queue_routes import queue_router  # GET /v1/feedback/queue (the labelling queue)
from loopml.serve.rollout import RolloutServing
from loopml.serve.schema import FeedbackResponse, ModelInfo, PredictResponse, StrictJSONResponse, printable, request_records
from loopml.serve.swap import LoadFailure, input_schema, predict_body, rebind, request_models
from loopml.serve.v2 import V2ErrorShape, add_v2_routes  # the Open Inference Protocol (KServe / Triton REST)

log = logging.getLogger("loopml.serve")


class ServeSettings(BaseModel):
    model: str = Field(description="NAME@alias, NAME:version or a model directory")
    store: str | None = None
    artifacts: str | None = None
    backend: str = "torch"
    threads: int | None = None
    #: where the torch backend runs the network: cpu, cuda, cuda:N, mps or auto
    device: str = "cpu"
    max_batch_size: int = Field(64, ge=1)
    max_wait_ms: float = Field(2.0, ge=0)
    max_queue: int = Field(4096, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_records: int = Field(1000, ge=1)
    api_keys: list[str] = []
    admin_token: str | None = None
    poll_interval_s: float = Field(0.25, gt=0)
    #: drift and live metrics over the last ``monitor_rows`` predictions, every this many seconds (0 = off)
    monitor_interval_s: float = Field(60.0, ge=0)
    monitor_rows: int = Field(1000, ge=50)
    media_root: str | None = None
    #: fsync: acknowledged predictions are fsync'd to a local spool first; spool: written, no fsync; none: memory
    log_durability: str = Field("fsync", pattern=f"^({'|'.join(DURABILITY)})$")
    spool_dir: str | None = None
    log_max_backlog: int = Field(100_000, ge=1)
    #: prune this model's prediction log: an age (30d, 12h, 45m) or a row count; None keeps everything
    log_retention: str | None = None
    log_retention_interval_s: float = Field(300.0, gt=0)
    #: mount the dashboard (loopml.ui) at /ui, over the same store
    ui: bool = False


@dataclass
class Served:
    model: Any
    runner: Any
    name: str
    version: int
    reference: str


def load_served(settings: ServeSettings, store) -> Served:
    import loopml
    from loopml.registry.store import REF
    from loopml.serve.onnx import model_example
    from loopml.serve.runner import make_runner

    reference = settings.model
    if REF.match(reference) and not Path(reference).exists():
        version = store.resolve(reference)
        model, name, number = loopml.load(version["path"]), version["name"], int(version["version"])
        onnx_path = Path(version["path"]).parent.parent / "onnx" / f"{Path(version['path']).name}.onnx"
    else:
        model, name, number = loopml.load(reference), Path(reference).resolve().name, 0
        onnx_path = Path(".loopml/onnx") / f"{name}.onnx"
        reference = name  # what clients see (/v1/models, /docs): never a server path
    if settings.media_root:
        model.config.data.media_root = settings.media_root
    runner = make_runner(model, settings.backend, onnx_path, settings.threads, settings.media_root, settings.device)
    try:  # warm up: the first batch pays for lazy initialisation, not a user
        runner.predict(model_example(model, 2, pixels=False).to_dict(orient="records"))
    except LoopmlError as e:
        log.warning("warm-up skipped: %s", e)
    return Served(model, runner, name, number, reference)


def create_app(settings: ServeSettings) -> FastAPI:
    from loopml.registry import Store
    from loopml.registry.db import store_url

    store = Store(settings.store, settings.artifacts)
    state = {"served": load_served(settings, store), "ready": False}
    first: Served = state["served"]
    metrics = ServerMetrics()
    metrics.model_version.labels(first.name).set(first.version)
    pre = first.model.preprocessor
    Input, Feedback = request_models(first)
    state["input_model"] = Input.__name__
    state["input_class"] = Input  # /v2 validates its rows with it
    # which columns a request was validated against, and which columns each served version reads: a swap to
    # other columns while a request waits must not answer it with columns dropped or read as missing
    validated_with: dict[type, tuple] = {Input: input_schema(first)}
    schema_of: dict[int, tuple] = {first.version: input_schema(first)}
    load_failure = LoadFailure()
    alias = settings.model.split("@", 1)[1] if "@" in settings.model and not Path(settings.model).exists() else None

    def infer(records: list[dict]) -> list[dict]:
        served = state["served"]  # read at dispatch: a swap takes effect between batches
        results = served.runner.predict(records)
        for r in results:
            r["version"] = served.version
        return results

    arriving = {"requests": 0}  # predict requests inside the handler, before the batcher has them
    batcher = Batcher(infer, settings.max_batch_size, settings.max_wait_ms, settings.max_queue, metrics.observe_batch,
                      arriving=lambda: arriving["requests"])
    spool_dir = settings.spool_dir or default_spool_dir(store_url(settings.store))
    predictions = PredictionLog(store, settings.log_durability, spool_dir if settings.log_durability != "none" else None,
                                settings.log_max_backlog, metrics=metrics)
    retention = parse_retention(settings.log_retention) if settings.log_retention else None
    trial = RolloutServing(store, settings, load_served, alias, schema_of, predictions)  # shadow / canary candidate

    async def prune_log() -> None:
        while True:
            await asyncio.sleep(settings.log_retention_interval_s)
            seconds, rows = retention
            try:
                deleted = await run_in_threadpool(store.prune_predictions, state["served"].name,
                                                  time.time() - seconds if seconds else None, rows)
            except SQLAlchemyError as e:
                log.warning("prediction-log retention skipped: %s", e)
                continue
            if deleted:
                metrics.log_pruned.inc(deleted)
                log.info("prediction-log retention: deleted %d rows of %s", deleted, state["served"].name)

    async def watch_alias() -> None:
        while True:
            await asyncio.sleep(settings.poll_interval_s)
            try:
                await swap_if_moved()
                await trial.refresh(state["served"])
            except Exception:  # noqa: BLE001  the watcher outlives any one failure, or the server stops following
                log.exception("alias check failed")

    async def watch_drift() -> None:
        from loopml.loop.monitor import monitor
        from loopml.loop.worker import loop_status

        while True:
            await asyncio.sleep(settings.monitor_interval_s)
            served = state["served"]  # its reference, already in memory: no bundle load per interval
            try:  # the loop worker's schedule and the decisions table, whether or not this window has rows
                metrics.observe_loop(served.name, await run_in_threadpool(loop_status, store, served.name))
            except SQLAlchemyError as e:
                log.warning("loop status skipped: %s", e)
            try:
                result = await run_in_threadpool(monitor, store, served.name, alias, None, None,
                                                 settings.monitor_rows, True, (served.version, served.model))
            except (LoopmlError, SQLAlchemyError) as e:
                log.warning("monitoring skipped: %s", e)
                continue
            metrics.observe_drift(state["served"].name, result)

    async def swap_if_moved(retry_failed: bool = False) -> bool:
        current = state["served"]
        try:
            version = await run_in_threadpool(store.alias_version, current.name, alias)
        except SQLAlchemyError as e:
            log.warning("alias check failed: %s", e)
            return False
        if version is None or version == current.version:
            return False
        if version == load_failure.version and not retry_failed:
            return False  # known bad: wait for the alias to move again (or an admin reload)
        try:
            new = await run_in_threadpool(load_served, settings, store)  # loaded and warmed off the loop
        except Exception as e:  # noqa: BLE001  whatever breaks loading a version (corrupt weights, bad config,
            # missing files), the version serving now is still good: keep it, report, keep watching
            load_failure.record(version, e)
            metrics.load_failures.labels(current.name).inc()
            metrics.failed_version.labels(current.name).set(version)
            log.error("%s:%s failed to load, still serving version %s: %s", current.name, version, current.version, e)
            return False
        schema_of[new.version] = columns = input_schema(new)
        if columns != schema_of[current.version]:  # validation and docs follow the new columns
            new_input, new_feedback = request_models(new)
            validated_with[new_input] = columns
            rebind(app, {"predict": predict_body(new_input), "feedback": new_feedback})
            state["input_model"] = new_input.__name__
            state["input_class"] = new_input
            log.info("input schema changed with %s:%s: request models and OpenAPI rebuilt", new.name, new.version)
        state["served"] = new
        load_failure.clear()
        metrics.failed_version.labels(new.name).set(0)
        gc.freeze()
        metrics.model_version.labels(new.name).set(new.version)
        metrics.swaps.labels(new.name).inc()
        log.info("now serving %s:%s (was %s)", new.name, new.version, current.version)
        return True

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        watcher = asyncio.create_task(watch_alias()) if alias else None
        drift_task = asyncio.create_task(watch_drift()) if alias and settings.monitor_interval_s else None
        prune_task = asyncio.create_task(prune_log()) if retention else None
        gc.freeze()  # the model and libraries are long-lived: keep them out of full collections (p99 pauses)
        state["ready"] = True
        yield
        state["ready"] = False
        for task in (watcher, drift_task, prune_task):
            if task:
                task.cancel()
        await batcher.close(timeout=30.0)  # in-flight requests are answered first (uvicorn drains them before this)
        await trial.close()
        await run_in_threadpool(predictions.close)
        metrics.close()

    app = FastAPI(title=f"loopml: {first.name}", version="1", lifespan=lifespan, default_response_class=StrictJSONResponse,
                  docs_url=None, redoc_url=None,  # /docs from the vendored Swagger UI (serve/docs.py): no CDN
                  description=f"Predictions from {first.reference} (target '{pre.target.column}', {pre.target.kind}).")
    app.add_middleware(CountArrivals, counter=arriving)
    app.add_middleware(LimitsAndMetrics, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(V2ErrorShape)  # outermost: every /v2 error, the 413 cap and 401 included, as {"error": ...}

    def client_key(request: Request) -> None:
        if not settings.api_keys:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not any(_same_secret(given, key) for key in settings.api_keys):
            raise _HTTP(401, "missing or wrong API key (X-API-Key header)")

    def admin(request: Request) -> None:
        if not settings.admin_token:
            raise _HTTP(403, "admin endpoints are disabled: start the server with --admin-token")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not _same_secret(given, settings.admin_token):
            raise _HTTP(401, "missing or wrong admin token (Authorization: Bearer …)")

    @app.exception_handler(_HTTP)
    async def _http(_request: Request, exc: _HTTP) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return StrictJSONResponse({"detail": printable(exc.detail)}, status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        # the last resort (a bug): a JSON 500 naming no internals; the traceback goes to the server log
        log.error("internal error: %s: %s", type(exc).__name__, exc)
        return StrictJSONResponse({"detail": "internal server error"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [p if isinstance(p, int) else printable(p) for p in e.get("loc", ())],
                   "msg": printable(e.get("msg", "")), "type": e.get("type", "")} for e in exc.errors()]
        # a hostile value fails every branch of a union: name what is wrong, not "should be a valid boolean"
        first_error = next((e for e in errors if e["type"] in _HOSTILE), errors[0] if errors else None) \
            or {"loc": [], "msg": "invalid request", "type": ""}
        if first_error["type"] in _HOSTILE:
            first_error = {**first_error, "msg": _HOSTILE[first_error["type"]]}
        # drop pydantic's model and union branch names ('TitanicInput', 'list[TitanicInput]', 'int') from the location
        name = state["input_model"]
        where = ".".join(str(p) for p in first_error["loc"]
                         if p not in ("body", name, f"list[{name}]") and not _BRANCH.fullmatch(str(p)))
        answer = {"detail": f"{where or 'body'}: {first_error['msg']}", "errors": errors[:_MAX_ERRORS_LISTED]}
        if len(errors) > _MAX_ERRORS_LISTED:  # a 1 MB body of bad fields must not answer megabytes
            answer["errors_total"] = len(errors)
        return StrictJSONResponse(answer, status_code=422)

    def queued(request: Request) -> None:
        if request.scope.pop("loopml.arriving", False):
            arriving["requests"] -= 1

    @app.post("/v1/models/{name}/predict", response_model=PredictResponse, dependencies=[Depends(client_key)],
              summary="Predict for one record or a list of records")
    async def predict(
        name: str, body: Annotated[Union[Input, list[Input]], Body()], request: Request,  # noqa: UP007
    ) -> Response:
        queued(request)
        served = state["served"]
        if name != served.name:
            raise _HTTP(404, f"no model '{name}' here; this server serves '{served.name}'")
        items = body if isinstance(body, list) else [body]
        if not items:
            raise _HTTP(422, "body: an empty list has nothing to predict")
        if len(items) > settings.max_records:
            raise _HTTP(413, f"body: at most {settings.max_records} records per request")
        version, out = await predict_items(request, served, items)
        # the response model documents the shape; building the JSON directly skips re-validating our own output
        return Response(json.dumps({"model": served.name, "version": version, "predictions": out},
                                   allow_nan=False), media_type="application/json")

    async def predict_items(request: Request, served: Served, items: list) -> tuple[int, list[dict]]:
        """The one predict path (/v1 and /v2): validated records -> batcher -> prediction log, shadow, metrics.
        Returns the answering version and one {prediction_id, prediction, probabilities} per record."""
        queued(request)
        validated = validated_with.get(type(items[0]))
        if validated != schema_of.get(served.version):
            raise _SchemaMoved()
        records = request_records(items)  # the conversion the feature contract checks
        start = time.perf_counter()
        try:
            results = await trial.submit(request, records, batcher.submit)
        except QueueFull:
            raise _HTTP(503, "the server is at capacity; retry shortly") from None
        except LoopmlError as e:
            raise _HTTP(422, str(e)) from None
        except BatchFailed as e:
            log.error("inference failed: %s", e)
            raise _HTTP(500, "inference failed (a server error, logged); retry or report it") from None
        if any(schema_of.get(r["version"]) != validated for r in results):
            raise _SchemaMoved()
        latency_ms = (time.perf_counter() - start) * 1000
        now = time.time()
        out, rows = [], []
        for record, result in zip(records, results, strict=True):
            pid = uuid.uuid4().hex
            out.append({"prediction_id": pid, "prediction": result["prediction"], "probabilities": result["probabilities"]})
            rows.append({"id": pid, "model_name": served.name, "model_version": result["version"], "created_at": now,
                         "inputs": record, "outputs": {"prediction": result["prediction"],
                                                       "probabilities": result["probabilities"]},
                         "latency_ms": latency_ms})
        try:
            await predictions.put(rows)  # returns once the rows are durable (the spool); never blocks the loop
        except LogUnavailable as e:
            raise _HTTP(503, f"{e}; retry shortly") from None
        trial.shadow(records, rows)  # after the answer is settled; never in it
        metrics.predictions.labels(served.name).inc(len(rows))
        return results[0]["version"], out

    @app.post("/v1/feedback", response_model=FeedbackResponse, status_code=201, dependencies=[Depends(client_key)],
              summary="The true label of a prediction (stored before the response)")
    async def feedback(body: Feedback) -> FeedbackResponse:
        served = state["served"]
        name = body.model or served.name
        if name != served.name:
            raise _HTTP(404, f"no model '{name}' here; this server serves '{served.name}'")
        label = _check_label(served.model.preprocessor.target, body.label)
        if body.prediction_id is None and body.inputs is None:
            raise _HTTP(422, "body: give prediction_id, or inputs for a case the model has not seen")
        inputs = body.inputs.model_dump(by_alias=True) if body.inputs is not None else None
        if inputs is not None:  # what a prediction would refuse, a retrain cannot use: refuse it now
            if all(v is None for v in inputs.values()):
                raise _HTTP(422, "inputs: no values (a case with every column missing teaches a retrain nothing)")
            try:
                await run_in_threadpool(served.runner.prepare, [inputs])
            except LoopmlError as e:
                raise _HTTP(422, f"inputs: {str(e).removeprefix('record 0: ')}") from None
        outputs = version = None
        try:
            if body.prediction_id is not None:  # acknowledged but maybe not in the store yet: the log has it then
                logged = predictions.lookup(body.prediction_id) or \
                    await run_in_threadpool(store.get_prediction, body.prediction_id)
                if logged is None:  # with --workers N another worker may have it queued: give its writer a moment
                    await asyncio.sleep(0.25)
                    logged = await run_in_threadpool(store.get_prediction, body.prediction_id)
                if logged is None:  # the store is slow: the sibling's acknowledged row is still only in its spool
                    logged = await run_in_threadpool(predictions.find_spooled, body.prediction_id)
                # another model's row is not this one's case; nor is a shadow row (no client was ever given its id)
                if logged is None or logged["model_name"] != name or logged.get("served") is False:
                    raise _HTTP(404, f"no prediction with id '{body.prediction_id}'")
                # a snapshot on the feedback row: it never depends on the prediction row (spooled, or pruned later)
                inputs = inputs if inputs is not None else logged["inputs"]
                outputs, version = logged["outputs"], logged["model_version"]
            feedback_id = await run_in_threadpool(store.add_feedback, name, label, body.prediction_id, inputs,
                                                  outputs, version, body.corrects)
        except FeedbackExists as e:  # one label per prediction (a unique index): a second one is a conflict
            raise _HTTP(409, printable(e)) from None
        except SQLAlchemyError as e:
            log.error("feedback not stored: %s", e)
            raise _HTTP(503, "the store is unavailable; the feedback was not stored, retry shortly") from None
        metrics.feedback.labels(name).inc()
        return FeedbackResponse(feedback_id=feedback_id, model=name)

    @app.get("/v1/models", response_model=list[ModelInfo], summary="What is loaded")
    async def models() -> list[ModelInfo]:
        s = state["served"]
        target = s.model.preprocessor.target
        return [ModelInfo(name=s.name, reference=s.reference, version=s.version, task=target.kind, target=target.column,
                          classes=[str(c) for c in target.classes] or None, backend=s.runner.backend,
                          last_load_error=load_failure.as_dict())]

    @app.get("/health", summary="Liveness")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="Model loaded and warm")
    async def ready() -> JSONResponse:
        log_health = predictions.health()
        ok = state["ready"] and log_health["status"] != "unavailable"  # degraded: still answering, rows wait
        return StrictJSONResponse({"ready": ok, "version": state["served"].version, "prediction_log": log_health},
                                  status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        log_health = predictions.health()
        metrics.log_queue.set(log_health["backlog"])
        metrics.log_degraded.set(int(log_health["status"] != "ok"))  # also a write that hangs, not only one that fails
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/admin/reload", dependencies=[Depends(admin)], summary="Check the alias now and swap if it moved")
    async def reload() -> dict:
        swapped = await swap_if_moved(retry_failed=True) if alias else False
        return {"swapped": swapped, "version": state["served"].version, "last_load_error": load_failure.as_dict()}

    app.include_router(queue_router(store, state, client_key))
    add_v2_routes(app, state, settings.max_records, client_key, predict_items)
    vendored_docs(app)
    if settings.ui:  # the dashboard over the same store; its pages link under /ui
        from loopml.ui.app import create_ui_app
        from loopml.ui.context import SERVER_RANK_WAIT_S, UISettings

        def served_model(name: str) -> tuple[int, Any] | None:  # the served copy: the queue loads no second one
            served = state["served"]  # read per call: after a swap the dashboard ranks with the new version
            return (served.version, served.model) if served.name == name else None

        app.mount("/ui", create_ui_app(UISettings(settings.store, settings.artifacts, admin_token=settings.admin_token,
                                                  api_keys=list(settings.api_keys), media_root=settings.media_root,
                                                  rank_wait_s=SERVER_RANK_WAIT_S),
                                       store=store, served_model=served_model))
    app.state.loopml = state
    app.state.predictions = predictions
    app.state.rollout = trial
    return app


class CountArrivals:
    """Counts a predict request from before its body is parsed until the route queues it."""

    def __init__(self, app, counter: dict) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].endswith(("/predict", "/infer")):
            self.counter["requests"] += 1
            scope["loopml.arriving"] = True
        try:
            await self.app(scope, receive, send)
        finally:
            if scope.pop("loopml.arriving", False):
                self.counter["requests"] -= 1


_HOSTILE = {"finite_number": "not a finite number (NaN, Infinity and overflowing values are refused)",
            "string_unicode": "not valid Unicode text (a lone surrogate such as \\ud800?)"}
_MAX_ERRORS_LISTED = 20
_BRANCH = re.compile(r"str|int|float|bool|none|(function-\w+|list|json-or-python|nullable)\[.*\]")


def _same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison on bytes: header values arrive as latin-1 text, keys are UTF-8."""
    return hmac.compare_digest(given.encode("latin-1", "replace"), expected.encode("utf-8"))


class _HTTP(Exception):  # noqa: N818  (a response, not a failure)
    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail


class _SchemaMoved(_HTTP):
    def __init__(self) -> None:
        super().__init__(503, "a version with other input columns was promoted while this request waited; "
                              "send it again (it will be checked against the new columns)")


def _check_label(target, label: object) -> object:
    if target.kind == "number":
        if isinstance(label, bool) or not isinstance(label, (int, float)):
            raise _HTTP(422, f"label: a number is expected for '{target.column}'")
        if not abs(label) <= FLOAT32_MAX:  # training refuses such a target: a retrain could not use the row
            raise _HTTP(422, f"label: {label!r} for '{target.column}' is not {NUMBER_RANGE}")
        return label
    known = target.class_of(label)  # by canonical key: 1, 1.0 and "1" are one class, as in training
    if known is None:
        raise _HTTP(422, f"label: {label!r} is not a class of '{target.column}' ({', '.join(map(str, target.classes))})")
    return known


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory`` with several workers: the settings come as JSON in LOOPML_SERVE."""
    return create_app(ServeSettings.model_validate(json.loads(os.environ["LOOPML_SERVE"])))
