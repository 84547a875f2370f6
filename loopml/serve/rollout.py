"""The server's side of a rollout: a candidate on trial predicts beside the champion (shadow) or answers a
sticky share of the requests (canary). The trial itself is decided by the loop (``loopml.loop.rollout``).

The server finds the trial by polling the store (the alias watcher's interval), loads the candidate off the
event loop into its own batcher, and drops it once the trial is no longer active. A candidate never costs a
client anything: shadow predictions run after the answer and are logged with ``served`` False (never
returned); a canary request the candidate cannot answer (load failure, an error, a full queue) is answered
by the champion.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import SQLAlchemyError

from loopml.serve.batcher import Batcher
from loopml.serve.swap import input_schema, public_error

log = logging.getLogger("loopml.serve")

STICKY_HEADER = "x-loopml-sticky"
#: shadow batches waiting for the candidate at most; beyond, shadow predictions are skipped (never queued
#: without bound behind a slow candidate)
MAX_SHADOW_PENDING = 64


def sticky_key(request: Request) -> str:
    """Who the client is, for a canary's sticky split: ``X-Loopml-Sticky``, else its API key, else its address."""
    given = request.headers.get(STICKY_HEADER)
    if given:
        return "s:" + given
    key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if key:
        return "k:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
    return "a:" + (request.client.host if request.client else "")


