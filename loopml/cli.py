"""The ``loopml`` command. Thin: every command calls the Python API. Exit 0 ok, 2 user error, 1 bug."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="loopml: train → registry → serve → feedback → drift → retrain → gated promotion → hot swap / rollback.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)

def _version(value: bool) -> None:
    if value:
        from loopml import __version__

        typer.echo(f"loopml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """loopml: from a table to a trained, evaluated, saved model."""


from loopml.loop.cli import monitor_command, retrain_command  # noqa: E402
from loopml.registry.cli import ArtifactsOpt, StoreOpt, models_app, runs_app  # noqa: E402

app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")
app.command("monitor")(monitor_command)
app.command("retrain")(retrain_command)
from loopml.loop.worker_cli import loop_command  # noqa: E402

app.command("loop")(loop_command)
from loopml.loop.label_cli import label_command  # noqa: E402

app.command("label")(label_command)
from loopml.tune_cli import tune_command  # noqa: E402

app.command("tune")(tune_command)
from loopml.ui.cli import ui_command  # noqa: E402

app.command("ui")(ui_command)
from loopml.compress.compress_cli import compress_command  # noqa: E402

app.command("compress")(compress_command)
from loopml.compress.export_cli import export_command  # noqa: E402

app.command("export")(export_command)
from loopml.deploy.gate import gate_command  # noqa: E402
from loopml.deploy.package_cli import package_command  # noqa: E402

app.command("package")(package_command)
app.command("gate")(gate_command)
from loopml.pretrain.pretrain_cli import pretrain_command  # noqa: E402

app.command("pretrain")(pretrain_command)
from loopml.federate.federate_cli import federate_command  # noqa: E402

app.command("federate")(federate_command)

ModelArg = Annotated[str, typer.Argument(help="Model directory, or NAME@alias / NAME:version from the registry.",
                                         metavar="MODEL")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="CSV/TSV/Parquet/JSONL file, or a root/<class>/<file> folder.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see `loopml schema`).")]
TargetOpt = Annotated[str | None, typer.Option("--target", "-t", help="Column to predict.")]
DelimiterOpt = Annotated[str | None, typer.Option(help="Field delimiter, e.g. ',' or '\\t' (default: by extension).")]
HeaderOpt = Annotated[bool | None, typer.Option("--header/--no-header", help="Whether the first row names the columns.")]
NamesOpt = Annotated[str | None, typer.Option(help="Comma-separated column names (files without a header).")]
EncodingOpt = Annotated[str | None, typer.Option(help="Text encoding, e.g. utf-8, cp1252.")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad-rows", help="Skip malformed rows (and report them).")]
MediaRootOpt = Annotated[str | None, typer.Option(help="Folder that image/audio paths are relative to (and confined to).")]
RayOpt = Annotated[str | None, typer.Option(
    "--ray", metavar="[ADDRESS]", help="Run on Ray: a cluster's address (ray://host:10001, auto), or nothing for a "
                                       "local cluster started for this command (pip install loopml[ray]).")]
CoerceOpt = Annotated[bool, typer.Option(
    "--coerce", help="Read values a column cannot hold ('old' in a number column, a third value in a binary one, "
                     "inf) as missing, and say how many; without it they are an error.")]


def _data_overrides(delimiter, header, names, encoding, skip_bad_rows, media_root=None) -> dict | None:
    data = {
        "delimiter": delimiter, "header": header, "encoding": encoding, "media_root": media_root,
        "names": [n.strip() for n in names.split(",")] if names else None,
        "bad_rows": "skip" if skip_bad_rows else None,
    }
    data = {k: v for k, v in data.items() if v is not None}
    return data or None


def _echo(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def train(
    data: DataOpt,
    target: TargetOpt = None,
    config: ConfigOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Model directory to write (default: a new models/<target>-<date>-<time>-<id>).")] = None,
    validation: Annotated[Path | None, typer.Option(help="Separate validation file.")] = None,
    test: Annotated[Path | None, typer.Option(help="Separate test file.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for splitting and training.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model directory.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the tensor cache.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    delimiter: DelimiterOpt = None, header: HeaderOpt = None, names: NamesOpt = None,
    encoding: EncodingOpt = None, skip_bad_rows: SkipBadOpt = False, media_root: MediaRootOpt = None,
    experiment: Annotated[str | None, typer.Option(help="Experiment to record the run under (default: the target).")] = None,
    register: Annotated[str | None, typer.Option(help="Register the model as the next version of this name.")] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Record the run in the store.")] = True,
    store: StoreOpt = None, artifacts: ArtifactsOpt = None,
    time_budget: Annotated[float | None, typer.Option(
        "--time-budget", help="AutoML: choose, tune and ensemble learners in S seconds (preparation included); "
        "images/audio: the network, its epochs planned to fit.")] = None,
    preset: Annotated[str | None, typer.Option(
        help="AutoML preset with --time-budget: fast (fewer members, no bagging) or best (bagging + ensemble).")] = None,
    ray: RayOpt = None,
    workers: Annotated[int, typer.Option(help="Ray Train workers (data-parallel copies of the network), with --ray.")] = 1,
) -> None:
    """Train a model on a table and save it (config, preprocessing, weights, metrics, report); record the run."""
    _require_inputs(data=data, validation=validation, test=test, config=config)
    from loopml.api import Model

    training = {k: v for k, v in {"epochs": epochs, "seed": seed}.items() if v is not None} or None
    if target is None and data.is_dir() and (config is None or "target" not in _config_sections(config)):
        target = "label"  # a folder-per-class layout: root/<class>/<file> becomes (path, label)
    split = {"seed": seed} if seed is not None else None
    model = Model(config, target=target, training=training, split=split,
                  data=_data_overrides(delimiter, header, names, encoding, skip_bad_rows, media_root),
                  **_automl_sections(time_budget, preset))
    if register:
        from loopml.registry.store import check_name

        check_name(register)
    if register and not track:
        raise _user_error("--register needs the run to be tracked (drop --no-track)")
    from loopml.train.workdir import claim_output

    # reserved before training: parallel runs get distinct folders, a live run's folder is refused
    claim = claim_output(output, model.config.target.column, overwrite=overwrite, resume=resume)
    checkpoints = claim.checkpoints
    for note in claim.notes:
        _echo(note)
    tracked_in = None
    if track:
        from loopml.registry import Store

        tracked_in = Store(store, artifacts)
    try:
        from loopml.train.ray_train import ray_launch

        with ray_launch(ray, workers, model.config.learner.type, automl=time_budget is not None):
            model.fit(data, validation=validation, test=test, checkpoint_dir=checkpoints, resume=resume,
                      progress=not quiet, cache_dir=False if no_cache else None,
                      track=(experiment or True) if track else False, store=tracked_in)
        path = model.save(claim.output, overwrite=overwrite, report=True)
    except KeyboardInterrupt:
        claim.release(keep_checkpoints=(checkpoints / "last.safetensors").exists())
        _echo(f"interrupted; continue with the same command plus --resume (checkpoint in {checkpoints})")
        raise typer.Exit(130) from None
    except BaseException:
        claim.release(keep_checkpoints=(checkpoints / "last.safetensors").exists())
        raise
    claim.release(keep_checkpoints=False)
    report_path = path / "report.html"
    report = model.info["data_report"]
    if report.get("skipped_lines"):
        _echo(f"skipped {len(report['skipped_lines'])} malformed row(s) at line(s) {report['skipped_lines'][:10]}")
    for file, n in report.get("missing_target_rows_dropped", {}).items():
        _echo(f"dropped {n} row(s) with a missing '{model.config.target.column}' from the {file} file")
    if report.get("non_finite_as_missing"):
        counts = ", ".join(f"{col} ({n})" for col, n in report["non_finite_as_missing"].items())
        _echo(f"read non-finite or out-of-range numbers as missing (data.non_finite: missing): {counts}")
    if report.get("non_numeric_as_missing"):
        counts = ", ".join(f"{col} ({n})" for col, n in report["non_numeric_as_missing"].items())
        _echo(f"read text in number columns as missing: {counts}")
    dup = report.get("split", {}).get("duplicate_rows")
    if dup:
        how = {"group": "each kept within a single split", "drop": "dropped (first copy kept)",
               "keep": "kept as independent rows"}[report["split"]["duplicates"]]
        _echo(f"{dup} exact duplicate row(s) found: {how} (split.duplicates)")
    t = model.info["training"]
    if "epochs_run" in t:  # a network
        done = f"trained {t['epochs_run']} epochs in {t['seconds']:.1f}s ({t['stop_reason']}); best epoch {t['best_epoch'] + 1}"
    else:
        done = f"trained {t.get('learner', 'the model')} in {t['seconds']:.1f}s ({t.get('stop_reason', 'done')})"
    _echo(f"{done}; data preparation {report['prepare_seconds']:.2f}s (cache {report['cache']})")
    _print_leaderboard(model.info.get("leaderboard") or model.info.get("training", {}).get("leaderboard"))
    _print_metrics(model.metrics)
    typer.echo(f"model saved to {path}")
    typer.echo(f"metrics: {path / 'metrics.json'}")
    typer.echo(f"report: {report_path}")
    if model.run_id:
        typer.echo(f"run: {model.run_id} ({tracked_in.url})")
    if register:
        version = tracked_in.register(register, run=model.run_id)
        typer.echo(f"registered {register}:{version['version']}")


@app.command()
def evaluate(
    model: ModelArg,
    data: DataOpt,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the metrics as JSON here.")] = None,
    report: Annotated[Path | None, typer.Option(help="HTML report to write (default: MODEL/report-<data name>.html).")] = None,
    coerce: CoerceOpt = False,
    store: StoreOpt = None,
) -> None:
    """Score a saved model on labelled data and write an HTML report of it."""
    from loopml.evaluate.report import model_report

    if output:
        _check_output_file(output, (data,))
    m, name, folder = _open_model(model, store)
    evaluation = m.evaluation_of(data, data.stem, coerce=coerce)
    _note_coerced(m.last_coerced)
    _print_metrics({data.stem: evaluation["metrics"]})
    if output:
        _atomic_write(output, json.dumps(evaluation["metrics"], indent=2))
        typer.echo(f"metrics written to {output}")
    path = model_report(m, name, evaluation).write(report or folder / f"report-{data.stem}.html")
    typer.echo(f"report: {path}")


@app.command("report")
def report_command(
    model: ModelArg,
    compare: Annotated[str | None, typer.Option(help="A second model (directory or NAME@alias) to compare with.")] = None,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Labelled file to score (default: test split).")] = None,
    cv: Annotated[Path | None, typer.Option(help="A cv.json from `loopml cv`.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="HTML file (default: MODEL/report.html).")] = None,
    store: StoreOpt = None,
) -> None:
    """(Re)write a model's HTML report, optionally side by side with another model."""
    from loopml.evaluate.report import model_report

    m, name, folder = _open_model(model, store)
    evaluation = m.evaluation_of(data, data.stem) if data else None
    other = None
    if compare:
        other_model, other_name, _ = _open_model(compare, store)
        other = (other_name, other_model)
    cv_result = _read_json(cv) if cv else None
    path = model_report(m, name, evaluation, other, cv_result).write(output or folder / "report.html")
    typer.echo(f"report: {path}")


