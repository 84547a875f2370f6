"""A saved model's effective config: what ``models diff`` compares, so equal models show no differences.

A model directory's config.yaml keeps settings as written (``target.type: auto``, a ``defaults``
section, ``delimiter: null``) next to what they resolved to (each column's full section). Two
models trained with the same effective settings, one spelling out the defaults, must compare equal.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from loopml.data.read import FORMATS

DELIMITERS = {"csv": ",", "tsv": "\t"}


def resolved_config(model_dir: Path) -> dict:
    """The config of the model in ``model_dir`` with every ``auto``/default setting replaced by its outcome."""
    config = copy.deepcopy(yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8")) or {})
    manifest = _json(model_dir / "manifest.json")
    target = config.get("target") or {}
    if target.get("type") == "auto" and manifest.get("task"):
        target["type"] = manifest["task"]
    classes = ((_json(model_dir / "preprocessing.json").get("target") or {}).get("state") or {}).get("classes")
    if target.get("type") == "binary" and target.get("positive_class") is None and classes:
        target["positive_class"] = classes[-1]  # the second class in sort order, unless set
    # every column's section in `features` already has the defaults applied: they add nothing
    config.pop("defaults", None)
    data = config.get("data") or {}
    source = manifest.get("data_source")
    if source and not Path(source).is_dir():
        fmt = data.get("format", "auto")
        if fmt == "auto":
            fmt = data["format"] = FORMATS.get(Path(source).suffix.lower(), "csv")
        if data.get("delimiter") is None and Path(source).suffix.lower() in (".csv", ".tsv", ".tab"):
            data["delimiter"] = DELIMITERS.get(fmt)
    return config


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