def bucket(key: str, rollout_id: int) -> float:
    """A stable position in [0, 100) for ``key`` in one rollout: the same key always lands on the same side."""
    digest = hashlib.sha256(f"{rollout_id}:{key}".encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


@dataclass
class Candidate:
    rollout: dict
    served: object  # app.Served
    batcher: Batcher


class RolloutServing:
    """Holds the candidate of the active trial (if any) and routes to it."""

    def __init__(self, store, settings, load_served: Callable, alias: str | None, schema_of: dict,
                 predictions) -> None:
        self.store, self.settings, self.load_served, self.alias = store, settings, load_served, alias
        self.schema_of, self.predictions = schema_of, predictions
        self.candidate: Candidate | None = None
        self.failed: dict[int, str] = {}  # rollout id -> why its candidate is not used
        self.fallbacks = self.shadowed = self.shadow_skipped = self.shadow_failed = 0
        self._shadow_tasks: set[asyncio.Task] = set()
        self._closing: set[asyncio.Task] = set()

    # -- following the store ----------------------------------------------------------------------
    async def refresh(self, champion) -> None:
        """Load the candidate of the active trial against ``champion`` (the served version); drop one whose
        trial ended. Called by the alias watcher."""
        if self.alias is None:
            return
        from loopml.loop.rollout import active_trial

        try:
            trial = await run_in_threadpool(active_trial, self.store, champion.name, self.alias)
        except SQLAlchemyError as e:
            log.warning("rollout check failed: %s", e)
            return
        if trial is None or trial["champion_version"] != champion.version:
            self.drop("trial ended" if trial is None else "the champion moved")
            return
        if self.candidate is not None and self.candidate.rollout["id"] == trial["id"]:
            return
        self.drop("another trial")
        if trial["id"] in self.failed:
            return
        reference = f"{champion.name}:{trial['candidate_version']}"
        try:
            new = await run_in_threadpool(self.load_served, self.settings.model_copy(update={"model": reference}),
                                          self.store)
        except Exception as e:  # noqa: BLE001  whatever breaks loading the candidate, the champion goes on alone
            self.failed[trial["id"]] = f"failed to load: {public_error(e)}"
            log.error("%s trial: %s failed to load; the champion answers everything: %s", trial["mode"], reference, e)
            return
        if input_schema(new) != input_schema(champion):
            self.failed[trial["id"]] = "its input columns differ from the champion's"
            log.error("%s trial: %s reads other input columns than the champion; not used", trial["mode"], reference)
            return
        self.schema_of[new.version] = input_schema(new)
        batcher = Batcher(_infer(new), self.settings.max_batch_size, self.settings.max_wait_ms,
                          self.settings.max_queue)
        batcher.start()
        self.candidate = Candidate(trial, new, batcher)
        share = f"{trial['percent']:g}% of clients" if trial["mode"] == "canary" else "every request, never returned"
        log.info("%s trial: %s predicts beside %s:%s (%s)", trial["mode"], reference, champion.name, champion.version,
                 share)

    def drop(self, why: str) -> None:
        cand, self.candidate = self.candidate, None
        if cand is None:
            return
        log.info("%s trial of %s:%s over (%s): candidate dropped", cand.rollout["mode"], cand.served.name,
                 cand.served.version, why)
        task = asyncio.get_running_loop().create_task(cand.batcher.close(timeout=30.0))  # in-flight ones first
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def status(self) -> dict | None:
        cand = self.candidate
        if cand is None:
            return None
        return {"rollout_id": cand.rollout["id"], "mode": cand.rollout["mode"], "percent": cand.rollout["percent"],
                "candidate_version": cand.served.version, "fallbacks": self.fallbacks, "shadowed": self.shadowed,
                "shadow_skipped": self.shadow_skipped, "shadow_failed": self.shadow_failed}

    # -- the request path -------------------------------------------------------------------------
    async def submit(self, request: Request, records: list, champion: Callable[[list], Awaitable[list]]) -> list:
        """The results for a request: the candidate's for a client in the canary share, else the champion's."""
        cand = self.candidate
        if cand is not None and cand.rollout["mode"] == "canary" and \
                bucket(sticky_key(request), cand.rollout["id"]) < cand.rollout["percent"]:
            try:
                return await cand.batcher.submit(records)
            except Exception as e:  # noqa: BLE001  a candidate failure never fails a request: the champion answers
                self.fallbacks += 1
                if self.fallbacks == 1 or self.fallbacks % 100 == 0:
                    log.warning("canary %s:%s failed (%d times so far), the champion answered: %s",
                                cand.served.name, cand.served.version, self.fallbacks, e)
        return await champion(records)

    def shadow(self, records: list, rows: list[dict]) -> None:
        """After the champion answered ``rows``: the candidate on shadow trial predicts the same records in
        the background; its rows are logged with ``served`` False and ``shadow_of`` the answered row."""
        cand = self.candidate
        if cand is None or cand.rollout["mode"] != "shadow" or rows[0]["model_version"] == cand.served.version:
            return
        if len(self._shadow_tasks) >= MAX_SHADOW_PENDING:
            self.shadow_skipped += len(rows)
            return
        task = asyncio.get_running_loop().create_task(self._shadow(cand, records, rows))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, cand: Candidate, records: list, rows: list[dict]) -> None:
        start = time.perf_counter()
        try:
            results = await cand.batcher.submit(records)
            latency_ms = (time.perf_counter() - start) * 1000
            shadow_rows = [{"id": uuid.uuid4().hex, "model_name": row["model_name"], "model_version": cand.served.version,
                            "created_at": row["created_at"], "inputs": record,
                            "outputs": {"prediction": r["prediction"], "probabilities": r["probabilities"]},
                            "latency_ms": latency_ms, "served": False, "shadow_of": row["id"]}
                           for record, r, row in zip(records, results, rows, strict=True)]
            await self.predictions.put(shadow_rows)
            self.shadowed += len(shadow_rows)
        except Exception as e:  # noqa: BLE001  a shadow prediction is best effort: it never reaches a client
            self.shadow_failed += len(rows)
            if self.shadow_failed == len(rows) or self.shadow_failed % 100 < len(rows):
                log.warning("shadow %s:%s failed (%d rows so far): %s", cand.served.name, cand.served.version,
                            self.shadow_failed, e)

    async def close(self) -> None:
        """At shutdown: let pending shadow predictions finish (briefly), then stop the candidate."""
        if self._shadow_tasks:
            await asyncio.wait(set(self._shadow_tasks), timeout=10.0)
        self.drop("server stopping")
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=30.0)


def _infer(served) -> Callable[[list], list]:
    def infer(records: list[dict]) -> list[dict]:
        results = served.runner.predict(records)
        for r in results:
            r["version"] = served.version
        return results

    return infer
