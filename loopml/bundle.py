"""The model directory: everything needed to predict, nothing pickled, written atomically.

Files: manifest.json (versions, fingerprints, file hashes), config.yaml (the resolved config),
schema.json, preprocessing.json, model.safetensors, metrics.json, history.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from loopml.errors import LoopmlError

FORMAT = "loopml-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_bundle(
    path: str | os.PathLike, documents: dict[str, str], weights: dict[str, torch.Tensor], manifest: dict,
    overwrite: bool = False, extras: Callable[[Path], object] | None = None,
) -> Path:
    """Write into a hidden sibling folder, then rename it into place: never a half directory.

    ``extras(folder)`` adds files that are not part of the model (the report): they appear with
    the rest, but outside the manifest's hashes, since they may be rewritten later.
    """
    final = Path(path).expanduser().resolve()
    if final.exists() and not overwrite:
        raise LoopmlError(f"output {path} already exists; choose another --output or pass --overwrite")
    if final.exists() and not (final / "manifest.json").is_file():
        raise LoopmlError(f"refusing to overwrite {path}: it is not a loopml model directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, text in documents.items():
            (tmp / name).write_text(text, encoding="utf-8")
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
        from loopml import __version__

        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "loopml_version": __version__,
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"), **manifest,
            "files": {p.name: _sha256(p) for p in sorted(tmp.iterdir())},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if extras is not None:
            extras(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_bundle(path: str | os.PathLike) -> tuple[dict, dict[str, str], dict[str, torch.Tensor]]:
    """(manifest, documents, weights) of a model directory; checks format and file hashes."""
    root = Path(path).expanduser()
    manifest_path = root / "manifest.json"
    if not root.is_dir():
        raise LoopmlError(f"model directory not found: {path}")
    if not manifest_path.is_file():
        raise LoopmlError(f"not a loopml model directory (no manifest.json): {path}")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise LoopmlError(f"{path} holds an unsupported model format: {manifest.get('format_version')}")
    for name, digest in manifest["files"].items():
        file = root / name
        if not file.is_file() or _sha256(file) != digest:
            raise LoopmlError(f"model file {name} in {path} is missing or was modified")
    documents = {name: (root / name).read_text(encoding="utf-8") for name in manifest["files"] if name != WEIGHTS}
    return manifest, documents, load_file(str(root / WEIGHTS))
