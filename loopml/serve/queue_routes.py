"""``GET /v1/feedback/queue``: the logged predictions a label would help most (``loopml.loop.queue``).

Its own router, behind the same client key as predict and feedback; the ranking runs in the thread
pool (it reads up to ``WINDOW`` rows and scores them with the served model), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from loopml.errors import LoopmlError
from loopml.loop.queue import STRATEGIES, feedback_queue
from loopml.serve.schema import StrictJSONResponse, printable

log = logging.getLogger("loopml.serve")

MAX_N = 500
Strategy = Literal[STRATEGIES]  # type: ignore[valid-type]  (a 422 names the valid values)


class QueueItem(BaseModel):
    prediction_id: str
    inputs: dict
    prediction: Any = None
    probabilities: dict[str, float] | None = None
    model_version: int | None = None
    created_at: float | None = None
    score: float
    reason: str


class QueueResponse(BaseModel):
    model: str
    version: int
    strategy: str
    queue: list[QueueItem]


def queue_router(store: Any, state: dict, client_key: Callable) -> APIRouter:
    """The route, reading the served model from ``state["served"]`` at each request (it follows swaps)."""
    router = APIRouter(dependencies=[Depends(client_key)])
    # one ranking at a time: each is seconds of CPU (and GIL) at full window; callers piling up in the
    # thread pool would take the cores from predict, so the next one waits here, off the event loop
    one_at_a_time = asyncio.Lock()

    @router.get("/v1/feedback/queue", response_model=QueueResponse, name="feedback_queue",
                summary="Unlabelled predictions ranked by how much a label would help, with a reason each")
    async def queue(n: Annotated[int, Query(ge=1, le=MAX_N, description="How many rows (1..500).")] = 50,
                    strategy: Annotated[Strategy, Query(description="uncertainty | drift | diverse | random")] = "uncertainty",
                    ) -> StrictJSONResponse:
        served = state["served"]
        try:
            async with one_at_a_time:
                rows = await run_in_threadpool(feedback_queue, store, served.name, n, strategy, model=served.model,
                                                 ranked_by=served.version)
        except SQLAlchemyError as e:
            log.error("feedback queue: store unavailable: %s", e)
            raise HTTPException(503, "the store is unavailable; retry shortly", headers={"Retry-After": "1"}) from None
        except LoopmlError as e:
            log.warning("feedback queue: %s", e)
            raise HTTPException(422, printable(e)) from None
        return StrictJSONResponse({"model": served.name, "version": served.version, "strategy": strategy,
                                   "queue": [_finite(r) for r in rows]})

    return router


def _finite(value: Any) -> Any:
    """JSON-safe: a non-finite number (never expected in the log, but the answer must stay valid JSON) is null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
