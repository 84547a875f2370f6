"""The prediction log: rows are queued on the request path and written to the store in batches by
one background thread. The queue is bounded (a full queue makes requests wait, it never drops
rows) and ``close()`` writes everything still queued: nothing acknowledged is lost on a graceful
shutdown."""

from __future__ import annotations

import queue
import threading
import time

from sqlalchemy.exc import SQLAlchemyError


class PredictionLog:
    def __init__(self, store, max_queue: int = 100_000, batch_rows: int = 1000, interval_s: float = 0.05) -> None:
        self.store, self.batch_rows, self.interval = store, batch_rows, interval_s
        self.queue: queue.Queue[dict | None] = queue.Queue(maxsize=max_queue)
        self.pending: set[str] = set()  # ids queued, not yet in the store (feedback may name them)
        self.written = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="loopml-prediction-log", daemon=True)
        self._thread.start()

    def put(self, rows: list[dict], timeout: float = 30.0) -> None:
        for row in rows:
            self.pending.add(row["id"])
            self.queue.put(row, timeout=timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[dict] = []
            try:
                item = self.queue.get(timeout=self.interval)
                while True:
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                    if len(batch) >= self.batch_rows:
                        break
                    item = self.queue.get_nowait()
            except queue.Empty:
                pass
            if batch:
                self._write(batch)

    def _write(self, batch: list[dict]) -> None:
        for attempt in range(10):  # the store may be briefly unavailable: retry, never drop
            try:
                self.store.log_predictions(batch)
                break
            except SQLAlchemyError:
                self.errors += 1
                time.sleep(min(2.0, 0.1 * 2**attempt))
        else:
            self.store.log_predictions(batch)  # last try: let it raise into the thread's log
        self.written += len(batch)
        for row in batch:
            self.pending.discard(row["id"])

    def close(self, timeout: float = 60.0) -> None:
        self.queue.put(None)
        self._thread.join(timeout)
