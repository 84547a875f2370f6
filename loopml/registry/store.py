"""Runs, model versions and aliases in one database, artifacts in one root.

    store = Store()                                  # ./.loopml/registry.db, ./.loopml/artifacts
    run = store.start_run("income", params)          # `loopml train` does this itself
    store.end_run(run, "finished", metrics, model_dir=...)
    v = store.register("income", run=run)            # version 1, 2, 3 …
    store.promote("income", v["version"], "production", reason="beats v1 by 1.2 points")
    store.resolve("income@production")               # -> the version, its local directory
"""

from __future__ import annotations

import getpass
import json
import math
import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from loopml.errors import LoopmlError, did_you_mean
from loopml.registry import db
from loopml.registry.artifacts import ArtifactRoot
from loopml.registry.faults import pause_point
from loopml.registry.gating import Gating
from loopml.registry.records import Records

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})(?:@(?P<alias>[A-Za-z0-9_.-]+)|:(?P<version>\d+|latest))$")
RUN_STATUSES = ("running", "finished", "failed", "killed")


def check_name(value: str, what: str = "model name") -> str:
    if not isinstance(value, str) or not NAME.match(value) or ".." in value:
        raise LoopmlError(f"{what} {value!r} is not valid: use letters, digits, '.', '_' and '-' (max 128)")
    return value


