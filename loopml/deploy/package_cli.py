"""``loopml package MODEL -o deploy/``: the command over ``loopml.deploy.package``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loopml.deploy.package import DEFAULT_BASE_IMAGE, PackageOptions, package
from loopml.registry.cli import ArtifactsOpt, StoreOpt


def package_command(
    model: Annotated[str, typer.Argument(help="Model directory, or NAME@alias / NAME:version from the registry.",
                                         metavar="MODEL")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (refused when not empty, "
                                                                "unless --force).")],
    from_store: Annotated[bool, typer.Option(
        "--from-store", help="Leave the bundle out of the image: the server loads MODEL from the registry and "
                             "artifact root at start-up (and follows its alias).")] = False,
    registry_url: Annotated[str | None, typer.Option(
        help="PostgreSQL URL of an existing registry for compose, instead of the PostgreSQL service it starts; "
             "a password only as ${VARIABLE}.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Name of the deployment (Kubernetes objects, compose project, registered model; default: the "
             "model's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty output folder.")] = False,
    base_image: Annotated[str, typer.Option(
        help="Base image of the Dockerfile, pinned by tag (e.g. a local one built with loopml/deploy/local_base.sh)."
    )] = DEFAULT_BASE_IMAGE,
    image: Annotated[str | None, typer.Option(help="Image name:tag the manifests run (default: NAME:vVERSION).")] = None,
    cpus: Annotated[int, typer.Option(help="CPU limit per server; also its --threads and OMP_NUM_THREADS.")] = 2,
    memory: Annotated[str, typer.Option(help="Memory request and limit per server (e.g. 2Gi).")] = "2Gi",
    replicas: Annotated[int, typer.Option(help="Server replicas at least (the autoscaler's minimum).")] = 2,
    max_replicas: Annotated[int, typer.Option(help="Server replicas at most (the autoscaler's maximum).")] = 6,
    port: Annotated[int, typer.Option(help="Port the server listens on in the container.")] = 8000,
    wheel: Annotated[bool | None, typer.Option(
        "--wheel/--no-wheel", help="Put loopml's own wheel in wheels/ (default: when running from a source "
                                   "checkout).")] = None,
    store: StoreOpt = None, artifacts: ArtifactsOpt = None,
) -> None:
    """Write what deploys MODEL: Dockerfile, docker-compose.yaml (with PostgreSQL and the loop worker), Kubernetes
    manifests and a GitHub Actions workflow that gates a retrained model before promoting it."""
    options = PackageOptions(model_ref=model, output=output, from_store=from_store, registry_url=registry_url,
                             name=name, force=force, base_image=base_image, image=image, cpus=cpus, memory=memory,
                             replicas=replicas, max_replicas=max_replicas, port=port, store=store,
                             artifacts=artifacts, wheel=wheel)
    written = package(options)
    typer.echo(f"deployment for {model} written to {written}: Dockerfile, docker-compose.yaml, k8s/, "
               f".github/workflows/loopml.yaml (see {written / 'README.md'})")
