"""``loopml package``: a model and the files that deploy it (image, compose, Kubernetes, CI), written atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from loopml.errors import LoopmlError
from loopml.files import replace_folder

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_BASE_IMAGE = "python:3.11-slim"
#: the registry of the compose file (pinned by tag, as the base image is)
POSTGRES_IMAGE = "postgres:16.4-bookworm"
#: the server's drain: uvicorn's timeout_graceful_shutdown (30 s) then the batcher's close (30 s) in `loopml serve`
DRAIN_SECONDS = 60
PRESTOP_SECONDS = 5
#: the container's user: not root, and a fixed id that volumes and runAsUser can name
UID = 10001
#: a Kubernetes object name (DNS-1123 label): what --name must be
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")
MEMORY = re.compile(r"^(\d+)(Mi|Gi)$")
#: what each template becomes inside the output folder
OUTPUTS = {
    "Dockerfile.j2": "Dockerfile", "dockerignore.j2": ".dockerignore", "docker-compose.yaml.j2": "docker-compose.yaml",
    "env.example.j2": ".env.example", "policy.yaml.j2": "policy.yaml", "README.md.j2": "README.md",
    "workflow.yaml.j2": ".github/workflows/loopml.yaml",
    **{f"k8s/{n}.yaml.j2": f"k8s/{n}.yaml" for n in ("configmap", "artifacts-pvc", "deployment", "service", "hpa",
                                                     "pdb", "loop-worker", "kustomization")},
}
#: the top-level entries a package folder holds: --force replaces a folder with nothing else in it
PACKAGE_ENTRIES = {target.split("/")[0] for target in OUTPUTS.values()} | {"model", "wheels", "requirements.txt"}
#: an image reference (name[:tag][@digest]): it is written unquoted into YAML and the Dockerfile
IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")


@dataclass
class PackageOptions:
    model_ref: str
    output: Path
    from_store: bool = False
    registry_url: str | None = None
    name: str | None = None
    force: bool = False
    base_image: str = DEFAULT_BASE_IMAGE
    image: str | None = None
    cpus: int = 2
    memory: str = "2Gi"
    replicas: int = 2
    max_replicas: int = 6
    port: int = 8000
    store: str | None = None
    artifacts: str | None = None
    wheel: bool | None = None  # None: loopml's own wheel when running from a source checkout
    notes: list[str] = field(default_factory=list)


@dataclass
class ResolvedModel:
    folder: Path
    name: str
    version: int | None
    target: str
    task: str


def package(options: PackageOptions) -> Path:
    """Write the deployment folder; every check happens before anything is written."""
    _check_options(options)
    resolved = resolve_model(options)
    name = options.name or k8s_name(resolved.name)
    output = options.output.expanduser()
    if output.is_symlink():  # replace the folder it points to; renaming the link itself would orphan it
        output = output.resolve()
    if output.exists() and not output.is_dir():
        raise LoopmlError(f"-o {output} is a file, not a folder")
    if output.is_dir() and any(output.iterdir()):
        if not options.force:
            raise LoopmlError(f"-o {output} exists and is not empty: choose another folder or pass --force to "
                              "replace it")
        foreign = sorted(entry.name for entry in output.iterdir() if entry.name not in PACKAGE_ENTRIES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise LoopmlError(f"--force replaces only a folder `loopml package` wrote; -o {output} also holds "
                              f"{shown}: move them away or choose another folder")
    if not output.parent.is_dir():
        raise LoopmlError(f"the folder {output.parent} (of -o {output}) does not exist")
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from loopml.deploy.pins import build_wheel, dependency_pins, requirements_text, source_checkout

    project = source_checkout() if options.wheel is not False else None
    if options.wheel and project is None:
        raise LoopmlError("--wheel needs loopml installed from a source checkout (pyproject.toml beside the package)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        (tmp / "wheels").mkdir()
        wheel_file = None
        if project is not None:
            wheel_file = build_wheel(project, tmp / "wheels").name
        else:
            (tmp / "wheels" / ".keep").write_text("loopml's wheel goes here when it is not on your index\n")
        (tmp / "requirements.txt").write_text(requirements_text(dependency_pins()), encoding="utf-8")
        if not options.from_store:
            copy_bundle(resolved.folder, tmp / "model")
        context = {**template_context(options, resolved, name), "wheel_file": wheel_file,
                   # a wheel by path: a same-named project on a public index can never stand in for it
                   "loopml_install": f"deploy/wheels/{wheel_file}" if wheel_file else f"loopml=={context_version()}"}
        environment = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True,
                                  trim_blocks=True, lstrip_blocks=True, autoescape=False)
        for template, target in OUTPUTS.items():
            path = tmp / target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(environment.get_template(template).render(**context), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would keep a build context from anyone but us
        replace_folder(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _check_options(options: PackageOptions) -> None:
    if options.name is not None and not K8S_NAME.match(options.name):
        raise LoopmlError(f"--name {options.name!r} is not usable as a Kubernetes name: lowercase letters, digits and "
                          f"'-', starting and ending with a letter or digit, at most 52 characters "
                          f"(e.g. {k8s_name(options.name)!r})")
    if not 1 <= options.cpus <= 64:
        raise LoopmlError(f"--cpus must be between 1 and 64 (got {options.cpus})")
    if not MEMORY.match(options.memory) or int(MEMORY.match(options.memory)[1]) == 0:
        raise LoopmlError(f"--memory must be a size like 512Mi or 2Gi (got {options.memory!r})")
    if not 1 <= options.replicas <= options.max_replicas:
        raise LoopmlError(f"--replicas must be at least 1 and at most --max-replicas ({options.max_replicas}), "
                          f"got {options.replicas}")
    if not 1 <= options.port <= 65535:
        raise LoopmlError(f"--port {options.port} is not a port (1 to 65535)")
    if options.image is not None and not IMAGE_REF.match(options.image):
        raise LoopmlError(f"--image {options.image!r} is not an image reference (e.g. registry.example/churn:v3)")
    if not IMAGE_REF.match(options.base_image) or options.base_image.endswith(":latest") \
            or ":" not in options.base_image.rsplit("/", 1)[-1] and "@" not in options.base_image:
        raise LoopmlError(f"--base-image {options.base_image!r} must name an image with a pinned tag (e.g. "
                          f"{DEFAULT_BASE_IMAGE})")
    if options.registry_url is not None:
        check_registry_url(options.registry_url)


def check_registry_url(url: str) -> None:
    """A SQLAlchemy URL whose password, if any, is a ``${VARIABLE}`` for compose to fill in, never the secret."""
    import sqlalchemy as sa

    if re.search(r"[\s\"'\\]", url):  # written unquoted into the compose file
        raise LoopmlError(f"--registry-url {url!r} holds a space, quote or backslash: percent-encode it (e.g. %20)")
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise LoopmlError(f"--registry-url {url!r} is not a database URL (e.g. "
                          "postgresql+psycopg://loopml:${REGISTRY_PASSWORD}@db.example:5432/loopml)") from None
    if parsed.get_backend_name() != "postgresql":
        raise LoopmlError(f"--registry-url must be a PostgreSQL URL (servers and the loop worker share it), not "
                          f"{parsed.get_backend_name()}")
    if parsed.password and not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[?-][^}]*)?\}", str(parsed.password)):
        raise LoopmlError("--registry-url holds a password: write it as ${VARIABLE} (e.g. "
                          "postgresql+psycopg://loopml:${REGISTRY_PASSWORD}@db/loopml) so no secret is written")


def resolve_model(options: PackageOptions) -> ResolvedModel:
    """The bundle a reference names (a model directory, NAME@alias, NAME:version), verified."""
    from loopml.bundle import read_bundle
    from loopml.registry.store import REF

    ref = options.model_ref
    path = Path(ref).expanduser()
    version = None
    if path.is_dir():
        folder, name = path, path.resolve().name
        if options.from_store:
            raise LoopmlError(f"--from-store needs a registered model (NAME@alias or NAME:version), not the "
                              f"directory {ref}")
    elif REF.match(ref):
        from loopml.registry.cli import existing_store

        found = existing_store(options.store, options.artifacts).resolve(ref)
        folder, name, version = Path(found["path"]), found["name"], found["version"]
    else:
        raise LoopmlError(f"model {ref!r} is neither a model directory nor NAME@alias / NAME:version")
    bundle = read_bundle(folder)
    config = _yaml(bundle.documents.get("config.yaml", ""))
    target = (config.get("target") or {}).get("column") or "label"
    schema = json.loads(bundle.documents.get("schema.json", "{}") or "{}")
    task = str(schema.get("target_kind") or schema.get("task") or "")
    return ResolvedModel(folder, name, version, target, task)


def _yaml(text: str) -> dict:
    import yaml

    loaded = yaml.safe_load(text) if text else None
    return loaded if isinstance(loaded, dict) else {}


def copy_bundle(folder: Path, into: Path) -> None:
    """The manifest and the files it lists (hash-checked on load), nothing else: no reports, no caches."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    into.mkdir()
    shutil.copy2(folder / "manifest.json", into / "manifest.json")
    for name in manifest["files"]:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / name, into / name)


