"""The prediction log: rows go to the store in batches from a background thread, off the request path.

Durability (``durability``):
  ``fsync``  the rows are in this process's spool file and fsync'd before the response (group commit:
             the requests waiting at that moment share one fsync): survives kill -9 and power loss;
  ``spool``  the same without fsync: survives kill -9 of the server, not a machine crash;
  ``none``   rows wait in memory only (the behaviour before the spool): a crash loses the backlog.
A later process replays a dead process's spool into the store (prediction ids are primary keys:
rows already there are skipped), so an acknowledged prediction reaches the store exactly once.

Nothing here ever blocks the event loop: when the backlog (rows not yet in the store) would exceed
``max_backlog``, or the spool cannot be written, ``put`` raises ``LogUnavailable`` (the route answers
503). The writer thread never dies: each iteration is guarded, store failures are retried with
backoff and surface in ``health()`` (for /ready), the metrics and the server log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import re
import threading
import time
from pathlib import Path

from sqlalchemy import exc as sa_exc

from loopml.serve.spool import Spool, orphans, read_segment, release_orphan

log = logging.getLogger("loopml.serve")
DURABILITY = ("fsync", "spool", "none")
#: errors after which the same write may succeed later (the store is down, locked or unreachable)
TRANSIENT = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError)
ADOPT_EVERY_S = 30.0


class LogUnavailable(Exception):
    """The log cannot take these rows now; nothing was acknowledged."""


class PredictionLog:
    #: a store write taking longer than this (a locked SQLite file, a hung connection) shows as degraded on /ready
    stall_s = 5.0

    def __init__(self, store, durability: str = "fsync", spool_dir: str | os.PathLike | None = None,
                 max_backlog: int = 100_000, batch_rows: int = 1000, interval_s: float = 0.05, metrics=None) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"log durability {durability!r} is not one of {', '.join(DURABILITY)}")
        if durability != "none" and spool_dir is None:
            raise ValueError("a spool directory is needed unless durability is 'none'")
        self.store, self.durability, self.metrics = store, durability, metrics
        self.max_backlog, self.batch_rows, self.interval = max_backlog, batch_rows, interval_s
        self.spool = Spool(spool_dir, fsync=durability == "fsync") if durability != "none" else None
        self.pending: dict[str, dict] = {}  # id -> row: acknowledged, not yet in the store (feedback may name them)
        self.written = self.write_failures = self.rejected_rows = self.replayed_rows = self.refused = 0
        self.failing_since: float | None = None
        self.writing_since: float | None = None  # a store write in progress since then (None: none)
        self._last_warning = self._refused_at = self._spool_failed_at = 0.0
        self.spool_error: str | None = None
        self._to_store: queue.Queue[tuple[int | None, list[dict]] | None] = queue.Queue()
        self._batch: list[tuple[int | None, list[dict]]] = []  # being written: kept until it is in the store
        self._inbox: list[tuple[list[dict], asyncio.Future | None, asyncio.AbstractEventLoop | None]] = []
        self._inbox_ready = threading.Condition()
        self._stopping = False
        self._next_adoption = 0.0
        if self.spool is not None:
            self._adopt_orphans()  # before the first request: feedback may name a replayed prediction
        self._store_thread = threading.Thread(target=self._store_loop, name="loopml-prediction-log", daemon=True)
        self._store_thread.start()
        self._spool_thread = None
        if self.spool is not None:
            self._spool_thread = threading.Thread(target=self._spool_loop, name="loopml-prediction-spool", daemon=True)
            self._spool_thread.start()

    # -- the request path -----------------------------------------------------------------
    async def put(self, rows: list[dict]) -> None:
        """Return once the rows are as durable as ``durability`` says; raise ``LogUnavailable`` at once if they cannot be."""
        self._admit(rows)
        if self.spool is None:
            self._to_store.put((None, rows))
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._inbox_ready:
            self._inbox.append((rows, future, loop))
            self._inbox_ready.notify()
        await future

    def put_nowait(self, rows: list[dict]) -> None:
        """``put`` for callers without an event loop (tests, tools): does not wait for the spool write."""
        self._admit(rows)
        if self.spool is None:
            self._to_store.put((None, rows))
            return
        with self._inbox_ready:
            self._inbox.append((rows, None, None))
            self._inbox_ready.notify()

    def _admit(self, rows: list[dict]) -> None:
        reason = None
        if self.spool_error is not None and time.monotonic() - self._spool_failed_at < 1.0:
            reason = "the prediction log cannot write its spool"  # after a second, one request tries again
        elif len(self.pending) + len(rows) > self.max_backlog:
            reason = f"the prediction log is {len(self.pending)} rows behind the store"
        if reason:
            self.refused += 1
            self._refused_at = time.time()
            if self.metrics is not None:
                self.metrics.log_refused.inc()
            raise LogUnavailable(reason)
        for row in rows:
            self.pending[row["id"]] = row

    def lookup(self, prediction_id: str) -> dict | None:
        """An acknowledged prediction not yet in the store."""
        return self.pending.get(prediction_id)

    def find_spooled(self, prediction_id: str) -> dict | None:
        """An acknowledged prediction in any spool of this folder: a sibling worker's, not yet in the store."""
        if self.spool is None:
            return None
        needle = json.dumps({"id": prediction_id}, separators=(",", ":"))[1:-1].encode()  # as the spool writes it
        for segment in self.spool.directory.glob("*.spool"):
            try:
                data = segment.read_bytes()
            except OSError:  # in the store by now, and deleted
                continue
            at = data.find(needle)
            while at >= 0:
                end = data.find(b"\n", at)
                if end < 0:
                    break  # a torn last line: never acknowledged
                try:
                    rows = json.loads(data[data.rfind(b"\n", 0, at) + 1:end])
                except ValueError:
                    rows = []
                found = next((r for r in rows if isinstance(r, dict) and r.get("id") == prediction_id), None)
                if found is not None:
                    return found
                at = data.find(needle, end)
        return None

    def health(self) -> dict:
        backlog = len(self.pending)
        status, reason = "ok", None
        if self.spool_error is not None:
            status, reason = "unavailable", "the spool cannot be written"
        elif self.failing_since is not None:
            status = "degraded"
            reason = f"store writes failing for {time.time() - self.failing_since:.0f} s; {backlog} rows waiting"
            if self._refused_at > self.failing_since:  # the backlog is full: predict answers 503
                status = "unavailable"
        elif self.writing_since is not None and time.time() - self.writing_since > self.stall_s:
            status = "degraded"  # neither an answer nor an error from the store: it hangs (locked, unreachable)
            reason = f"a store write has been waiting for {time.time() - self.writing_since:.0f} s; {backlog} rows waiting"
        return {"status": status, "reason": reason, "backlog": backlog, "durability": self.durability,
                "write_failures": self.write_failures, "rejected_rows": self.rejected_rows}

    # -- the spool thread (group commit) ----------------------------------------------------
    def _spool_loop(self) -> None:
        while True:
            with self._inbox_ready:
                while not self._inbox and not self._stopping:
                    self._inbox_ready.wait()
                taken, self._inbox = self._inbox, []
            if not taken:
                return  # stopping, and nothing left
            try:
                seq = self.spool.append([rows for rows, _, _ in taken])
                error = None
                self.spool_error = None
            except Exception as e:  # noqa: BLE001  (disk full, folder removed, or a bug: fail these requests, keep going)
                error = e
                if self.spool_error is None:
                    log.error("prediction spool write failed: %s", e)
                self.spool_error = str(e)
                self._spool_failed_at = time.monotonic()
            for rows, future, loop in taken:
                if error is None:
                    self._to_store.put((seq, rows))
                else:
                    for row in rows:
                        self.pending.pop(row["id"], None)
                if future is not None:
                    with contextlib.suppress(RuntimeError):  # the event loop is closed: no one waits for the answer
                        loop.call_soon_threadsafe(_settle, future, error)

    # -- the store thread ---------------------------------------------------------------------
    def _store_loop(self) -> None:
        backoff, stop = 0.1, False
        while not (stop and not self._batch):
            try:
                if self.spool is not None and time.monotonic() >= self._next_adoption:
                    self._adopt_orphans()
                if not self._batch:
                    stop = self._take() or stop
                if self._batch and not self._commit():
                    time.sleep(backoff)
                    backoff = min(5.0, backoff * 2)
                    continue
                backoff = 0.1
            except Exception:  # noqa: BLE001  (a bug must not end logging: log it, keep the batch, try again)
                log.exception("prediction log writer: unexpected error (will retry)")
                self._failed(None)
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)

    def _take(self) -> bool:
        """Fill ``self._batch`` from the queue; True when the stop marker came."""
        rows = 0
        try:
            item = self._to_store.get(timeout=self.interval)
            while True:
                if item is None:
                    return True
                self._batch.append(item)
                rows += len(item[1])
                if rows >= self.batch_rows:
                    return False
                item = self._to_store.get_nowait()
        except queue.Empty:
            return False

    def _commit(self) -> bool:
        rows = [row for _, part in self._batch for row in part]
        self.writing_since = time.time()
        try:
            self.store.log_predictions(rows)
        except TRANSIENT as e:
            self._failed(e)
            return False
        except sa_exc.SQLAlchemyError as e:  # not transient: one row the store refuses must not hold the rest back
            log.warning("prediction log: a batch was refused (%s); writing its rows one by one", type(e).__name__)
            if not self._commit_one_by_one(rows):
                return False
        finally:
            self.writing_since = None
        self._succeeded()
        return True

    def _commit_one_by_one(self, rows: list[dict]) -> bool:
        for row in rows:
            try:
                self.store.log_predictions([row])
            except TRANSIENT as e:
                self._failed(e)
                return False  # rows already written are skipped as duplicates next time
            except sa_exc.SQLAlchemyError as e:
                self._reject(row, e)
        return True

    def _reject(self, row: dict, error: Exception) -> None:
        """Keep a row the store refuses in ``rejected-<owner>.jsonl`` next to the spool: acknowledged, never silently gone."""
        self.rejected_rows += 1
        if self.metrics is not None:
            self.metrics.log_rejected.inc()
        log.error("prediction %s refused by the store (%s); kept in the spool folder's rejected file",
                  row.get("id"), type(error).__name__)
        if self.spool is not None:
            with open(self.spool.directory / f"rejected-{self.spool.owner}.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def _succeeded(self) -> None:
        for seq, part in self._batch:
            for row in part:
                self.pending.pop(row["id"], None)
            self.written += len(part)
            if seq is not None:
                self.spool.mark_committed(seq, len(part))
        self._batch = []
        self._recovered()

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.warning("prediction log: store writes work again after %.0f s", time.time() - self.failing_since)
            self.failing_since = None
            if self.metrics is not None:
                self.metrics.log_degraded.set(0)

    def _failed(self, error: Exception | None) -> None:
        self.write_failures += 1
        if self.metrics is not None:
            self.metrics.log_write_failures.inc()
            self.metrics.log_degraded.set(1)
        if self.failing_since is None:
            self.failing_since = time.time()
            self._last_warning = 0.0
        if time.monotonic() - self._last_warning > 30:  # once when it starts, then every 30 s while it lasts
            self._last_warning = time.monotonic()
            log.error("prediction log: store writes failing (%s); %d rows waiting, retrying",
                      _first_line(error), len(self.pending))

    def _adopt_orphans(self) -> None:
        """Replay the spool of processes that died (a restart after kill -9, a crashed sibling worker)."""
        self._next_adoption = time.monotonic() + ADOPT_EVERY_S
        for owner, segments, lock in orphans(self.spool.directory, own=self.spool.owner):
            total = 0
            try:
                for segment in segments:
                    rows, bad = read_segment(segment)
                    if bad:
                        log.warning("prediction spool %s: %d unreadable line(s) skipped", segment.name, bad)
                    for start in range(0, len(rows), self.batch_rows):
                        self._replay(rows[start:start + self.batch_rows])
                    total += len(rows)
            except TRANSIENT as e:  # the store is down: the files stay, try again soon
                lock.close()
                self._failed(e)
                self._next_adoption = time.monotonic() + 5.0
                return
            except BaseException:
                lock.close()
                raise
            release_orphan(self.spool.directory, owner, segments, lock)
            self._recovered()
            self.replayed_rows += total
            if total:
                log.warning("prediction log: replayed %d rows from the spool of a stopped server (%s; rows already "
                            "in the store skipped)",
                            total, owner)

    def _replay(self, rows: list[dict]) -> None:
        try:
            self.store.log_predictions(rows)
        except TRANSIENT:
            raise
        except sa_exc.SQLAlchemyError:
            if not self._commit_one_by_one(rows):
                raise sa_exc.OperationalError("replay", {}, Exception("store unavailable")) from None

    def close(self, timeout: float = 60.0) -> None:
        """Write what is queued (the spool keeps whatever the store would not take within ``timeout``)."""
        deadline = time.monotonic() + timeout
        self._stopping = True
        if self._spool_thread is not None:
            with self._inbox_ready:
                self._inbox_ready.notify()
            self._spool_thread.join(max(0.0, deadline - time.monotonic()))
        self._to_store.put(None)
        self._store_thread.join(max(0.0, deadline - time.monotonic()))
        left = len(self.pending)
        if left:
            kept = "kept in the spool for the next start" if self.spool else "LOST (durability none)"
            log.error("prediction log: %d rows not in the store at shutdown, %s", left, kept)
        if self.spool is not None:
            self.spool.close(everything_committed=left == 0 and not self._store_thread.is_alive())


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():  # the request was cancelled (client gone); its rows are logged all the same
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(LogUnavailable("the prediction log cannot write its spool"))


def _first_line(error: Exception | None) -> str:
    if error is None:
        return "unexpected error"
    orig = getattr(error, "orig", None) or error
    return f"{type(orig).__name__}: {str(orig).strip().splitlines()[0][:200] if str(orig).strip() else ''}"


_RETENTION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_retention(text: str) -> tuple[float | None, int | None]:
    """``30d``/``12h``/``45m``/``90s`` -> (seconds, None); a plain count ``100000`` -> (None, rows)."""
    match = _RETENTION.match((text or "").strip())
    if not match or int(match[1]) <= 0:
        raise ValueError(f"--log-retention {text!r}: give an age like 30d, 12h, 45m, 90s or a row count like 100000")
    number, unit = int(match[1]), match[2]
    return (number * _UNIT[unit], None) if unit else (None, number)


def default_spool_dir(store_url: str) -> Path:
    """Next to a SQLite store's file; ``.loopml/spool`` for a server database."""
    import sqlalchemy as sa

    url = sa.engine.make_url(store_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).expanduser().resolve().parent / "spool"
    return Path(".loopml/spool")
