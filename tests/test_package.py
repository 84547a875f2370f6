"""``loopml package``: the generated Dockerfile, compose file, Kubernetes manifests and CI workflow validate offline
against their schemas and linters; bad input is one line and writes nothing; ``loopml gate`` and the seed."""

import json
import os
import shutil
import subprocess
import time
import urllib.request
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml

import loopml
from loopml.cli import main

K8S_FILES = ("configmap", "artifacts-pvc", "deployment", "service", "hpa", "pdb", "loop-worker")
HADOLINT = shutil.which("hadolint") or str(Path(os.sys.executable).with_name("hadolint"))


def _table(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    return pd.DataFrame({"x1": x1, "x2": x2, "color": rng.choice(["red", "blue"], size=n),
                         "label": np.where(x1 + x2 + shift > 0, "pos", "neg")})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    _table(300, 0).to_csv(root / "train.csv", index=False)
    _table(120, 1).to_csv(root / "test.csv", index=False)
    model = loopml.Model(target="label", learner={"type": "linear", "model": "logistic"})
    model.fit(root / "train.csv", progress=False, cache_dir=False, track=False)
    return model.save(root / "churn_model")


@pytest.fixture(scope="module")
def deploy(bundle, tmp_path_factory) -> Path:
    """The package of a model directory, with loopml's own wheel (built from this checkout)."""
    out = tmp_path_factory.mktemp("pkg") / "deploy"
    assert main(["package", str(bundle), "-o", str(out), "--cpus", "3", "--memory", "1536Mi"]) == 0
    return out


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_package_writes_every_file(deploy, bundle):
    names = {p.relative_to(deploy).as_posix() for p in deploy.rglob("*") if p.is_file()}
    assert {"Dockerfile", ".dockerignore", "docker-compose.yaml", ".env.example", "policy.yaml", "README.md",
            "requirements.txt", ".github/workflows/loopml.yaml", "k8s/kustomization.yaml"} <= names
    assert {f"k8s/{n}.yaml" for n in K8S_FILES} <= names
    wheels = list((deploy / "wheels").glob("loopml-*.whl"))
    assert len(wheels) == 1
    # the bundle as its manifest lists it, still verifiable: nothing else (reports) came along
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {p.relative_to(deploy / "model").as_posix() for p in (deploy / "model").rglob("*") if p.is_file()} \
        == {"manifest.json", *manifest["files"]}
    assert loopml.load(deploy / "model").predict(_table(5, 2)).shape[0] == 5
    requirements = (deploy / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    import torch

    assert f"torch=={torch.__version__}\n" in requirements
    assert all("==" in line for line in requirements.splitlines() if line and not line.startswith(("#", "--")))


def test_kubernetes_manifests_validate_offline(deploy):
    import kubernetes_validate

    kinds = []
    for name in K8S_FILES:
        for doc in _docs(deploy / "k8s" / f"{name}.yaml"):
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(["ConfigMap", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
                                    "HorizontalPodAutoscaler", "PodDisruptionBudget", "Deployment"])
    kustomization = yaml.safe_load((deploy / "k8s" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(f"{n}.yaml" for n in K8S_FILES)


def test_kubernetes_validation_rejects_a_broken_manifest(deploy):
    """The validation above can fail: a misspelt field is refused."""
    import kubernetes_validate

    deployment = _docs(deploy / "k8s" / "deployment.yaml")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_deployment_matches_threads_to_cpu_and_outlasts_the_drain(deploy):
    from loopml.deploy.package import DRAIN_SECONDS

    deployment = _docs(deploy / "k8s" / "deployment.yaml")[0]
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["resources"]["limits"] == {"cpu": "3", "memory": "1536Mi"}
    assert server["args"][server["args"].index("--threads") + 1] == "3"
    config = _docs(deploy / "k8s" / "configmap.yaml")[0]
    assert config["data"]["OMP_NUM_THREADS"] == "3"
    assert server["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    assert server["startupProbe"]["httpGet"]["path"] == "/ready"
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    prestop = int(server["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > prestop + DRAIN_SECONDS
    assert pod["securityContext"]["runAsNonRoot"] is True
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in server["env"]}
    assert set(secrets) == {"LOOPML_STORE", "LOOPML_ADMIN_TOKEN", "LOOPML_API_KEYS"}
    worker = _docs(deploy / "k8s" / "loop-worker.yaml")[0]["spec"]["template"]["spec"]
    assert worker["containers"][0]["command"][:3] == ["loopml", "loop", "churn-model"]
    assert worker["initContainers"][0]["command"][:3] == ["python", "-m", "loopml.deploy.seed"]


def test_compose_validates_against_the_compose_spec(deploy):
    # the compose-spec schema as check-jsonschema vendors it (Apache-2.0, from github.com/compose-spec/compose-spec)
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    compose = yaml.safe_load((deploy / "docker-compose.yaml").read_text())
    jsonschema.validate(compose, schema)
    services = compose["services"]
    assert set(services) == {"registry", "seed", "server", "loop"}
    assert services["registry"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert "registry-data:/var/lib/postgresql/data" in services["registry"]["volumes"]
    assert services["server"]["depends_on"]["registry"]["condition"] == "service_healthy"
    assert services["server"]["depends_on"]["seed"]["condition"] == "service_completed_successfully"
    assert services["loop"]["entrypoint"] == ["loopml", "loop"]
    assert services["server"]["environment"]["LOOPML_ADMIN_TOKEN"].startswith("${LOOPML_ADMIN_TOKEN:?")
    broken = {**compose, "services": {**services, "server": {**services["server"], "restart": 3}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def _hadolint(dockerfile: Path) -> list[dict]:
    result = subprocess.run([HADOLINT, "--no-fail", "--format", "json", str(dockerfile)], capture_output=True, text=True,
                            timeout=60)
    return json.loads(result.stdout or "[]")


def test_dockerfile_passes_hadolint_without_errors(deploy, tmp_path):
    findings = _hadolint(deploy / "Dockerfile")
    assert [f for f in findings if f["level"] == "error"] == [], findings
    broken = tmp_path / "Dockerfile"  # the linter does flag errors: a relative WORKDIR is DL3000
    broken.write_text((deploy / "Dockerfile").read_text().replace("WORKDIR /app", "WORKDIR app"))
    assert any(f["level"] == "error" and f["code"] == "DL3000" for f in _hadolint(broken))


def test_dockerfile_is_non_root_health_checked_and_secret_free(deploy):
    text = (deploy / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK") for line in lines) and "/ready" in text
    assert 'ENTRYPOINT ["loopml", "serve"]' in text
    assert "COPY --chown=10001:10001 model/ /app/models/churn-model/" in text
    assert "TOKEN=" not in text and "API_KEYS=" not in text
    assert (deploy / ".dockerignore").read_text().splitlines()[1] == "*"


def test_workflow_has_the_gated_jobs(deploy):
    text = (deploy / ".github" / "workflows" / "loopml.yaml").read_text()
    workflow = yaml.safe_load(text)
    workflow["on"] = workflow.pop(True)  # PyYAML reads the bare key `on` as YAML 1.1's true; GitHub reads YAML 1.2
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("github-workflows.json").read_text())
    jsonschema.validate(workflow, schema)
    jobs = workflow["jobs"]
    assert list(jobs) == ["train", "evaluate", "gate", "promote"]
    assert jobs["promote"]["needs"] == "gate" and jobs["promote"]["if"] == "needs.gate.outputs.passed == 'true'"
    gate_step = "\n".join(s.get("run", "") for s in jobs["gate"]["steps"])
    assert "loopml gate candidate --against \"$MODEL_NAME@production\"" in gate_step
    promote = "\n".join(s.get("run", "") for s in jobs["promote"]["steps"])
    assert "loopml models register candidate" in promote and "loopml models promote" in promote
    assert workflow["env"]["TARGET"] == "label"


def test_bad_input_is_one_line_and_writes_nothing(bundle, tmp_path, capsys):
    from loopml.registry import Store

    Store().register("churn", path=bundle)
    assert main(["package", "chrun@production", "-o", str(tmp_path / "a")]) == 2
    assert main(["package", str(tmp_path / "missing_dir"), "-o", str(tmp_path / "a")]) == 2
    assert not (tmp_path / "a").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["package", str(bundle), "-o", str(taken), "--no-wheel"]) == 2
    assert main(["package", str(bundle), "-o", str(tmp_path / "b"), "--name", "Bad_Name"]) == 2
    assert main(["package", str(bundle), "-o", str(tmp_path / "b"), "--from-store"]) == 2
    assert main(["package", str(bundle), "-o", str(tmp_path / "b"), "--base-image", "python:latest"]) == 2
    assert main(["package", str(bundle), "-o", str(tmp_path / "b"),
                 "--registry-url", "postgresql://loopml:hunter2@db/loopml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 7 and all(line.startswith("error: ") for line in err), err
    assert "no model named 'chrun' (did you mean 'churn'?)" in err[0] and "--force" in err[2]
    assert "'bad-name'" in err[3] and "hunter2" not in err[6]
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temp folder left behind
    # --force replaces an earlier package, never a folder holding anything else (`-o . --force`, the model itself)
    assert main(["package", str(bundle), "-o", str(taken), "--no-wheel", "--force"]) == 2
    assert main(["package", str(bundle), "-o", str(bundle), "--no-wheel", "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "keep.txt" in err[0] and "config.yaml" in err[1], err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"] and (bundle / "manifest.json").is_file()
    earlier = tmp_path / "earlier"
    assert main(["package", str(bundle), "-o", str(earlier), "--no-wheel"]) == 0
    (earlier / "Dockerfile").write_text("stale")
    assert main(["package", str(bundle), "-o", str(earlier), "--no-wheel", "--force"]) == 0
    assert (earlier / "Dockerfile").read_text() != "stale"


def test_symlinked_output_is_followed_and_injection_is_refused(bundle, tmp_path, capsys):
    real = tmp_path / "real"
    assert main(["package", str(bundle), "-o", str(real), "--no-wheel"]) == 0
    link = tmp_path / "link"
    link.symlink_to(real)
    assert main(["package", str(bundle), "-o", str(link), "--no-wheel", "--force"]) == 0
    assert link.is_symlink() and (real / "Dockerfile").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no .link.old-PID left behind
    capsys.readouterr()
    evil = 'evil:1\n        command: ["sh", "-c", "id"]'
    assert main(["package", str(bundle), "-o", str(tmp_path / "x"), "--no-wheel", "--image", evil]) == 2
    assert main(["package", str(bundle), "-o", str(tmp_path / "x"), "--no-wheel",
                 "--registry-url", "postgresql://loopml@db/x\n    evil: 1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--image" in err[0] and "--registry-url" in err[1], err
    assert not (tmp_path / "x").exists()


def test_from_store_leaves_the_bundle_out_and_follows_the_alias(bundle, tmp_path):
    from loopml.registry import Store

    store = Store()
    version = store.register("churn", path=bundle)["version"]
    store.promote("churn", version)
    out = tmp_path / "deploy"
    assert main(["package", "churn@production", "-o", str(out), "--from-store", "--no-wheel",
                 "--registry-url", "postgresql+psycopg://loopml:${REGISTRY_PASSWORD}@db.internal/loopml"]) == 0
    assert not (out / "model").exists()
    text = (out / "Dockerfile").read_text()
    assert 'CMD ["churn@production", "--host", "0.0.0.0"' in text and "COPY --chown" not in text
    compose = yaml.safe_load((out / "docker-compose.yaml").read_text())
    jsonschema.validate(compose, json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                                            .joinpath("compose-spec.json").read_text()))
    assert set(compose["services"]) == {"server", "loop"}  # an existing registry: no PostgreSQL, nothing to seed
    assert compose["services"]["server"]["environment"]["LOOPML_STORE"].endswith("@db.internal/loopml")
    deployment = _docs(out / "k8s" / "deployment.yaml")[0]
    assert deployment["metadata"]["name"] == "churn"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"churn:v{version}"
    assert [f for f in _hadolint(out / "Dockerfile") if f["level"] == "error"] == []


def test_gate_passes_beats_and_fails(bundle, tmp_path, capsys):
    from loopml.registry import Store

    test_file = bundle.parent / "test.csv"
    shifted = tmp_path / "shifted.csv"
    _table(120, 3, shift=1.5).to_csv(shifted, index=False)
    # no champion yet: the first version passes
    assert main(["gate", str(bundle), "--against", "churn@production", "--data", str(test_file)]) == 0
    store = Store()
    store.promote("churn", store.register("churn", path=bundle)["version"])
    decision = tmp_path / "gate.json"
    assert main(["gate", str(bundle), "--against", "churn@production", "--data", str(test_file),
                 "--output", str(decision)]) == 0
    result = json.loads(decision.read_text())
    assert result["passed"] and result["candidate"] == result["champion"]
    assert main(["gate", str(bundle), "--against", "churn@production", "--data", str(test_file),
                 "--margin", "0.05"]) == 1
    assert main(["gate", str(bundle), "--against", "churn@production", "--data", str(shifted),
                 "--metric", "acuracy"]) == 2
    out = capsys.readouterr()
    assert "no champion" in out.out and "fails" in out.out and "did you mean 'accuracy'" in out.err


def test_gate_refuses_a_typo_nan_margin_and_a_bad_output(bundle, tmp_path, capsys):
    from loopml.registry import Store

    test_file = bundle.parent / "test.csv"
    store = Store()
    store.promote("churn", store.register("churn", path=bundle)["version"])
    gate = ["gate", str(bundle), "--data", str(test_file)]
    assert main([*gate, "--against", "chrun@production"]) == 2  # a typo is not "no champion yet"
    assert main([*gate, "--against", "churn@prodution"]) == 2
    assert main([*gate, "--against", "churn@production", "--margin", "nan"]) == 2
    assert main([*gate, "--against", "churn@production", "-o", str(tmp_path / "missing" / "g.json")]) == 2
    assert main([*gate, "--against", "churn@production", "-o", str(tmp_path)]) == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("error: ") for line in err), err
    assert "did you mean 'churn'" in err[0] and "did you mean 'production'" in err[1] and "--margin" in err[2]
    assert "passes" not in out.out and sorted(p.name for p in tmp_path.iterdir()) == []


def test_seed_registers_once(bundle):
    from loopml.deploy.seed import seed
    from loopml.registry import Store

    assert seed(str(bundle), "seeded") == "registered seeded:1 and pointed production at it"
    assert seed(str(bundle), "seeded").startswith("seeded@production is already version 1")
    assert len(Store().list_versions("seeded")) == 1


# -- the image, built and run here (podman/buildah from Debian, base image made with loopml/deploy/local_base.sh) --
BASE_IMAGE = os.environ.get("LOOPML_TEST_BASE_IMAGE", "localhost/loopml-base:bookworm")


def _image_tools_missing() -> str | None:
    if os.environ.get("LOOPML_TEST_IMAGE") != "1":  # about 2 minutes (build + start): out of the default run
        return "set LOOPML_TEST_IMAGE=1 to build and run the image (slow: about 2 minutes)"
    if os.geteuid() != 0:
        return "building and running images here needs root (podman/buildah without a user namespace setup)"
    for tool in ("buildah", "podman"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y podman buildah debootstrap)"
    found = subprocess.run(["podman", "image", "exists", BASE_IMAGE], capture_output=True)
    if found.returncode != 0:
        return (f"no local base image {BASE_IMAGE}: make it with loopml/deploy/local_base.sh "
                "(no image registry is reachable here to pull python:3.11-slim)")
    return None


IMAGE_TOOLS_MISSING = _image_tools_missing()


@pytest.mark.slow
@pytest.mark.skipif(IMAGE_TOOLS_MISSING is not None, reason=str(IMAGE_TOOLS_MISSING))
def test_image_builds_and_serves_on_loopback(bundle, tmp_path):
    out = tmp_path / "deploy"
    assert main(["package", str(bundle), "-o", str(out), "--base-image", BASE_IMAGE, "--cpus", "1"]) == 0
    assert "RUN python -m pip install --no-cache-dir --no-deps /app/wheels/loopml-" in (out / "Dockerfile").read_text()
    tag = f"localhost/loopml-test-{os.getpid()}:1"
    try:
        _build_and_serve(out, tag, bundle)
    finally:
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True, timeout=120)


def _build_and_serve(out: Path, tag: str, bundle: Path) -> None:
    build = subprocess.run(["buildah", "bud", "--isolation", "chroot", "--format", "docker", "--network", "host",
                            "-t", tag, str(out)], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    inspect = json.loads(subprocess.run(["podman", "image", "inspect", tag], capture_output=True, text=True).stdout)
    assert inspect[0]["Config"]["User"] == "10001:10001"
    assert "/ready" in " ".join(inspect[0]["Healthcheck"]["Test"])
    port = 18000 + os.getpid() % 1000
    name = f"loopml-test-{os.getpid()}"
    # runc, not crun: crun refuses this host's cgroup v1/v2 hybrid; rlimits lowered: podman's root defaults are above
    # what this (unprivileged) host may set. The image's own CMD (0.0.0.0:8000 inside), published on loopback only.
    run = subprocess.run(["podman", "run", "-d", "--rm", "--name", name, "--runtime", "runc",
                          "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
                          "-p", f"127.0.0.1:{port}:8000", "-e", "LOOPML_ADMIN_TOKEN=test-admin",
                          "-e", "LOOPML_API_KEYS=k1 k2", tag], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    try:
        base = f"http://127.0.0.1:{port}"
        deadline, ready = time.time() + 180, None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=5) as response:
                    ready = json.loads(response.read())
                    break
            except OSError:
                time.sleep(1)
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True).stderr[-2000:]
        assert ready is not None and ready["ready"], logs
        rows = _table(3, 4).drop(columns="label").to_dict(orient="records")
        request = urllib.request.Request(f"{base}/v1/models/churn-model/predict", data=json.dumps(rows).encode(),
                                         headers={"Content-Type": "application/json", "X-API-Key": "k2"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        expected = loopml.load(bundle).predict(pd.DataFrame(rows))
        assert [p["prediction"] for p in answer["predictions"]] == list(expected)
        health = subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr  # the image's HEALTHCHECK, on /ready
    finally:
        subprocess.run(["podman", "stop", "-t", "70", name], capture_output=True, timeout=120)
