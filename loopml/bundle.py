"""The model directory: everything needed to predict, nothing pickled, written atomically.

Files: manifest.json (versions, fingerprints, the hash of every file, subfolders included),
config.yaml (the resolved config), schema.json, preprocessing.json, metrics.json, history.json,
evaluation.json, reference.json, and the learner's own files (model.safetensors for the network;
a library's text/JSON model and its learner.json for trees; an ensemble keeps its members in
subfolders). The manifest's ``learner`` entry names the learner and its parameters, and
``learner_files`` lists what it wrote; a bundle from before learners has neither: a network.

Loading refuses pickles outright (by name and by content) before reading anything else.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import save_file

from loopml.errors import LoopmlError
from loopml.files import replace_folder

FORMAT = "loopml-model"
FORMAT_VERSION = 1
#: the network's weights (kept for the readers of bundles from before learners)
WEIGHTS = "model.safetensors"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt")


@dataclass
class Bundle:
    """A read, verified model directory."""

    folder: Path
    manifest: dict
    documents: dict[str, str]

    @property
    def learner(self) -> tuple[str, dict]:
        """(name, params) of the learner; a bundle from before learners (no entry) holds a network."""
        entry = self.manifest.get("learner")
        if entry is None:
            return "network", {"type": "network"}
        return entry["name"], entry.get("params", {"type": entry["name"]})


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Tensors as a safetensors file (what learners use for weights and coefficients)."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def _remove_dead_writers(final: Path) -> None:
    """The hidden sibling folders an earlier save of ``final`` left when it was killed (kill -9, OOM): their pid is
    gone. A live writer's folder is left alone."""
    for sibling in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        pid = sibling.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(sibling, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it for every thread); 0o022 if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def write_bundle(
    path: str | os.PathLike, documents: dict[str, str], manifest: dict, overwrite: bool = False,
    learner_files: Callable[[Path], object] | None = None, extras: Callable[[Path], object] | None = None,
) -> Path:
    """Write into a hidden sibling folder, then rename it into place: never a half directory.

    ``learner_files(folder)`` writes the learner's own files (``Learner.save``); they are hashed
    with the documents. ``extras(folder)`` adds files that are not part of the model (the
    report): they appear with the rest, but outside the manifest's hashes, since they may be
    rewritten later.
    """
    final = Path(path).expanduser().resolve()
    if final.exists() and not overwrite:
        raise LoopmlError(f"output {path} already exists; choose another --output or pass --overwrite")
    if final.exists() and not (final / "manifest.json").is_file():
        raise LoopmlError(f"refusing to overwrite {path}: it is not a loopml model directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove_dead_writers(final)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        if learner_files is not None:
            learner_files(tmp)
        written = [p.relative_to(tmp).as_posix() for p in _files(tmp)]
        clash = [name for name in written if name in documents or name == "manifest.json"]
        if clash:
            raise ValueError(f"the learner wrote {clash[0]}, a name the bundle keeps for itself")
        for name, text in documents.items():
            (tmp / name).write_text(text, encoding="utf-8")
        from loopml import __version__

        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "loopml_version": __version__,
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"), **manifest,
            "learner_files": written,
            "files": {p.relative_to(tmp).as_posix(): _sha256(p) for p in _files(tmp)},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        for p in _files(tmp):
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if extras is not None:
            extras(tmp)
        for p in _files(tmp):  # safetensors writes 0600: a server running as another user could not read the weights
            os.chmod(p, 0o666 & ~_umask())
        replace_folder(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def looks_like_pickle(path: Path) -> bool:
    """A pickle by name, or by its first bytes (protocol 2-5 header) unless it is a valid safetensors file."""
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        return True
    with open(path, "rb") as f:
        head = f.read(2)
        if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
            return False
        # a safetensors file starts with its header length (little-endian): it can begin 0x80 0x02..0x05
        f.seek(0)
        start = f.read(9)
    if len(start) == 9 and start[8:9] == b"{":
        (length,) = struct.unpack("<Q", start[:8])
        if 8 + length <= path.stat().st_size:
            return False
    return True


def refuse_pickles(root: Path) -> None:
    for file in _files(root):
        if looks_like_pickle(file):
            name = file.relative_to(root).as_posix()
            raise LoopmlError(f"refusing to load {name}: pickle files are never loaded")


def read_bundle(path: str | os.PathLike) -> Bundle:
    """The verified model directory: format, no pickles, every file's hash; its documents as text."""
    root = Path(path).expanduser()
    manifest_path = root / "manifest.json"
    if not root.is_dir():
        raise LoopmlError(f"model directory not found: {path}")
    if not manifest_path.is_file():
        raise LoopmlError(f"not a loopml model directory (no manifest.json): {path}")
    refuse_pickles(root)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise LoopmlError(f"the manifest.json in {path} is not valid JSON") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise LoopmlError(f"{path} holds an unsupported model format: {manifest.get('format_version')}")
    for name, digest in manifest["files"].items():
        file = root / name
        inside = file.resolve().is_relative_to(root.resolve())
        if not inside or not file.is_file() or _sha256(file) != digest:
            raise LoopmlError(f"model file {name} in {path} is missing or was modified")
    # every file but the learner's own is a text document (a bundle from before learners: all but the weights)
    learner_files = set(manifest.get("learner_files", [WEIGHTS]))
    documents = {name: (root / name).read_text(encoding="utf-8") for name in manifest["files"]
                 if name not in learner_files and "/" not in name}
    return Bundle(root, manifest, documents)


# -- a Model <-> its directory ---------------------------------------------------------------------
def model_documents(model) -> tuple[dict[str, str], dict]:
    """The documents and manifest entries of a fitted ``Model`` (the learner writes its own files)."""
    import yaml

    learner = model.learner
    config = model.config.model_copy(update={"features": _resolved_features(model)})
    documents = {
        "config.yaml": yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
        "schema.json": json.dumps(model.schema.to_dict(), indent=2),
        "preprocessing.json": json.dumps(model.preprocessor.to_dict()),
        "metrics.json": json.dumps(model.metrics, indent=2),
        "history.json": json.dumps({"epochs": model.history, **model.info.get("training", {})}, indent=2),
        "evaluation.json": json.dumps({**model.evaluation, "data_report": model.info.get("data_report", {})}),
        "reference.json": json.dumps(model.reference),
    }
    manifest = {
        "target": model.schema.target, "task": model.schema.target_kind,
        "learner": {"name": learner.registered_name, "params": learner.params.model_dump(mode="json")},
        "data_fingerprint": model.info.get("data_fingerprint"),
        "config_hash": hashlib.sha256(documents["config.yaml"].encode()).hexdigest()[:16],
        "data_source": model.info.get("data_source"),
        "splits": model.info.get("splits"),  # the rows of every split, for retraining and its gate
    }
    return documents, manifest


def _resolved_features(model) -> dict:
    resolved = {col: f.config for col, f in model.preprocessor.features.items()}
    skipped = {c.name: model.config.features.get(c.name) for c in model.schema.columns if c.type == "skip"}
    return {**resolved, **{k: v for k, v in skipped.items() if v is not None}}


def save_model(model, path: str | os.PathLike, overwrite: bool = False,
               extras: Callable[[Path], object] | None = None) -> Path:
    documents, manifest = model_documents(model)
    return write_bundle(path, documents, manifest, overwrite, learner_files=model_files(model, documents),
                        extras=extras)


def model_files(model, documents: dict[str, str]) -> Callable[[Path], None]:
    """What writes a model's files beside its documents: the learner's, and a local pretrained encoder's
    config/tokenizer (and frozen weights), which travel with the model (``documents`` is updated to name them)."""
    from loopml.models.pretrained_files import bundle_pretrained

    def learner_files(folder: Path) -> None:
        model.learner.save(folder)
        documents["preprocessing.json"] = bundle_pretrained(documents["preprocessing.json"], folder)

    return learner_files


def load_model(path: str | os.PathLike, model_cls: type):
    """A ``model_cls`` (``Model``) restored from its directory; the learner through the registry, never unpickled."""
    import yaml

    from loopml.features.pipeline import Preprocessor
    from loopml.learners import LEARNERS, Context
    from loopml.schema import Schema
    from loopml.train.run import learner_task

    bundle = read_bundle(path)
    documents, manifest = bundle.documents, bundle.manifest
    model = model_cls(yaml.safe_load(documents["config.yaml"]))
    model.schema = Schema.from_dict(json.loads(documents["schema.json"]))
    from loopml.models.pretrained_files import use_bundled

    model.preprocessor = Preprocessor.from_dict(use_bundled(json.loads(documents["preprocessing.json"]), bundle.folder))
    name, raw_params = bundle.learner
    cls = LEARNERS.get(name)
    try:
        params = cls.Params.model_validate(raw_params)
    except ValueError as e:
        raise LoopmlError(f"the learner parameters in {path} do not fit learner {name}: {e}") from None
    model.learner = cls.load(bundle.folder, params, learner_task(model.config, model.preprocessor),
                             Context(model.config, model.preprocessor))
    model.metrics = json.loads(documents["metrics.json"])
    history = json.loads(documents["history.json"])
    model.history = history.pop("epochs")
    model.info = {"manifest": manifest, "training": history, "data_fingerprint": manifest.get("data_fingerprint")}
    model.reference = json.loads(documents.get("reference.json", "{}"))
    model.info["data_source"] = manifest.get("data_source")
    model.info["splits"] = manifest.get("splits")
    if "evaluation.json" in documents:
        model.evaluation = json.loads(documents["evaluation.json"])
        model.info["data_report"] = model.evaluation.pop("data_report", {})
    return model