@app.command("cv")
def cross_validate(
    data: DataOpt,
    target: TargetOpt = None,
    config: ConfigOpt = None,
    folds: Annotated[int, typer.Option(help="Number of folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for the fold assignment.")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for cv.json and cv-report.html.")] = Path("cv"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """K-fold cross-validation (stratified): per-fold metrics and mean ± std, as JSON and HTML."""
    _require_inputs(data=data, config=config)
    from loopml.cv import cross_validate as run_cv
    from loopml.evaluate.report import Report, cv_section

    result = run_cv(config, data, folds=folds, seed=seed, progress=not quiet, target=target)
    output.mkdir(parents=True, exist_ok=True)
    _atomic_write(output / "cv.json", json.dumps(result, indent=2))
    report = Report(f"Cross-validation: {data.name}, target '{result['target']}'")
    cv_section(report, result)
    report.write(output / "cv-report.html")
    _print_metrics({"mean": result["mean"], "std": result["std"]})
    typer.echo(f"cross-validation: {output / 'cv.json'}, report: {output / 'cv-report.html'}")


@app.command()
def explain(
    model: ModelArg,
    data: DataOpt,
    rows: Annotated[str, typer.Option(help="Comma-separated row numbers (0-based) to explain.")] = "0,1,2,3,4",
    repeats: Annotated[int, typer.Option(help="Shuffles per feature for permutation importance.")] = 5,
    steps: Annotated[int, typer.Option(help="Integrated-gradients steps.")] = 32,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="HTML file (default: MODEL/explain.html).")] = None,
    store: StoreOpt = None,
) -> None:
    """Permutation importance on labelled data and integrated-gradients attributions for chosen rows."""
    from loopml.evaluate.report import Report, explanation_section, importance_section

    try:
        chosen = [int(r) for r in rows.split(",") if r.strip()]
    except ValueError:
        raise _user_error(f"--rows must be comma-separated row numbers, got {rows!r}") from None
    from loopml.data.read import read_table

    m, name, folder = _open_model(model, store)
    frame = read_table(data, m.config.data)
    explanations = m.explain(frame, chosen, n_steps=steps)
    report = Report(f"{name}: explanations on {data.name}")
    importance = None
    target = m.preprocessor.target.column
    if target in frame.columns and frame[target].notna().any():
        importance = m.feature_importance(frame, repeats=repeats)
        importance_section(report, importance, data.name)
    explanation_section(report, explanations)
    path = report.write(output or folder / "explain.html")
    _atomic_write(path.with_suffix(".json"), json.dumps({"importance": importance, "rows": explanations}))
    if importance and importance.get("unavailable"):
        typer.echo(f"feature importance not computed: {importance['unavailable']}")
    elif importance:
        top = ", ".join(f"{f['feature']} ({f['mean']:.4f})" for f in importance["features"][:5])
        typer.echo(f"top features by {importance['metric']} drop: {top}")
    typer.echo(f"explanations: {path} and {path.with_suffix('.json')}")


@app.command()
def serve(
    model: ModelArg,
    host: Annotated[str, typer.Option(help="Address to bind (non-loopback needs --admin-token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes, each with its own batcher.")] = 1,
    backend: Annotated[str, typer.Option(
        help="torch, onnx or native (a learner's own predictor); a model that is not a network runs native.")] = "torch",
    threads: Annotated[int | None, typer.Option(help="Inference threads per worker.")] = None,
    device: Annotated[str, typer.Option(
        help="Where the torch backend runs the network: cpu, cuda, cuda:N, mps or auto (CUDA when available).")] = "cpu",
    max_batch_size: Annotated[int, typer.Option(help="Rows per inference batch at most.")] = 64,
    max_wait_ms: Annotated[float, typer.Option(help="Longest wait for a batch to fill.")] = 2.0,
    max_queue: Annotated[int, typer.Option(help="Rows queued before answering 503.")] = 4096,
    monitor_interval: Annotated[float, typer.Option(help="Seconds between drift checks on /metrics (0 = off).")] = 60.0,
    api_key: Annotated[list[str] | None, typer.Option(
        envvar="LOOPML_API_KEYS", help="Accepted API key for predict/feedback (repeatable; or space-separated in "
                                       "$LOOPML_API_KEYS).")] = None,
    admin_token: Annotated[str | None, typer.Option(envvar="LOOPML_ADMIN_TOKEN", help="Token for admin endpoints.")] = None,
    media_root: MediaRootOpt = None,
    log_durability: Annotated[str, typer.Option(
        help="fsync: predictions are fsync'd to a local spool before the answer (survive kill -9 and power loss); "
             "spool: written there, no fsync (survive kill -9); none: in memory until the store has them.")] = "fsync",
    spool_dir: Annotated[Path | None, typer.Option(
        help="Folder of the prediction spool (default: next to a SQLite store, else .loopml/spool).")] = None,
    log_retention: Annotated[str | None, typer.Option(
        help="Delete this model's logged predictions older than an age (30d, 12h, 45m) or beyond a row count "
             "(100000). Feedback keeps its own copy of its prediction.")] = None,
    log_retention_interval: Annotated[float, typer.Option(help="Seconds between retention passes.")] = 300.0,
    loop_policy: Annotated[Path | None, typer.Option(
        help="Run the unattended loop (`loopml loop`) for NAME@alias beside the server, as its own process, "
             "with this policy; stopped when the server stops.")] = None,
    ui: Annotated[bool, typer.Option("--ui", help="Also serve the dashboard (`loopml ui`) at /ui; "
                                                  "read-only without --admin-token.")] = False,
    store: StoreOpt = None, artifacts: ArtifactsOpt = None,
) -> None:
    """Serve a model over HTTP: predict, feedback, OpenAPI docs at /docs, Prometheus /metrics.

    With NAME@alias the server follows the alias: promote or rollback, and it swaps versions live.
    """
    import uvicorn

    from loopml.serve.app import ServeSettings, create_app

    if not 1 <= port <= 65535:
        raise _user_error(f"--port {port} is not a port (1 to 65535)")
    for option, value in (("--workers", workers), ("--max-batch-size", max_batch_size), ("--max-queue", max_queue),
                          ("--threads", 1 if threads is None else threads)):
        if value < 1:
            raise _user_error(f"{option} must be at least 1 (got {value})")
    if max_wait_ms < 0 or monitor_interval < 0:
        raise _user_error("--max-wait-ms and --monitor-interval cannot be negative")
    from loopml.train.device import resolve_device

    resolve_device(device)  # cuda asked on a machine without it: one line now, not in every worker
    check_bind(host, port, admin_token)
    _check_port_free(host, port)
    from loopml.errors import did_you_mean
    from loopml.serve.predlog import DURABILITY, parse_retention

    if log_durability not in DURABILITY:
        raise _user_error(f"--log-durability {log_durability!r} is not one of {', '.join(DURABILITY)}"
                          f"{did_you_mean(log_durability, DURABILITY)}")
    try:
        if log_retention is not None:
            parse_retention(log_retention)
    except ValueError as e:
        raise _user_error(str(e)) from None
    if log_retention_interval <= 0:
        raise _user_error("--log-retention-interval must be more than 0 seconds")
    settings = ServeSettings(model=model, store=store, artifacts=artifacts, backend=backend, threads=threads, device=device,
                             max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             api_keys=api_key or [], admin_token=admin_token, media_root=media_root,
                             monitor_interval_s=monitor_interval, log_durability=log_durability,
                             spool_dir=str(spool_dir) if spool_dir else None, log_retention=log_retention,
                             log_retention_interval_s=log_retention_interval, ui=ui)
    if media_root and not Path(media_root).expanduser().is_dir():
        raise _user_error(f"--media-root is not a folder: {media_root}")
    from loopml.loop.worker_cli import check_loop_policy, serving_with_loop

    if loop_policy is not None:
        check_loop_policy(model, loop_policy)
    if workers > 1:
        _check_loadable(settings)  # a worker that cannot load its model is respawned by uvicorn, forever
        _echo(f"serving {model} on http://{host}:{port} (docs at /docs{', dashboard at /ui' if ui else ''})")
        from loopml.serve.metrics import multiprocess_dir

        os.environ["LOOPML_SERVE"] = settings.model_dump_json()
        with multiprocess_dir(), serving_with_loop(model, loop_policy, store, artifacts, media_root):  # /metrics: all
            uvicorn.run("loopml.serve.app:create_app_from_env", factory=True, host=host, port=port, workers=workers,
                        log_level="warning", timeout_graceful_shutdown=30,
                        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S)
    else:
        application = create_app(settings)  # a model that cannot be served is its one error line, before "serving"
        _echo(f"serving {model} on http://{host}:{port} (docs at /docs{', dashboard at /ui' if ui else ''})")
        with serving_with_loop(model, loop_policy, store, artifacts, media_root):  # the worker lives as the server
            uvicorn.run(application, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


#: how long uvicorn waits for a worker's answer to its health ping before killing and respawning it. Its default (5 s)
#: is shorter than a worker takes to import torch and load a model on a busy machine: every worker was killed
#: mid-start and respawned, forever, and the port never answered
WORKER_HEALTHCHECK_S = 120


def _check_loadable(settings) -> None:
    """The model each worker will load, loaded once here: its error is one line before any worker starts."""
    import loopml
    from loopml.registry import Store
    from loopml.registry.store import REF

    if REF.match(settings.model) and not Path(settings.model).exists():
        loopml.load(Store(settings.store, settings.artifacts).resolve(settings.model)["path"])
    else:
        loopml.load(settings.model)


def check_bind(host: str, port: int, admin_token: str | None) -> bool:
    """Loopback only, unless an admin token is set (``serve`` and ``ui``); a bad port or host is one line.
    Whether every address ``host`` names is a loopback one."""
    import ipaddress
    import socket

    if not 1 <= port <= 65535:
        raise _user_error(f"--port {port} is not a port (1 to 65535)")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port)}
    except socket.gaierror:
        raise _user_error(f"cannot resolve --host {host!r}") from None
    loopback = all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
    if not loopback and not admin_token:
        raise _user_error(f"refusing to bind {host} (not loopback) without --admin-token (or LOOPML_ADMIN_TOKEN)")
    return loopback


def _check_port_free(host: str, port: int) -> None:
    """A port another process listens on is the user's problem (one line, exit 2), not uvicorn's exit 3."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as e:
            raise _user_error(f"cannot listen on {host}:{port}: "
                              f"{'the port is in use' if e.errno == errno.EADDRINUSE else e.strerror}") from None


def _config_sections(config: Path) -> dict:
    from loopml.config import read_yaml

    return read_yaml(config, "config", "target, features, training, ...")


def _open_model(ref: str, store: str | None):
    """(model, display name, folder for outputs) from a model directory or NAME@alias / NAME:version.

    Outputs for a registered version go under ./reports/: its artifact is never written to.
    """
    import loopml

    if Path(ref).is_dir():
        return loopml.load(ref), Path(ref).resolve().name, Path(ref)
    m = loopml.load(ref, store=store)
    reg = m.info["registry"]
    return m, f"{reg['name']}:{reg['version']}", Path("reports") / f"{reg['name']}-v{reg['version']}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _user_error(f"cannot read {path}: {e}") from None
    except RecursionError:  # json recurses once per level of nesting
        raise _user_error(f"cannot read {path}: it nests too deeply") from None


@app.command()
def predict(
    model: ModelArg,
    data: DataOpt,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help=".csv, .tsv, .jsonl or .parquet (default: CSV on stdout).")
    ] = None,
    include_inputs: Annotated[bool, typer.Option(help="Copy the input columns into the output.")] = False,
    coerce: CoerceOpt = False,
    store: StoreOpt = None,
) -> None:
    """Predict labels (and class probabilities) for every row of a file."""
    from loopml.data.read import read_table

    if output is not None:
        _check_output_file(output, (data,), (".csv", ".tsv", ".jsonl", ".parquet"))
    m = _open_model(model, store)[0]
    frame = read_table(data, m.config.data)
    out = m.predictions(frame, coerce=coerce)
    _note_coerced(m.last_coerced)
    if include_inputs:
        clash = [c for c in out.columns if c in frame.columns]
        if clash:
            raise _user_error(f"--include-inputs: input column(s) {', '.join(clash)} have the names of output columns; "
                              "rename them or drop --include-inputs")
        out = frame.reset_index(drop=True).join(out)
    if output is None:
        out.to_csv(sys.stdout, index=False)
        return
    suffix = output.suffix.lower()
    writers = {".csv": lambda p: out.to_csv(p, index=False), ".tsv": lambda p: out.to_csv(p, index=False, sep="\t"),
               ".jsonl": lambda p: out.to_json(p, orient="records", lines=True),
               ".parquet": lambda p: out.to_parquet(p, index=False)}
    if suffix not in writers:
        raise _user_error(f"cannot write {output.name}: use .csv, .tsv, .jsonl or .parquet")
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        writers[suffix](tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    typer.echo(f"{len(out)} predictions written to {output}")


@app.command()
def describe(
    data: DataOpt,
    target: TargetOpt = None,
    config: ConfigOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the editable schema YAML here.")] = None,
    delimiter: DelimiterOpt = None, header: HeaderOpt = None, names: NamesOpt = None,
    encoding: EncodingOpt = None, skip_bad_rows: SkipBadOpt = False,
) -> None:
    """Show each column's inferred type with the evidence; write it as an editable config."""
    _require_inputs(data=data, config=config)
    from rich.console import Console
    from rich.table import Table

    from loopml.config import load_config
    from loopml.data.read import read_table
    from loopml.schema import build_schema

    cfg = load_config(config, target=target, data=_data_overrides(delimiter, header, names, encoding, skip_bad_rows))
    df = read_table(data, cfg.data)
    schema = build_schema(df, cfg)
    table = Table(title=f"{data.name}: {len(df)} rows, target '{schema.target}' ({schema.target_kind})")
    for col in ("column", "type", "why", "unique", "missing %", "examples"):
        table.add_column(col)
    for c in schema.columns:
        table.add_row(c.name, c.type, c.reason, str(c.stats["unique"]), str(c.stats["missing_pct"]),
                      ", ".join(c.stats["samples"]))
    Console(stderr=True).print(table)
    text = schema.to_yaml()
    read_with = cfg.data.model_dump(mode="json", exclude_defaults=True)
    if read_with:  # how the file was read (--no-header --names, delimiter, ...): train -c needs it too
        import yaml

        text += "# how to read the data file (as given to describe)\n"
        text += yaml.safe_dump({"data": read_with}, sort_keys=False, allow_unicode=True)
    if output:
        _atomic_write(output, text)
        typer.echo(f"schema written to {output}; edit it and pass it back with --config")
    else:
        typer.echo(text)


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON Schema here.")] = None,
) -> None:
    """Print the config's JSON Schema (for editors and validation)."""
    from loopml.config import json_schema

    text = json.dumps(json_schema(), indent=2)
    if output:
        _atomic_write(output, text)
        typer.echo(f"JSON Schema written to {output}")
    else:
        typer.echo(text)


