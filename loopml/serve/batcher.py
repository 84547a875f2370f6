"""Adaptive micro-batching: the one place that knows about queues and batch formation.

Requests wait in a bounded queue. When the runner is free, the batcher takes everything queued
(up to ``max_batch_size`` rows), waiting at most ``max_wait_ms`` for more only while the batch is
small and nobody else is waiting. Inference runs in a worker thread, off the event loop; while it
runs, new requests queue up and form the next, larger batch — batch size follows the load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class QueueFull(Exception):
    """The queue holds ``max_queue`` rows already: the caller should retry later (503)."""


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
                else:
                    break
                batch.append(nxt)
                rows += len(nxt.records)
            self.queued_rows -= rows
            records = [r for request in batch for r in request.records]
            if self.on_batch:
                self.on_batch(rows, self.queued_rows)
            try:
                results = await loop.run_in_executor(self._executor, self.fn, records)
            except Exception as e:  # noqa: BLE001  a bad row must fail its own request only
                if len(batch) == 1:
                    batch[0].future.set_exception(e)
                    continue
                for request in batch:  # find it: each request on its own
                    await self._run_alone(loop, request)
                continue
            start = 0
            for request in batch:
                if not request.future.done():
                    request.future.set_result(results[start : start + len(request.records)])
                start += len(request.records)

    async def _run_alone(self, loop: asyncio.AbstractEventLoop, request: _Request) -> None:
        try:
            result = await loop.run_in_executor(self._executor, self.fn, request.records)
        except Exception as e:  # noqa: BLE001  handed to the request's own caller
            request.future.set_exception(e)
        else:
            request.future.set_result(result)

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        while self.queued_rows > 0:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=True)
