"""Writes that a reader (or a kill -9) never sees half done."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_folder(tmp: Path, final: Path) -> None:
    """Put the finished folder ``tmp`` at ``final``: renames only, so a reader sees the old folder or the
    new one, never a mix (the old one is moved aside first, then deleted)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
