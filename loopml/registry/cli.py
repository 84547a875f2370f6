"""``loopml runs …`` and ``loopml models …``: thin commands over ``Store``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

StoreOpt = Annotated[str | None, typer.Option("--store", help="SQLAlchemy URL of the store (default: $LOOPML_STORE or "
                                              "sqlite:///.loopml/registry.db).")]
ArtifactsOpt = Annotated[str | None, typer.Option("--artifacts", help="Artifact root URL (default: the store's).")]
KEY_METRICS = ("accuracy", "f1", "roc_auc", "r2", "mae")

runs_app = typer.Typer(help="Tracked training runs.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models: versions, aliases, lineage.", no_args_is_help=True)


def existing_store(store: str | None, artifacts: str | None = None):
    """The store a reading command (``label``, ``monitor``, ``loop``) works on: a SQLite file that does not exist is
    a typo, refused in one line, never created empty (the command would then find nothing, or wait for nothing)."""
    import sqlalchemy as sa

    from loopml.errors import LoopmlError
    from loopml.registry import Store
    from loopml.registry.db import store_url

    url = store_url(store)
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        parsed = None  # Store says what a store URL must be
    if parsed is not None and parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not parsed.database.startswith("file:") and not Path(parsed.database).expanduser().is_file():
        raise LoopmlError(f"no store at {parsed.database}: the SQLite file does not exist (check --store or "
                          "$LOOPML_STORE; `loopml train` or `loopml models register` creates one)")
    return Store(store, artifacts)


def _store(store: str | None, artifacts: str | None = None):
    from loopml.registry import Store

    return Store(store, artifacts)


def _table(title: str, header: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h)
    for row in rows:
        table.add_row(*["" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    Console(width=None if sys.stdout.isatty() else 220).print(table)  # piped: no wrapping into tall cells


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


def _test_metrics(metrics: dict | None) -> dict:
    metrics = metrics or {}
    return metrics.get("test") or metrics.get("validation") or {}


@runs_app.command("list")
def runs_list(experiment: Annotated[str | None, typer.Option(help="Only this experiment.")] = None,
              limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
              store: StoreOpt = None) -> None:
    """Recent runs, newest first."""
    runs = _store(store).list_runs(experiment, limit)
    rows = [[r["id"][:12], r["experiment"], r["status"], _when(r["started_at"]),
             f"{r['duration']:.1f}s" if r["duration"] else "", *[_test_metrics(r["metrics"]).get(k) for k in KEY_METRICS]]
            for r in runs]
    _table("runs", ["run", "experiment", "status", "started", "duration", *KEY_METRICS], rows)


@runs_app.command("show")
def runs_show(run: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")], store: StoreOpt = None) -> None:
    """One run: status, lineage facts, final metrics, per-epoch history (JSON)."""
    typer.echo(json.dumps(_store(store).get_run(run), indent=2, default=str))


@runs_app.command("compare")
def runs_compare(runs: Annotated[list[str], typer.Argument(help="Two or more run ids.")], store: StoreOpt = None) -> None:
    """Metrics side by side, and the params that differ."""
    from loopml.registry import flatten

    s = _store(store)
    found = [s.get_run(r) for r in runs]
    ids = [r["id"][:12] for r in found]
    metric_keys = sorted({f"{split}.{k}" for r in found for split, m in (r["metrics"] or {}).items() for k in m})
    rows = [[key, *[(r["metrics"] or {}).get(key.split(".", 1)[0], {}).get(key.split(".", 1)[1]) for r in found]]
            for key in metric_keys]
    _table("metrics", ["metric", *ids], rows)
    params = [flatten(r["params"] or {}) for r in found]
    keys = sorted({k for p in params for k in p})
    differing = [[k, *[json.dumps(p.get(k)) for p in params]] for k in keys if len({json.dumps(p.get(k)) for p in params}) > 1]
    _table("params that differ", ["param", *ids], differing or [["(none)", *[""] * len(ids)]])


@models_app.command("register")
def models_register(
    source: Annotated[str, typer.Argument(help="A run id or a model directory.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name.")],
    description: Annotated[str, typer.Option(help="Free text kept with the version.")] = "",
    parent: Annotated[int | None, typer.Option(help="The version this one derives from.")] = None,
    store: StoreOpt = None, artifacts: ArtifactsOpt = None,
) -> None:
    """Create the next version of NAME from a run's model or a model directory."""
    s = _store(store, artifacts)
    is_path = Path(source).is_dir()
    v = s.register(name, run=None if is_path else source, path=source if is_path else None,
                   description=description, parent_version=parent)
    typer.echo(f"registered {name}:{v['version']} ({v['artifact_uri']})")


