"""The store's database: any SQLAlchemy URL (SQLite file by default), migrated with Alembic on open.

The tables below mirror the head revision in ``migrations/versions``; queries use them, schema
changes go through a new migration, never through ``create_all``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from loopml.errors import LoopmlError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD = "0010"
DEFAULT_URL = "sqlite:///.loopml/registry.db"
#: execution option marking a writing transaction (SQLite: BEGIN IMMEDIATE; reads stay deferred)
WRITE = "loopml_write"
# Ctrl-C while a connection goes back to the pool: SQLAlchemy logs "Exception during reset" with a
# traceback (and re-raises); with no logging set up, Python's last-resort handler printed it on stderr
logging.getLogger("sqlalchemy.pool").addHandler(logging.NullHandler())

metadata = sa.MetaData()
store_info = sa.Table("store_info", metadata, sa.Column("key", sa.String(64), primary_key=True),
                      sa.Column("value", sa.Text))
runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True), sa.Column("experiment", sa.String(200)),
    sa.Column("status", sa.String(16)), sa.Column("started_at", sa.Float), sa.Column("ended_at", sa.Float),
    sa.Column("params", sa.JSON), sa.Column("metrics", sa.JSON), sa.Column("data_fingerprint", sa.String(64)),
    sa.Column("code_version", sa.String(64)), sa.Column("git_commit", sa.String(40)), sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer), sa.Column("duration", sa.Float), sa.Column("artifact_uri", sa.String(512)),
    sa.Column("error", sa.Text),
)
run_metrics = sa.Table(
    "run_metrics", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True), sa.Column("run_id", sa.String(32)),
    sa.Column("step", sa.Integer), sa.Column("key", sa.String(100)), sa.Column("value", sa.Float),
)
#: each finished run's numeric final metrics by dotted key (migration 0010): what /runs sorts by
run_metric_values = sa.Table(
    "run_metric_values", metadata,
    sa.Column("run_id", sa.String(32), primary_key=True), sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
)
registered_models = sa.Table(
    "registered_models", metadata,
    sa.Column("name", sa.String(128), primary_key=True), sa.Column("created_at", sa.Float),
    sa.Column("latest_version", sa.Integer), sa.Column("description", sa.Text),
)
model_versions = sa.Table(
    "model_versions", metadata,
    sa.Column("name", sa.String(128), primary_key=True), sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.String(32)), sa.Column("artifact_uri", sa.String(512)), sa.Column("metrics", sa.JSON),
    sa.Column("parent_version", sa.Integer), sa.Column("data_fingerprint", sa.String(64)),
    sa.Column("config_hash", sa.String(64)), sa.Column("created_at", sa.Float), sa.Column("description", sa.Text),
    sa.Column("lineage", sa.JSON),
)
aliases = sa.Table(
    "aliases", metadata,
    sa.Column("name", sa.String(128), primary_key=True), sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer), sa.Column("updated_at", sa.Float),
)
alias_events = sa.Table(
    "alias_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True), sa.Column("name", sa.String(128)),
    sa.Column("alias", sa.String(64)), sa.Column("action", sa.String(16)), sa.Column("from_version", sa.Integer),
    sa.Column("to_version", sa.Integer), sa.Column("actor", sa.String(255)), sa.Column("reason", sa.Text),
    sa.Column("at", sa.Float),
)

predictions = sa.Table(
    "predictions", metadata,
    sa.Column("id", sa.String(32), primary_key=True), sa.Column("model_name", sa.String(128)),
    sa.Column("model_version", sa.Integer), sa.Column("created_at", sa.Float), sa.Column("inputs", sa.JSON),
    sa.Column("outputs", sa.JSON), sa.Column("latency_ms", sa.Float),
    # 0007: False for a shadow prediction (logged, never returned to the client); NULL/True = answered
    sa.Column("served", sa.Boolean), sa.Column("shadow_of", sa.String(32)),
)
feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True), sa.Column("model_name", sa.String(128)),
    sa.Column("prediction_id", sa.String(32)), sa.Column("inputs", sa.JSON), sa.Column("label", sa.JSON),
    sa.Column("created_at", sa.Float),
    # 0005: a snapshot of the prediction, so feedback never depends on its prediction row
    sa.Column("prediction_outputs", sa.JSON), sa.Column("model_version", sa.Integer),
)

drift_windows = sa.Table(
    "drift_windows", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True), sa.Column("model_name", sa.String(128)),
    sa.Column("model_version", sa.Integer), sa.Column("start", sa.Float), sa.Column("end", sa.Float),
    sa.Column("rows", sa.Integer), sa.Column("drift", sa.Boolean), sa.Column("results", sa.JSON),
    sa.Column("created_at", sa.Float),
)
gate_decisions = sa.Table(
    "gate_decisions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True), sa.Column("model_name", sa.String(128)),
    sa.Column("candidate_version", sa.Integer), sa.Column("champion_version", sa.Integer),
    sa.Column("promoted", sa.Boolean), sa.Column("reason", sa.Text), sa.Column("numbers", sa.JSON),
    sa.Column("at", sa.Float),
    # 0007: retrain | rollout | watch | loop (NULL in older rows: retrain)
    sa.Column("kind", sa.String(32)),
)
model_locks = sa.Table(
    "model_locks", metadata,
    sa.Column("name", sa.String(128), primary_key=True), sa.Column("purpose", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(32)), sa.Column("host", sa.String(255)), sa.Column("pid", sa.Integer),
    sa.Column("acquired_at", sa.Float), sa.Column("expires_at", sa.Float),
)
#: 0007: one row per model an unattended loop worker runs; its schedule survives restarts
loop_state = sa.Table(
    "loop_state", metadata,
    sa.Column("model_name", sa.String(128), primary_key=True), sa.Column("next_cycle_at", sa.Float),
    sa.Column("last_cycle_at", sa.Float), sa.Column("cycles", sa.Integer), sa.Column("state", sa.JSON),
    sa.Column("updated_at", sa.Float),
)
#: 0007: a candidate on trial (shadow / canary) or a new champion under watch; state: trial | watching | kept |
#: promoted | rejected | rolled_back | cancelled
rollouts = sa.Table(
    "rollouts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True), sa.Column("model_name", sa.String(128)),
    sa.Column("alias", sa.String(64)), sa.Column("candidate_version", sa.Integer),
    sa.Column("champion_version", sa.Integer), sa.Column("mode", sa.String(16)), sa.Column("percent", sa.Float),
    sa.Column("state", sa.String(16)), sa.Column("started_at", sa.Float), sa.Column("updated_at", sa.Float),
    sa.Column("watch_until", sa.Float), sa.Column("numbers", sa.JSON),
)


def store_url(url: str | None = None) -> str:
    return url or os.environ.get("LOOPML_STORE") or DEFAULT_URL


def create_engine(url: str) -> Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise LoopmlError(f"store URL {url!r} is not a SQLAlchemy URL (e.g. sqlite:///registry.db, "
                          "postgresql+psycopg://user@host/db)") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 60})
        _sqlite_transactions(engine)
        _sqlite_damage_is_user_error(engine)
        _sqlite_interrupt_releases_locks(engine)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver loopml installs
    try:
        return sa.create_engine(parsed, pool_pre_ping=True)
    except (ImportError, sa.exc.NoSuchModuleError) as e:
        raise LoopmlError(f"no database driver for {parsed.drivername}: {e}") from None


def _sqlite_transactions(engine: Engine) -> None:
    """WAL (readers never block the writer) and BEGIN IMMEDIATE for writes (writers queue, no upgrade deadlock)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get(WRITE) else "BEGIN")