def _note_coerced(counts: dict[str, int]) -> None:
    if counts:
        from loopml.data.validate import describe_coerced

        _echo(f"note: {describe_coerced(counts)} (--coerce)")


def _automl_sections(time_budget: float | None, preset: str | None) -> dict:
    from loopml.learners.automl import automl_sections

    return automl_sections(time_budget, preset)


def _print_leaderboard(rows: list[dict] | None) -> None:
    """AutoML's leaderboard, best first: every model it fitted, with score, fit time and predict time per row."""
    if not rows:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="leaderboard (validation)")
    for name in ("model", "stage", rows[0].get("metric", "score"), "accuracy", "fit s", "predict µs/row", ""):
        table.add_column(name, justify="left" if name in ("model", "stage") else "right")
    for r in rows:
        acc = r.get("accuracy")
        table.add_row(r["name"], str(r.get("stage", "")).split(" (")[0], f"{r['score']:.4f}",
                      "" if acc is None else f"{acc:.4f}", f"{r.get('fit_seconds', 0):.1f}",
                      f"{1e6 * (r.get('predict_seconds_per_row') or 0):.1f}", "chosen" if r.get("chosen") else "")
    Console(stderr=True).print(table)


def _print_metrics(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = ("accuracy", "balanced_accuracy", "f1_macro", "f1", "roc_auc", "log_loss", "r2", "mae", "rmse")
    table = Table()
    table.add_column("split")
    shown = [k for k in keys if any(k in m for m in metrics.values())]
    for k in shown:
        table.add_column(k, justify="right")
    for split, m in metrics.items():
        if split != "privacy":
            table.add_row(split, *[f"{m[k]:.4f}" if k in m else "" for k in shown])
    Console(stderr=True).print(table)
    if "privacy" in metrics:  # DP-SGD's spend, as Opacus's accountant computed it
        p = metrics["privacy"]
        Console(stderr=True).print(f"differential privacy: ε = {p['epsilon']:.3f} spent at δ = {p['delta']:g}"
                                   + (f" (cumulative over the lineage: {p['cumulative_epsilon']:.3f})"
                                      if "cumulative_epsilon" in p and p["cumulative_epsilon"] != p["epsilon"] else ""))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_output_file(output: Path, inputs: tuple[Path, ...] = (), suffixes: tuple[str, ...] = ()) -> None:
    """Refuse an output file that cannot be written, before any work (and never over an input file)."""
    if suffixes and output.suffix.lower() not in suffixes:
        raise _user_error(f"cannot write {output.name}: use {', '.join(suffixes[:-1])} or {suffixes[-1]}")
    if output.is_dir():
        raise _user_error(f"output {output} is a directory: give a file name")
    if not output.parent.is_dir():
        raise _user_error(f"output folder {output.parent} does not exist")
    if any(output.exists() and i.exists() and output.samefile(i) for i in inputs):
        raise _user_error(f"output {output} is the input file: choose another name")


def _require_inputs(**paths: Path | None) -> None:
    """A missing input file is reported before the seconds of imports that training needs."""
    for what, path in paths.items():
        if path is None or "://" in str(path) or path.exists():
            continue
        raise _user_error(f"config file not found: {path}" if what == "config" else f"file not found: {path}")


def _user_error(message: str) -> Exception:
    from loopml.errors import LoopmlError

    return LoopmlError(message)


def _optional_value(args: list[str], option: str, default: str) -> list[str]:
    """``option`` given without a value (last, or before another option) gets ``default``: click has no
    optional option values."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == option and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append(default)
    return out


def main(argv: list[str] | None = None) -> int:
    from loopml.errors import LoopmlError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # without standalone mode click returns a raised typer.Exit's code instead of exiting with it
        code = app(args=_optional_value(args, "--ray", "local"), standalone_mode=False)
        if isinstance(code, int) and code:
            return code
    except LoopmlError as e:
        _echo(f"error: {e}")
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        _echo("aborted")
        return 130
    except typer.TyperException as e:  # usage errors: unknown option, missing argument, bad value
        e.show()
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        _echo("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001  the last line of defence: a bug, reported without a traceback
        if os.environ.get("LOOPML_DEBUG"):
            traceback.print_exc()
        _echo(f"internal error: {type(e).__name__}: {e} (set LOOPML_DEBUG=1 for the traceback)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
