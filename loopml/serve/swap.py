"""What a hot swap needs beyond loading the new version: the request models of its input schema,
rebinding the routes (validation and OpenAPI follow the served version) and reporting a version that
fails to load without a server path in what clients see."""

from __future__ import annotations

import functools
import inspect
import re
import time
from typing import Annotated, Any, Union

from fastapi import Body, FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from loopml.serve.schema import feedback_model, input_model


def input_schema(served) -> tuple:
    """What the request model depends on: every input column's type, and the ignored columns."""
    features = tuple((c, f.config.type) for c, f in served.model.preprocessor.features.items())
    skipped = tuple(c.name for c in served.model.schema.columns if c.type == "skip")
    return features, skipped


def request_models(served) -> tuple[type[BaseModel], type[BaseModel]]:
    features, skipped = input_schema(served)
    inputs = input_model(served.name, dict(features), list(skipped))
    return inputs, feedback_model(inputs)


def predict_body(inputs: type[BaseModel]) -> Any:
    return Annotated[Union[inputs, list[inputs]], Body()]  # noqa: UP007


def rebind(app: FastAPI, bodies: dict[str, Any]) -> None:
    """Re-create the routes named in ``bodies`` with a new annotation for their ``body`` parameter,
    so requests are validated against, and /openapi.json documents, the version now served."""
    routes = app.router.routes
    for i, route in enumerate(routes):
        if isinstance(route, APIRoute) and route.name in bodies:
            routes[i] = _with_body(route, bodies[route.name])
    app.openapi_schema = None  # regenerated from the new routes on the next /openapi.json


def _with_body(route: APIRoute, annotation: Any) -> APIRoute:
    endpoint = getattr(route.endpoint, "__wrapped__", route.endpoint)

    @functools.wraps(endpoint)
    async def rebound(**kwargs):
        return await endpoint(**kwargs)

    signature = inspect.signature(endpoint)
    params = [p.replace(annotation=annotation) if p.name == "body" else p for p in signature.parameters.values()]
    rebound.__signature__ = signature.replace(parameters=params)
    return APIRoute(route.path, rebound, response_model=route.response_model, status_code=route.status_code,
                    tags=route.tags, dependencies=route.dependencies, summary=route.summary,
                    description=route.description, methods=route.methods, name=route.name,
                    response_class=route.response_class)


_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/](?:[^\s'\"\\/:,;()]+[\\/])+[^\s'\"\\/:,;()]*")


def public_error(error: BaseException) -> str:
    """An exception as one line for clients: server paths replaced, length bounded."""
    text = _PATH.sub("<path>", str(error).splitlines()[0] if str(error) else "")
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


class LoadFailure:
    """The last version the alias pointed at that failed to load (None once a swap succeeds)."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.error: str | None = None
        self.at: float | None = None

    def record(self, version: int, error: BaseException) -> None:
        self.version, self.error, self.at = version, public_error(error), time.time()

    def clear(self) -> None:
        self.version = self.error = self.at = None

    def as_dict(self) -> dict | None:
        if self.version is None:
            return None
        return {"version": self.version, "error": self.error, "at": self.at}
