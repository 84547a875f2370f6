"""A training's output folder, reserved before training starts, so parallel runs never share one.

The checkpoint folder ``<output>.partial`` belongs to one live process at a time: it holds a
``lock`` file that the training keeps ``flock``-ed until it ends. The kernel drops the lock when
the process dies (even under ``kill -9``), so a left-over folder is an interrupted run that
``--resume`` can continue, never mistaken for a live one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from loopml.errors import LoopmlError

try:
    import fcntl
except ImportError:  # Windows: no flock; fall back to the owner file's pid
    fcntl = None

LOCK = "lock"
CHECKPOINT = "last.safetensors"
RUN_FILE = "run.json"


@dataclass
class OutputClaim:
    """The model directory to write and its checkpoint folder, held by this process."""

    output: Path
    checkpoints: Path
    notes: list[str] = field(default_factory=list)
    _lock: IO | None = None
    #: parent folders this claim created: removed again (when empty) if no model was written
    _made: list[Path] = field(default_factory=list)

    def release(self, keep_checkpoints: bool) -> None:
        """Drop the claim; the checkpoint folder stays only when asked (an interrupted run)."""
        if not keep_checkpoints:
            shutil.rmtree(self.checkpoints, ignore_errors=True)  # still locked: nobody else is inside
            if not self.output.exists():
                for folder in self._made:
                    try:
                        folder.rmdir()
                    except OSError:  # not empty: another run uses it too
                        break
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it created, deepest first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def checkpoint_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def claim_output(output: Path | None, default_name: str, *, overwrite: bool = False, resume: bool = False,
                 root: Path = Path("models")) -> OutputClaim:
    """Reserve ``output`` (or a fresh ``root/default_name-<time>-<id>``) for one training, or raise LoopmlError."""
    if output is None:
        if resume:
            raise LoopmlError("--resume needs --output: the model directory of the interrupted run")
        return _claim_fresh(root, re.sub(r"[^A-Za-z0-9_.-]+", "_", default_name).strip("._") or "model")
    return _claim_named(Path(output), overwrite, resume)


def _claim_fresh(root: Path, name: str) -> OutputClaim:
    made = _make_parents(root)
    for _ in range(100):
        out = root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        partial = checkpoint_dir(out)
        if out.exists():
            continue
        try:
            partial.mkdir(parents=True)  # exclusive: a name another process just took fails here
        except FileExistsError:
            continue
        claim = OutputClaim(out, partial, _lock=_lock(partial, out), _made=made)
        if claim._lock is None or out.exists():  # pragma: no cover - another process raced us for a random name
            claim.release(keep_checkpoints=True)
            continue
        return claim
    raise LoopmlError(f"could not find a free output name under {root}")


def _claim_named(out: Path, overwrite: bool, resume: bool) -> OutputClaim:
    if out.exists() and not overwrite:
        raise LoopmlError(f"output {out} already exists; choose another --output or pass --overwrite")
    if out.exists() and not (out / "manifest.json").is_file():
        raise LoopmlError(f"refusing to overwrite {out}: it is not a loopml model directory")
    partial = checkpoint_dir(out)
    created = not partial.exists()
    made = _make_parents(out.parent)
    partial.mkdir(parents=True, exist_ok=True)  # parents again: a failing run may have removed an empty one
    handle = _lock(partial, out)
    if handle is None:
        owner = _owner(partial)
        raise LoopmlError(f"output {out} is being written by another training ({owner}); "
                          "choose another --output or wait for it to finish")
    claim = OutputClaim(out, partial, _lock=handle, _made=made)
    # checked again under the lock: a run that finished meanwhile has written the output
    if out.exists() and not overwrite:
        claim.release(keep_checkpoints=not created)
        raise LoopmlError(f"output {out} already exists; choose another --output or pass --overwrite")
    has_checkpoint = (partial / CHECKPOINT).exists()
    if resume and not has_checkpoint:
        claim.release(keep_checkpoints=not created)
        raise LoopmlError(f"nothing to resume: no checkpoint in {partial}")
    if not resume and has_checkpoint:
        claim.notes.append(f"note: {partial} holds an interrupted run; starting over (pass --resume to continue it)")
    if not resume:
        for item in partial.iterdir():
            if item.name != LOCK:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    return claim


def _lock(partial: Path, out: Path) -> IO | None:
    """The folder's lock file, locked and stamped with this process; None when a live process holds it."""
    handle = open(partial / LOCK, "a+", encoding="utf-8")  # noqa: SIM115  (kept open: it is the lock)
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
    elif _live_owner(partial):
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "output": str(out),
                             "started_at": time.time()}))
    handle.flush()
    return handle


def _owner_record(partial: Path) -> dict:
    try:
        return json.loads((partial / LOCK).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _owner(partial: Path) -> str:
    record = _owner_record(partial)
    return f"pid {record['pid']} on {record.get('host', '?')}" if "pid" in record else "another process"


def _live_owner(partial: Path) -> bool:
    from loopml.registry.liveness import pid_alive

    record = _owner_record(partial)
    return record.get("host") == socket.gethostname() and pid_alive(record.get("pid"), record.get("started_at"))