def _row(row) -> dict:
    return dict(row._mapping) if row is not None else None


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)  # the user's project
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Store(Records, Gating):
    """Opened on first use: constructing one creates nothing (a failed command leaves no database)."""

    def __init__(self, url: str | None = None, artifacts: str | None = None) -> None:
        self._url, self._artifacts_url = db.store_url(url), artifacts
        self._engine = self._artifacts = None

    @property
    def engine(self) -> sa.engine.Engine:
        if self._engine is None:
            self._engine = db.open_database(self._url)
        return self._engine

    @property
    def writer(self) -> sa.engine.Engine:
        return self.engine.execution_options(**{db.WRITE: True})

    @property
    def url(self) -> str:
        return sa.engine.make_url(self._url).render_as_string(hide_password=True)

    @property
    def artifacts(self) -> ArtifactRoot:
        """The root recorded in the store at creation, so every client of a shared store agrees on it."""
        if self._artifacts is None:
            with self.writer.begin() as c:
                query = sa.select(db.store_info.c.value).where(db.store_info.c.key == "artifact_root")
                stored = c.execute(query).scalar()
                if stored is None:
                    stored = ArtifactRoot(self._artifacts_url).canonical
                    c.execute(db.store_info.insert().values(key="artifact_root", value=stored))
            self._artifacts = ArtifactRoot(self._artifacts_url or stored)
        return self._artifacts

    # -- runs -------------------------------------------------------------------------------
    def start_run(self, experiment: str, params: dict | None = None) -> str:
        from loopml import __version__

        run_id = uuid.uuid4().hex
        with self.writer.begin() as c:
            c.execute(db.runs.insert().values(
                id=run_id, experiment=experiment, status="running", started_at=time.time(), params=params or {},
                code_version=__version__, git_commit=_git_commit(), host=socket.gethostname(), pid=os.getpid(),
            ))
        return run_id

    def resume_run(self, run_id: str) -> bool:
        """Mark an interrupted run as running again in this process; False when the store has no such run."""
        with self.writer.begin() as c:
            found = c.execute(db.runs.update().where(db.runs.c.id == run_id, db.runs.c.status != "finished").values(
                status="running", ended_at=None, duration=None, error=None, host=socket.gethostname(), pid=os.getpid(),
            )).rowcount
        return bool(found)

    def forget_metrics_from(self, run_id: str, step: int) -> None:
        """Drop a run's metrics from ``step`` on (epochs logged after its last checkpoint, about to be redone)."""
        with self.writer.begin() as c:
            c.execute(db.run_metrics.delete().where(db.run_metrics.c.run_id == run_id, db.run_metrics.c.step >= step))

    def reap_runs(self) -> int:
        """Mark ``killed`` the running runs whose process died on this host; how many were marked.

        Runs of other hosts are left as they are: their process cannot be seen from here.
        """
        from loopml.registry.liveness import pid_alive

        host = socket.gethostname()
        with self.engine.connect() as c:
            running = c.execute(sa.select(db.runs.c.id, db.runs.c.pid, db.runs.c.started_at).where(
                db.runs.c.status == "running", db.runs.c.host == host)).all()
        dead = [r for r in running if not pid_alive(r.pid)]
        if not dead:
            return 0
        now = time.time()
        with self.writer.begin() as c:
            for r in dead:  # still running and still that pid: a resume may have taken the run over meanwhile
                c.execute(db.runs.update().where(db.runs.c.id == r.id, db.runs.c.status == "running",
                                                 db.runs.c.pid == r.pid).values(
                    status="killed", ended_at=now, duration=now - (r.started_at or now),
                    error=f"process {r.pid} on {host} ended without finishing the run",
                ))
        return len(dead)

    def log_metrics(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        rows = [{"run_id": run_id, "step": step, "key": k, "value": float(v)} for k, v in metrics.items()
                if isinstance(v, (int, float))]
        if rows:
            with self.writer.begin() as c:
                c.execute(db.run_metrics.insert(), rows)

    def end_run(self, run_id: str, status: str, metrics: dict | None = None, model_dir: str | os.PathLike | None = None,
                data_fingerprint: str | None = None, error: str | None = None) -> dict:
        if status not in RUN_STATUSES[1:]:
            raise LoopmlError(f"run status {status!r} is not one of {', '.join(RUN_STATUSES[1:])}")
        uri = self.artifacts.put_model(model_dir) if model_dir is not None else None
        now = time.time()
        with self.writer.begin() as c:
            started = c.execute(sa.select(db.runs.c.started_at).where(db.runs.c.id == run_id)).scalar()
            if started is None:
                raise LoopmlError(f"no run {run_id}")
            c.execute(db.runs.update().where(db.runs.c.id == run_id).values(
                status=status, ended_at=now, duration=now - started, metrics=metrics, artifact_uri=uri,
                data_fingerprint=data_fingerprint, error=error,
            ))
            c.execute(db.run_metric_values.delete().where(db.run_metric_values.c.run_id == run_id))
            values = metric_values(run_id, metrics)
            if values:  # the numbers the runs list sorts by (an index, not a JSON scan)
                c.execute(db.run_metric_values.insert(), values)
        return self.get_run(run_id)

    def attach_model(self, run_id: str, model_dir: str | os.PathLike) -> str:
        """Store a run's saved model in the artifact root and link it to the run."""
        uri = self.artifacts.put_model(model_dir)
        with self.writer.begin() as c:
            c.execute(db.runs.update().where(db.runs.c.id == run_id).values(artifact_uri=uri))
        return uri

    def get_run(self, run_id: str) -> dict:
        self.reap_runs()
        with self.engine.connect() as c:
            row = _row(c.execute(sa.select(db.runs).where(db.runs.c.id == run_id)).first())
            if row is None:  # a unique prefix is enough, like git
                matches = c.execute(sa.select(db.runs).where(db.runs.c.id.like(f"{run_id}%")).limit(2)).all() \
                    if re.fullmatch(r"[0-9a-f]{4,32}", run_id or "") else []
                if len(matches) != 1:
                    raise LoopmlError(f"no run {run_id!r}" + (" (ambiguous prefix)" if len(matches) > 1 else ""))
                row = _row(matches[0])
            history = c.execute(sa.select(db.run_metrics.c.step, db.run_metrics.c.key, db.run_metrics.c.value)
                                .where(db.run_metrics.c.run_id == row["id"]).order_by(db.run_metrics.c.id)).all()
        epochs: dict[int, dict] = {}
        for step, key, value in history:
            epochs.setdefault(step, {"epoch": step})[key] = value
        return {**row, "history": list(epochs.values())}

    def list_runs(self, experiment: str | None = None, limit: int = 50) -> list[dict]:
        self.reap_runs()
        query = sa.select(db.runs).order_by(db.runs.c.started_at.desc()).limit(limit)
        if experiment:
            query = query.where(db.runs.c.experiment == experiment)
        with self.engine.connect() as c:
            return [_row(r) for r in c.execute(query)]

    # -- registering ------------------------------------------------------------------------
    def register(self, name: str, *, run: str | None = None, path: str | os.PathLike | None = None,
                 description: str = "", parent_version: int | None = None, lineage: dict | None = None,
                 within=None) -> dict:
        """A new version of ``name`` from a run's model or a model directory.

        The artifact is stored first; the version row is created in one transaction that also
        takes the model's lock, so concurrent registrations get consecutive, distinct versions and
        a crash before commit leaves no version behind. ``within(connection, version)`` runs inside
        that transaction (the gate records its decision there: no version without a decision).
        """
        check_name(name)
        if (run is None) == (path is None):
            raise LoopmlError("register needs exactly one of a run id or a model directory")
        run_row = self.get_run(run) if run is not None else None
        if run_row is not None:
            if not run_row["artifact_uri"]:
                raise LoopmlError(f"run {run_row['id']} has no model artifact (status {run_row['status']})")
            uri = run_row["artifact_uri"]
        else:
            uri = self.artifacts.put_model(path)
        manifest, metrics = self._bundle_facts(self.artifacts.fetch(uri))
        now = time.time()
        for _attempt in range(20):
            try:
                with self.writer.begin() as c:
                    self._ensure_model(c, name, now)
                    latest = c.execute(sa.select(db.registered_models.c.latest_version)
                                       .where(db.registered_models.c.name == name).with_for_update()).scalar()
                    if parent_version is not None and not 1 <= parent_version <= latest:
                        raise LoopmlError(f"parent version {parent_version} of '{name}' does not exist")
                    version = latest + 1
                    c.execute(db.model_versions.insert().values(
                        name=name, version=version, run_id=run_row["id"] if run_row else None, artifact_uri=uri,
                        metrics=metrics, parent_version=parent_version, data_fingerprint=manifest.get("data_fingerprint"),
                        config_hash=manifest.get("config_hash"), created_at=now, description=description,
                        lineage=lineage,
                    ))
                    c.execute(db.registered_models.update().where(db.registered_models.c.name == name)
                              .values(latest_version=version))
                    if within is not None:
                        within(c, version)
                    pause_point("register.before_commit")
                return self.get_version(name, version)
            except sa.exc.IntegrityError:  # lost a race creating the model row: try again
                time.sleep(0.01)
        raise LoopmlError(f"could not register a version of '{name}': too much contention")

    @staticmethod
    def _ensure_model(c, name: str, now: float) -> None:
        exists = c.execute(sa.select(db.registered_models.c.name).where(db.registered_models.c.name == name)).first()
        if exists is None:
            c.execute(db.registered_models.insert().values(name=name, created_at=now, latest_version=0, description=""))

    @staticmethod
    def _bundle_facts(directory: Path) -> tuple[dict, dict]:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        metrics_file = directory / "metrics.json"
        metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
        scalars = {split: {k: v for k, v in m.items() if isinstance(v, (int, float))} for split, m in metrics.items()}
        return manifest, scalars

    # -- reading versions -------------------------------------------------------------------
    def get_version(self, name: str, version: int | str) -> dict:
        with self.engine.connect() as c:
            model = c.execute(sa.select(db.registered_models).where(db.registered_models.c.name == name)).first()
            if model is None:
                known = [r[0] for r in c.execute(sa.select(db.registered_models.c.name))]
                raise LoopmlError(f"no model named '{name}'{did_you_mean(name, known)}")
            number = model.latest_version if version == "latest" else int(version)
            row = None if not 1 <= number <= (model.latest_version or 0) else _row(  # 10**30: a query SQLite refuses
                c.execute(sa.select(db.model_versions).where(
                    db.model_versions.c.name == name, db.model_versions.c.version == number)).first())
            if row is None:
                raise LoopmlError(f"'{name}' has no version {version} (latest is {model.latest_version})")
            row["aliases"] = sorted(r[0] for r in c.execute(sa.select(db.aliases.c.alias).where(
                db.aliases.c.name == name, db.aliases.c.version == number)))
        return row

    def list_models(self) -> list[dict]:
        with self.engine.connect() as c:
            models = [_row(r) for r in c.execute(sa.select(db.registered_models).order_by(db.registered_models.c.name))]
            for m in models:
                m["aliases"] = {r.alias: r.version for r in c.execute(
                    sa.select(db.aliases).where(db.aliases.c.name == m["name"]).order_by(db.aliases.c.alias))}
        return models

    def list_versions(self, name: str) -> list[dict]:
        self._require_model(name)
        with self.engine.connect() as c:
            rows = [_row(r) for r in c.execute(sa.select(db.model_versions).where(db.model_versions.c.name == name)
                                                .order_by(db.model_versions.c.version))]
            by_version: dict[int, list[str]] = {}
            for r in c.execute(sa.select(db.aliases).where(db.aliases.c.name == name)):
                by_version.setdefault(r.version, []).append(r.alias)
        for row in rows:
            row["aliases"] = sorted(by_version.get(row["version"], []))
        return rows

    def _require_model(self, name: str) -> None:
        with self.engine.connect() as c:
            if c.execute(sa.select(db.registered_models.c.name).where(db.registered_models.c.name == name)).first() is None:
                known = [r[0] for r in c.execute(sa.select(db.registered_models.c.name))]
                raise LoopmlError(f"no model named '{name}'{did_you_mean(name, known)}")

    def resolve(self, ref: str) -> dict:
        """``NAME@alias``, ``NAME:version`` or ``NAME:latest`` -> the version, with ``path`` (a local directory)."""
        match = REF.match(ref or "")
        if not match:
            raise LoopmlError(f"model reference {ref!r} is not NAME@alias, NAME:version or a model directory")
        name, alias, version = match["name"], match["alias"], match["version"]
        if alias is not None:
            with self.engine.connect() as c:
                version = c.execute(sa.select(db.aliases.c.version).where(
                    db.aliases.c.name == name, db.aliases.c.alias == alias)).scalar()
                known = [r[0] for r in c.execute(sa.select(db.aliases.c.alias).where(db.aliases.c.name == name))]
            if version is None:
                self._require_model(name)
                raise LoopmlError(f"model '{name}' has no alias '{alias}'{did_you_mean(alias, known)}")
        row = self.get_version(name, version)
        row["path"] = self.artifacts.fetch(row["artifact_uri"])
        return row

    def alias_version(self, name: str, alias: str) -> int | None:
        """The version an alias points at now (one indexed lookup; for watchers)."""
        with self.engine.connect() as c:
            return c.execute(sa.select(db.aliases.c.version).where(
                db.aliases.c.name == name, db.aliases.c.alias == alias)).scalar()

    # -- aliases ----------------------------------------------------------------------------
    def promote(self, name: str, version: int, alias: str = "production", reason: str = "",
                actor: str | None = None) -> dict:
        check_name(alias, "alias")
        return self._move_alias(name, alias, int(version), "promote", reason, actor)

    def rollback(self, name: str, alias: str = "production", reason: str = "", actor: str | None = None) -> dict:
        """Point ``alias`` back at the version it had before its latest promotion."""
        stack = self._alias_stack(name, alias)
        if len(stack) < 2:
            raise LoopmlError(f"'{name}@{alias}' has no earlier version to roll back to")
        return self._move_alias(name, alias, stack[-2], "rollback", reason, actor)

    def _alias_stack(self, name: str, alias: str) -> list[int]:
        """Replay the audit log: a promotion pushes its target, a rollback pops one."""
        stack: list[int] = []
        for event in self.alias_history(name, alias, newest_first=False):
            if event["action"] == "rollback":
                stack.pop()
            elif event["to_version"] is not None:
                stack.append(event["to_version"])
        return stack

    def _move_alias(self, name: str, alias: str, version: int, action: str, reason: str, actor: str | None) -> dict:
        self.get_version(name, version)
        now = time.time()
        with self.writer.begin() as c:
            c.execute(sa.select(db.registered_models.c.name).where(db.registered_models.c.name == name).with_for_update())
            current = c.execute(sa.select(db.aliases.c.version).where(
                db.aliases.c.name == name, db.aliases.c.alias == alias)).scalar()
            if current is None:
                c.execute(db.aliases.insert().values(name=name, alias=alias, version=version, updated_at=now))
            else:
                c.execute(db.aliases.update().where(db.aliases.c.name == name, db.aliases.c.alias == alias)
                          .values(version=version, updated_at=now))
            c.execute(db.alias_events.insert().values(
                name=name, alias=alias, action=action, from_version=current, to_version=version,
                actor=actor or _actor(), reason=reason or "", at=now,
            ))
        return {"name": name, "alias": alias, "from_version": current, "to_version": version, "action": action}

    def alias_history(self, name: str, alias: str | None = None, newest_first: bool = True) -> list[dict]:
        query = sa.select(db.alias_events).where(db.alias_events.c.name == name)
        if alias:
            query = query.where(db.alias_events.c.alias == alias)
        order = db.alias_events.c.id.desc() if newest_first else db.alias_events.c.id
        with self.engine.connect() as c:
            return [_row(r) for r in c.execute(query.order_by(order))]

    def diff(self, name: str, v1: int, v2: int) -> dict:
        """Metric deltas, config differences and lineage of two versions."""
        from loopml.registry.resolved import resolved_config

        a, b = self.get_version(name, v1), self.get_version(name, v2)
        # the effective configs: `auto` and defaults spelled out, so equal models show no differences
        configs = [flatten(resolved_config(self.artifacts.fetch(row["artifact_uri"]))) for row in (a, b)]
        keys = sorted(set(configs[0]) | set(configs[1]))
        config = {k: (configs[0].get(k), configs[1].get(k)) for k in keys if configs[0].get(k) != configs[1].get(k)}
        metrics = {}
        for split in sorted(set(a["metrics"] or {}) & set(b["metrics"] or {})):
            for k in sorted(set(a["metrics"][split]) & set(b["metrics"][split])):
                x, y = a["metrics"][split][k], b["metrics"][split][k]
                metrics[f"{split}.{k}"] = (x, y, y - x)
        lineage = {k: (a[k], b[k]) for k in ("run_id", "parent_version", "data_fingerprint", "config_hash", "created_at")}
        return {"name": name, "versions": (int(v1), int(v2)), "metrics": metrics, "config": config, "lineage": lineage}


def metric_values(run_id: str, metrics: object) -> list[dict]:
    """``run_metric_values`` rows of a run's final metrics: each finite number (not a bool) by its dotted key
    (keys longer than the column's 200 characters are left out; migration 0010 backfills by the same rule)."""
    if not isinstance(metrics, dict):
        return []
    return [{"run_id": run_id, "key": k, "value": float(v)} for k, v in flatten(metrics).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0 < len(k) <= 200]


def flatten(value: object, prefix: str = "") -> dict:
    """Nested dicts as dotted keys: {'a': {'b': 1}} -> {'a.b': 1}."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}
