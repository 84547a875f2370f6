"""Per-model locks and gated promotion: one retrain at a time decides, and only against the champion it gated.

    token = store.acquire_lock("income")             # LockHeld if a live holder has it
    ...                                              # train, gate (store.renew_lock(...) meanwhile)
    store.register_decided("income", run=..., champion_version=3, promote=True, ...)
    store.release_lock("income", token)

The lock is a row (owner token, host, pid, expiry) taken inside a writing transaction that first
locks the model's row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's writes are ``BEGIN
IMMEDIATE``), so two takers are serialised. A holder that crashed does not block forever: on its
own host a dead pid frees the lock at once, elsewhere the expiry does (holders renew it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid

import sqlalchemy as sa

from loopml.errors import LoopmlError, did_you_mean
from loopml.registry import db
from loopml.registry.liveness import pid_alive

DEFAULT_TTL_S = 300.0


class LockHeld(LoopmlError):
    """Another live process holds the model's lock."""


class Gating:
    """Mixed into ``Store``: the ``model_locks`` table and the decision that moves an alias."""

    engine: sa.engine.Engine
    writer: sa.engine.Engine

    def acquire_lock(self, name: str, purpose: str = "retrain", ttl: float = DEFAULT_TTL_S) -> str:
        """Take ``name``'s lock for ``purpose``; returns the owner token. Raises LockHeld when a live holder has it."""
        token, now, host = uuid.uuid4().hex, time.time(), socket.gethostname()
        with self.writer.begin() as c:
            self._lock_model_row(c, name)
            held = c.execute(sa.select(db.model_locks).where(
                db.model_locks.c.name == name, db.model_locks.c.purpose == purpose)).first()
            if held is not None and _alive(held, now, host):
                raise LockHeld(f"another {purpose} of '{name}' is running (pid {held.pid} on {held.host}, "
                               f"since {time.strftime('%H:%M:%S', time.localtime(held.acquired_at))}); not starting")
            values = {"owner": token, "host": host, "pid": os.getpid(), "acquired_at": now, "expires_at": now + ttl}
            if held is None:
                c.execute(db.model_locks.insert().values(name=name, purpose=purpose, **values))
            else:  # a stale lock (expired, or its process died): take it over
                c.execute(db.model_locks.update().where(db.model_locks.c.name == name,
                                                        db.model_locks.c.purpose == purpose).values(**values))
        return token

    def renew_lock(self, name: str, token: str, purpose: str = "retrain", ttl: float = DEFAULT_TTL_S) -> bool:
        """Push the expiry on; False if the lock is no longer ours."""
        with self.writer.begin() as c:
            return c.execute(db.model_locks.update().where(
                db.model_locks.c.name == name, db.model_locks.c.purpose == purpose, db.model_locks.c.owner == token,
            ).values(expires_at=time.time() + ttl)).rowcount == 1

    def release_lock(self, name: str, token: str, purpose: str = "retrain") -> None:
        with self.writer.begin() as c:
            c.execute(db.model_locks.delete().where(db.model_locks.c.name == name, db.model_locks.c.purpose == purpose,
                                                    db.model_locks.c.owner == token))

    def lock_holder(self, name: str, purpose: str = "retrain") -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(db.model_locks).where(
                db.model_locks.c.name == name, db.model_locks.c.purpose == purpose)).first()
        return dict(row._mapping) if row is not None else None

    def register_decided(self, name: str, *, run: str, description: str, lineage: dict, champion_version: int,
                         alias: str, promote: bool, reason: str, numbers: dict, lock_token: str | None = None,
                         actor: str = "loopml retrain", trial: str | None = None, then=None) -> dict:
        """Register the candidate and record the gate's decision in one transaction (never a version
        without a decision). It is promoted only if ``promote`` and the alias still points at
        ``champion_version`` (and, with ``lock_token``, the lock is still ours); otherwise the
        decision says why not. ``trial`` (shadow / canary): a passing candidate goes on trial instead,
        the alias stays (outcome ``trial``); ``then(connection, version, outcome)`` runs in the same
        transaction (the rollout starts there)."""
        outcome: dict = {}

        def decide(c, version: int) -> None:
            outcome.clear()
            outcome.update(self._decide(c, name, version, champion_version, alias, promote, reason, numbers,
                                        lock_token, actor, trial))
            if then is not None:
                then(c, version, outcome)

        version = self.register(name, run=run, description=description, parent_version=champion_version,
                                lineage=lineage, within=decide)
        return {**outcome, "version": version}

    def _decide(self, c, name: str, candidate: int, champion: int, alias: str, promote: bool, reason: str,
                numbers: dict, lock_token: str | None, actor: str, trial: str | None = None) -> dict:
        now = time.time()
        if promote and lock_token is not None:
            owner = c.execute(sa.select(db.model_locks.c.owner).where(
                db.model_locks.c.name == name, db.model_locks.c.purpose == "retrain")).scalar()
            if owner != lock_token:
                promote, reason = False, f"lock lost (another retrain took it over); not promoted. Gate: {reason}"
        if promote:
            current = c.execute(sa.select(db.aliases.c.version).where(
                db.aliases.c.name == name, db.aliases.c.alias == alias)).scalar()
            if current != champion:
                promote = False
                reason = (f"champion moved: {name}@{alias} points at version {current} now, not the gated "
                          f"version {champion}; not promoted. Gate: {reason}")
            elif trial is None:
                c.execute(db.aliases.update().where(db.aliases.c.name == name, db.aliases.c.alias == alias)
                          .values(version=candidate, updated_at=now))
                c.execute(db.alias_events.insert().values(
                    name=name, alias=alias, action="promote", from_version=current, to_version=candidate,
                    actor=actor, reason=f"gate passed: {reason}", at=now))
        on_trial = promote and trial is not None
        if on_trial:
            reason = f"goes on {trial} trial ({name}@{alias} stays on version {champion}); gate passed: {reason}"
            numbers = {**numbers, "outcome": "trial"}
        decision = c.execute(db.gate_decisions.insert().values(
            model_name=name, candidate_version=candidate, champion_version=champion, promoted=promote and not on_trial,
            reason=reason, numbers=numbers, at=now, kind="retrain"))
        return {"promoted": promote and not on_trial, "trial": on_trial, "reason": reason,
                "decision_id": int(decision.inserted_primary_key[0])}

    def _lock_model_row(self, c, name: str) -> None:
        found = c.execute(sa.select(db.registered_models.c.name).where(db.registered_models.c.name == name)
                          .with_for_update()).first()
        if found is None:
            known = [r[0] for r in c.execute(sa.select(db.registered_models.c.name))]
            raise LoopmlError(f"no model named '{name}'{did_you_mean(name, known)}")


def _alive(lock, now: float, host: str) -> bool:
    if lock.expires_at <= now:
        return False
    if lock.host == host:  # same host: a dead pid frees the lock before its expiry
        return pid_alive(lock.pid, lock.acquired_at)
    return True


class LockKeeper:
    """Holds a lock for a ``with`` block, renewing it in a thread; ``lost`` turns True if renewal fails."""

    def __init__(self, store, name: str, purpose: str = "retrain", ttl: float = DEFAULT_TTL_S) -> None:
        self.store, self.name, self.purpose, self.ttl = store, name, purpose, ttl
        self.token: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> LockKeeper:
        self.token = self.store.acquire_lock(self.name, self.purpose, self.ttl)
        self._thread = threading.Thread(target=self._renew, name=f"loopml-lock-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self.store.renew_lock(self.name, self.token, self.purpose, self.ttl):
                    self.lost = True
                    return
            except sa.exc.SQLAlchemyError:  # the store is briefly unreachable: try again next period
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(sa.exc.SQLAlchemyError):  # unreachable store: the expiry frees the lock
            self.store.release_lock(self.name, self.token, self.purpose)

    def __enter__(self) -> LockKeeper:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