@models_app.command("list")
def models_list(store: StoreOpt = None) -> None:
    """Every model with its latest version and aliases."""
    rows = [[m["name"], m["latest_version"], ", ".join(f"{a}→{v}" for a, v in m["aliases"].items()), m["description"]]
            for m in _store(store).list_models()]
    _table("models", ["name", "latest", "aliases", "description"], rows)


@models_app.command("show")
def models_show(name: str, store: StoreOpt = None) -> None:
    """The versions of NAME (metrics, lineage, aliases) and its alias history."""
    s = _store(store)
    versions = s.list_versions(name)
    # DP-SGD versions (training.privacy): the lineage's cumulative ε at δ beside the metrics
    private = any(isinstance((v["metrics"] or {}).get("privacy"), dict) for v in versions)
    rows = [[v["version"], ", ".join(v["aliases"]), _when(v["created_at"]), (v["run_id"] or "")[:12],
             v["parent_version"], v["data_fingerprint"], *[_test_metrics(v["metrics"]).get(k) for k in KEY_METRICS],
             *([_spent((v["metrics"] or {}).get("privacy"))] if private else []), v["description"]] for v in versions]
    _table(f"{name}: versions", ["version", "aliases", "created", "run", "parent", "data", *KEY_METRICS,
                                 *(["ε (δ)"] if private else []), "description"], rows)
    _history(s, name, None)


def _spent(privacy: dict | None) -> str:
    """A version's cumulative ε over its lineage at its δ ("none" when an earlier version trained without DP)."""
    if not isinstance(privacy, dict):
        return ""
    cumulative = privacy.get("cumulative_epsilon")
    return f"{cumulative:.3f} ({privacy.get('delta', 0):g})" if isinstance(cumulative, int | float) else "none"


def _history(s, name: str, alias: str | None) -> None:
    rows = [[_when(e["at"]), e["alias"], e["action"], e["from_version"], e["to_version"], e["actor"], e["reason"]]
            for e in s.alias_history(name, alias)]
    _table(f"{name}: alias history", ["when", "alias", "action", "from", "to", "who", "why"], rows)


@models_app.command("history")
def models_history(name: str, alias: Annotated[str | None, typer.Option(help="Only this alias.")] = None,
                   store: StoreOpt = None) -> None:
    """The audit log of alias moves: who, when, from, to, why."""
    _history(_store(store), name, alias)


@models_app.command("promote")
def models_promote(
    name: str, version: int, alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "", store: StoreOpt = None,
) -> None:
    """Point an alias (production by default) at VERSION."""
    move = _store(store).promote(name, version, alias, reason)
    typer.echo(f"{name}@{alias}: {move['from_version'] or '-'} → {move['to_version']}")


@models_app.command("rollback")
def models_rollback(
    name: str, alias: Annotated[str, typer.Option(help="Alias to move back.")] = "production",
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "", store: StoreOpt = None,
) -> None:
    """Point an alias back at the version it had before its latest promotion."""
    move = _store(store).rollback(name, alias, reason)
    typer.echo(f"{name}@{alias}: {move['from_version']} → {move['to_version']} (rolled back)")


@models_app.command("diff")
def models_diff(name: str, v1: int, v2: int, store: StoreOpt = None) -> None:
    """Metric deltas, config differences and lineage of two versions."""
    d = _store(store).diff(name, v1, v2)
    _table(f"{name}: metrics", ["metric", f"v{v1}", f"v{v2}", "Δ"], [[k, *v] for k, v in d["metrics"].items()])
    _table(f"{name}: config differences", ["key", f"v{v1}", f"v{v2}"],
           [[k, json.dumps(a), json.dumps(b)] for k, (a, b) in d["config"].items()] or [["(same config)", "", ""]])
    _table(f"{name}: lineage", ["", f"v{v1}", f"v{v2}"],
           [[k, *(map(_when, v) if k == "created_at" else v)] for k, v in d["lineage"].items()])
