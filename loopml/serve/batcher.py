"""Adaptive micro-batching: the one place that knows about queues and batch formation.

Requests wait in a bounded queue. When the runner is free, the batcher takes everything queued
(up to ``max_batch_size`` rows), waiting at most ``max_wait_ms`` for more only while the batch is
small and nobody else is waiting. Inference runs in a worker thread, off the event loop; while it
runs, new requests queue up and form the next, larger batch — batch size follows the load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger("loopml.serve")


class QueueFull(Exception):
    """The queue holds ``max_queue`` rows already, or the batcher is shutting down: retry later (503)."""


class BatchFailed(Exception):
    """Inference broke in a way that is the server's fault (an exception that is not a ``LoopmlError``,
    or a result count that does not match the request count): the request gets a 500, the batcher goes on."""


@dataclass
class _Request:
    records: list
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, fn: Callable[[list], list], max_batch_size: int = 64, max_wait_ms: float = 2.0,
                 max_queue: int = 4096, on_batch: Callable[[int, int], None] | None = None,
                 arriving: Callable[[], int] | None = None) -> None:
        """``arriving()``: requests accepted but not yet queued (still being parsed); the batcher waits
        for them (up to ``max_wait_ms``) only when there are some, so a lone request never waits."""
        self.arriving = arriving or (lambda: 1)
        self.fn, self.max_batch_size, self.max_wait = fn, max_batch_size, max_wait_ms / 1000
        self.max_queue, self.on_batch = max_queue, on_batch
        self.queued_rows = 0
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopml-infer")
        self._task: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, records: list) -> list:
        """The results for ``records``, computed in a batch with whatever else is queued."""
        if self._closing:
            raise QueueFull("shutting down")
        if self.queued_rows + len(records) > self.max_queue:
            raise QueueFull(f"{self.queued_rows} rows queued")
        request = _Request(records, asyncio.get_running_loop().create_future())
        self.queued_rows += len(records)
        self._queue.put_nowait(request)
        return await request.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            try:
                await self._dispatch(loop, batch)
            except asyncio.CancelledError:
                self._fail(batch, QueueFull("shutting down"))
                raise
            except Exception as e:  # noqa: BLE001  nothing may end this loop: every later request would hang
                log.exception("inference batch failed")
                self._fail(batch, BatchFailed(f"{type(e).__name__}: {e}"))

    async def _collect(self) -> list[_Request]:
        """The next batch: the first request, then whatever else is queued (or arrives in time)."""
        first = await self._queue.get()
        batch, rows = [first], len(first.records)
        deadline = time.perf_counter() + self.max_wait
        while rows < self.max_batch_size:
            if not self._queue.empty():
                nxt = self._queue.get_nowait()
            elif time.perf_counter() < deadline and not self._closing and self.arriving() > 0:
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), deadline - time.perf_counter())
                except TimeoutError:
                    break
                except asyncio.CancelledError:  # closing: what was taken is answered, not dropped
                    self.queued_rows -= rows
                    self._fail(batch, QueueFull("shutting down"))
                    raise
            else:
                break
            batch.append(nxt)
            rows += len(nxt.records)
        self.queued_rows -= rows
        if self.on_batch:
            try:
                self.on_batch(rows, self.queued_rows)
            except Exception:  # noqa: BLE001  a metrics hook must not cost anyone their answer
                log.exception("batch metrics hook failed")
        return batch

    async def _dispatch(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        live = [r for r in batch if not r.future.done()]  # a caller that went away needs no answer
        if not live:
            return
        records = [r for request in live for r in request.records]
        try:
            results = await loop.run_in_executor(self._executor, self.fn, records)
            _check_count(results, len(records))
        except Exception as e:  # noqa: BLE001  a bad row must fail its own request only
            if len(live) == 1:
                _settle(live[0], error=e)
                return
            for request in live:  # find it: each request on its own
                await self._run_alone(loop, request)
            return
        start = 0
        for request in live:
            _settle(request, result=results[start : start + len(request.records)])
            start += len(request.records)

    async def _run_alone(self, loop: asyncio.AbstractEventLoop, request: _Request) -> None:
        try:
            result = await loop.run_in_executor(self._executor, self.fn, request.records)
            _check_count(result, len(request.records))
        except Exception as e:  # noqa: BLE001  handed to the request's own caller
            _settle(request, error=e)
        else:
            _settle(request, result=result)

    def _fail(self, batch: list[_Request], error: Exception) -> None:
        for request in batch:
            _settle(request, error=error)

    async def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued (for at most ``timeout`` seconds), then stop; whatever is still
        waiting after that is answered with ``QueueFull`` (503), never left hanging."""
        self._closing = True
        deadline = time.perf_counter() + timeout
        while self.queued_rows > 0 and time.perf_counter() < deadline and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
        while not self._queue.empty():
            request = self._queue.get_nowait()
            self.queued_rows -= len(request.records)
            _settle(request, error=QueueFull("shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)


def _check_count(results: object, expected: int) -> None:
    if not isinstance(results, list) or len(results) != expected:
        got = len(results) if isinstance(results, list) else type(results).__name__
        raise BatchFailed(f"the runner returned {got} results for {expected} records")


def _settle(request: _Request, result: list | None = None, error: BaseException | None = None) -> None:
    """Resolve a request's future exactly once (it may be done already: cancelled by a disconnect)."""
    if request.future.done():
        return
    if error is not None:
        request.future.set_exception(error)
    else:
        request.future.set_result(result)