def k8s_name(text: str) -> str:
    """``text`` as a DNS-1123 label (lowercase, '-', at most 52 characters so suffixes still fit)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:52].strip("-")
    return cleaned or "model"


def context_version() -> str:
    from loopml import __version__

    return __version__


def template_context(options: PackageOptions, model: ResolvedModel, name: str) -> dict:
    from jinja2 import Environment, StrictUndefined

    from loopml import __version__

    registered = model.version is not None
    tag = f"v{model.version}" if registered else __version__
    image = options.image or f"{name}:{tag}"
    image_name, _, image_tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    threads = str(options.cpus)
    common = ["--host", "0.0.0.0", "--port", str(options.port), "--threads", threads,
              "--spool-dir", "/var/lib/loopml/spool"]
    served = options.model_ref if options.from_store else "/app/models/" + name  # NAME:3 stays pinned, NAME@alias follows
    regression = model.task in ("regression", "number")
    store_url = options.registry_url or "postgresql+psycopg://loopml:${POSTGRES_PASSWORD}@registry:5432/loopml"
    policy = (TEMPLATES / "policy.yaml.j2").read_text(encoding="utf-8")
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "server",
              "app.kubernetes.io/part-of": "loopml"}
    return {
        "loopml_version": __version__, "model_ref": options.model_ref, "name": name, "base_image": options.base_image,
        "image": image, "image_name": image_name, "image_tag": image_tag, "uid": UID, "port": options.port,
        "threads": threads, "cpus": options.cpus, "memory": options.memory,
        "memory_compose": options.memory.replace("Gi", "G").replace("Mi", "M"),
        "replicas": options.replicas, "max_replicas": options.max_replicas, "bake_model": not options.from_store,
        "serve_args": [served, *common], "k8s_serve_args": [served, *common],
        # compose serves from its registry: the seed service registers a baked bundle first, as NAME@production
        "compose_serve_args": [served if options.from_store else f"{name}@production", *common],
        "registry_url": options.registry_url, "store_url": store_url, "postgres_image": POSTGRES_IMAGE,
        "drain_seconds": DRAIN_SECONDS, "prestop_seconds": PRESTOP_SECONDS,
        "grace_seconds": DRAIN_SECONDS + PRESTOP_SECONDS + 10,
        "target": model.target, "gate_metric": "r2" if regression else "accuracy",
        "policy": Environment(undefined=StrictUndefined).from_string(policy).render(
            name=name, gate_metric="r2" if regression else "accuracy").rstrip("\n"),
        "labels": labels, "selector": {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/component")},
        "worker_labels": {**labels, "app.kubernetes.io/component": "loop-worker"},
        "worker_selector": {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "loop-worker"},
    }
