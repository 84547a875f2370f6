"""``loopml federate --data a.csv --data b.csv ... --rounds R [-o DIR] [--register NAME]``.

Thin: checks the arguments before reading anything, makes one client per ``--data`` file (or, with
``--partition-by COLUMN --clients N``, simulated clients from one table), runs ``federate`` in this
process or on Ray (``--ray``), saves the bundle with its report and records the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loopml.registry.cli import ArtifactsOpt, StoreOpt


def federate_command(
    data: Annotated[list[Path], typer.Option(
        "--data", "-d", help="One client's table; repeat for each client (or give one with --partition-by).")],
    rounds: Annotated[int, typer.Option(help="Federated rounds (local training, then averaging).")] = 10,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see `loopml schema`).")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Column to predict.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Model directory to write (default: a new models/<target>-federated-<time>-<id>).")]
    = None,
    test: Annotated[Path | None, typer.Option(
        help="A labelled test file the server holds; without it each client holds out split.test of its rows and "
             "reports its metrics (row-weighted mean).")] = None,
    algorithm: Annotated[str, typer.Option(help="fedavg or fedprox.")] = "fedavg",
    mu: Annotated[float | None, typer.Option(
        help="FedProx: weight of the proximal term mu/2 ||w - w_global||^2 (default 0.01).")] = None,
    local_epochs: Annotated[int, typer.Option("--local-epochs", help="Epochs each client trains per round.")] = 1,
    partition_by: Annotated[str | None, typer.Option(
        "--partition-by", help="Simulate clients from one --data table: each value of this column goes to one client "
                               "(non-IID).")] = None,
    clients: Annotated[int, typer.Option(help="With --partition-by: how many clients.")] = 5,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="[ADDRESS]", help="Run each client as a Ray actor: a cluster's address, or nothing for a "
                                           "local cluster started for this command.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for splitting and training.")] = None,
    register: Annotated[str | None, typer.Option(help="Register the model as the next version of this name.")] = None,
    experiment: Annotated[str | None, typer.Option(help="Experiment to record the run under (default: the target).")]
    = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Record the run in the store.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model directory.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-round lines.")] = False,
    delimiter: Annotated[str | None, typer.Option(help="Field delimiter (default: by extension).")] = None,
    header: Annotated[bool | None, typer.Option("--header/--no-header", help="Whether the first row names the columns.")]
    = None,
    names: Annotated[str | None, typer.Option(help="Comma-separated column names (files without a header).")] = None,
    store: StoreOpt = None, artifacts: ArtifactsOpt = None,
) -> None:
    """Train one network over clients whose rows never leave them (FedAvg / FedProx); save it as an ordinary model."""
    from loopml.config import load_config
    from loopml.errors import LoopmlError
    from loopml.federate.fedavg import Settings, check_config, check_settings

    if mu is not None and algorithm != "fedprox":
        raise LoopmlError("--mu is for --algorithm fedprox")
    mu = 0.01 if mu is None else mu
    settings = Settings(rounds, algorithm, mu, local_epochs, progress=None if quiet else typer.echo)
    check_settings(settings)
    for path in [*data, *([test] if test else []), *([config] if config else [])]:
        if not path.exists():
            raise LoopmlError(f"{'config ' if path == config else ''}file not found: {path}")
    if partition_by is None and len(data) < 2:
        raise LoopmlError("federated training needs 2 or more clients: repeat --data, or give --partition-by COLUMN")
    if partition_by is not None and len(data) != 1:
        raise LoopmlError("--partition-by splits one --data table into clients; give exactly one --data")
    seen: dict[Path, Path] = {}
    for path in data:  # the same rows twice would be one client counted twice in every average
        if path.resolve() in seen:
            raise LoopmlError(f"--data {path} is given twice (as {seen[path.resolve()]}); give each client once")
        seen[path.resolve()] = path
    if test is not None and test.resolve() in seen:  # the clients would train on the rows it scores
        raise LoopmlError(f"--test {test} is also a client's --data ({seen[test.resolve()]}); hold out other rows")
    overrides = {k: v for k, v in {"delimiter": delimiter, "header": header,
                                   "names": [n.strip() for n in names.split(",")] if names else None}.items()
                 if v is not None}
    cfg = load_config(config, target=target, data=overrides or None,
                      **({"training": {"seed": seed}, "split": {"seed": seed}} if seed is not None else {}))
    check_config(cfg)
    if partition_by is not None and partition_by == cfg.target.column:
        raise LoopmlError(f"--partition-by names the target '{partition_by}': every client would hold one class; "
                          "partition by another column")
    if register:
        from loopml.registry.store import check_name

        check_name(register)
        if not track:
            raise LoopmlError("--register needs the run to be tracked (drop --no-track)")
    test_frame = _read_test(cfg, test) if test is not None else None
    specs = _client_specs(cfg, data, partition_by, clients, test is not None)
    settings.extra = {"partition_by": partition_by} if partition_by else {}
    from loopml.train.workdir import claim_output

    claim = claim_output(output, f"{cfg.target.column}-federated", overwrite=overwrite)
    tracked, run = None, {}
    if track:
        from loopml.registry import Store

        tracked = Store(store, artifacts)
        params = {**cfg.model_dump(mode="json"), "federated": {
            "algorithm": algorithm, "rounds": rounds, "local_epochs": local_epochs, "clients": len(specs),
            "mu": mu if algorithm == "fedprox" else 0.0, "partition_by": partition_by, "ray": ray}}
        # the run starts once every client's data passed its checks: input errors leave no run behind
        settings.on_start = lambda: run.setdefault("id", tracked.start_run(experiment or cfg.target.column, params))
        settings.on_round = lambda logs: tracked.log_metrics(run["id"], logs["epoch"], logs)
    try:
        try:
            model = _run(cfg, specs, settings, test_frame, ray)
        except BaseException as e:
            if run:
                tracked.end_run(run["id"], "killed" if isinstance(e, KeyboardInterrupt) else "failed",
                                error=f"{type(e).__name__}: {e}"[:2000])
            raise
        run_id = run.get("id")
        if run_id:
            model.run_id, model._store = run_id, tracked
            tracked.end_run(run_id, "finished", model.metrics_summary(), data_fingerprint=model.info["data_fingerprint"])
        path = model.save(claim.output, overwrite=overwrite, report=True)
    finally:
        claim.release(keep_checkpoints=False)
    from loopml.cli import _print_metrics

    _print_metrics(model.metrics)
    typer.echo(f"model saved to {path}")
    typer.echo(f"report: {path / 'report.html'}")
    if run_id:
        typer.echo(f"run: {run_id} ({tracked.url})")
    if register:
        version = tracked.register(register, run=run_id)
        typer.echo(f"registered {register}:{version['version']}")


def _client_specs(cfg, data: list[Path], partition_by: str | None, clients: int, has_test: bool) -> list[tuple]:
    """(name, source, config, has_test) per client: a file each, or the parts of one table."""
    config = cfg.model_dump(mode="json")
    if partition_by is None:
        names = [p.name for p in data]
        if len(set(names)) < len(names):
            names = [str(p) for p in data]
        return [(name, str(path), config, has_test) for name, path in zip(names, data, strict=True)]
    from loopml.data.read import read_table
    from loopml.federate.clients import partition

    parts = partition(read_table(data[0], cfg.data), partition_by, clients)
    return [(name, frame, config, has_test) for name, frame in parts]


def _read_test(cfg, test: Path):
    """The server's own test table, checked for the target before any client is asked."""
    from loopml.data.read import read_table
    from loopml.errors import LoopmlError, did_you_mean

    frame = read_table(test, cfg.data)
    column = cfg.target.column
    if column not in frame.columns:
        raise LoopmlError(f"test file {test.name} has no target column '{column}'{did_you_mean(column, frame.columns)}")
    return frame


def _run(cfg, specs: list[tuple], settings, test, ray: str | None):
    from loopml.federate.clients import Channel, Client
    from loopml.federate.fedavg import LocalPool, federate

    if ray is None:
        pool = LocalPool([Client(*spec) for spec in specs], Channel())
        return federate(cfg, pool, settings, test=test)
    from loopml.federate.ray_pool import RayPool
    from loopml.train.ray_train import ray_cluster

    with ray_cluster(ray):
        return federate(cfg, RayPool(specs, Channel()), settings, test=test)
