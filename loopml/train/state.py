"""Save nested training state (optimizer, RNG, ...) without pickle: tensors in safetensors, the rest in JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Replace every tensor in ``obj`` by a reference, collecting them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        # a copy on the CPU: checkpoints hold CPU tensors whichever device trained (and load on the CPU first)
        tensors[key] = obj.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        return {"__tensor__": key}
    if isinstance(obj, dict):
        items = {str(k): flatten(v, tensors, prefix) for k, v in obj.items()}
        if any(not isinstance(k, str) for k in obj):
            return {"__intkeys__": items}
        return items
    if isinstance(obj, (list, tuple)):
        return [flatten(v, tensors, prefix) for v in obj]
    return obj


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__intkeys__" in obj:
            return {int(k): unflatten(v, tensors) for k, v in obj["__intkeys__"].items()}
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def save_state(state: dict, path: Path) -> None:
    """One safetensors file, the JSON skeleton in its header; replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(skeleton)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(path: Path) -> dict | None:
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        skeleton = json.loads(f.metadata()["state"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open is not a dict)
    return unflatten(skeleton, tensors)