class DamagedStore(LoopmlError, sa.exc.SQLAlchemyError):
    """A damaged store file: a user error (one line, exit 2) that code retrying store failures
    (``except SQLAlchemyError``: the prediction log, the lock renewer, the server) still catches."""


def _sqlite_damage_is_user_error(engine: Engine) -> None:
    """A damaged database file (overwritten, truncated) fails on whichever query reads the bad page
    first: every such failure becomes one line naming the store, not an internal error."""
    import sqlite3

    where = engine.url.render_as_string(hide_password=True)

    @event.listens_for(engine, "handle_error")
    def _on_error(context) -> None:
        # SQLITE_CORRUPT / SQLITE_NOTADB raise the base class; locks, constraints, ... raise subclasses
        if type(context.original_exception) is sqlite3.DatabaseError:
            message = str(context.original_exception).strip().splitlines()[0]
            raise DamagedStore(f"the store {where} is damaged ({message}); restore it from a backup "
                               "or point --store / LOOPML_STORE at another one")


def _sqlite_interrupt_releases_locks(engine: Engine) -> None:
    """Ctrl-C (or another BaseException) in the middle of a statement: SQLAlchemy discards the
    connection but leaves its cursor open. SQLite cannot close a connection while a statement is
    live, so it lingers as a zombie holding the transaction's write lock until the traceback that
    references the cursor is freed; the handler's own store write (``end_run(..., "killed")``) then
    waited busy_timeout (60 s) and failed. Closing the cursor first lets the close, and its rollback, happen."""
    import sqlite3

    @event.listens_for(engine, "handle_error")
    def _on_interrupt(context) -> None:
        if isinstance(context.original_exception, Exception):
            return
        # this SQLAlchemy leaves ExceptionContext.cursor unset: the execution context has the cursor
        cursor = getattr(context, "cursor", None) or getattr(context.execution_context, "cursor", None)
        if cursor is None:
            return
        with contextlib.suppress(sqlite3.Error):  # already closed or unusable: closing the connection copes
            cursor.close()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (creating it on first use)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.execution_options(**{WRITE: True}).begin() as connection:
        if connection.dialect.name == "postgresql":  # two processes opening a new store: one migrates
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(7310420917)"))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def open_database(url: str | None = None) -> Engine:
    engine = create_engine(store_url(url))
    try:
        revision = current_revision(engine)
        if revision != HEAD:
            migrate(engine)
    except sa.exc.DatabaseError as e:  # OperationalError (unreachable, locked) and a damaged file alike
        raise LoopmlError(f"cannot open the store {engine.url.render_as_string(hide_password=True)}: "
                          f"{str(e.orig).strip().splitlines()[0]}") from None
    return engine
