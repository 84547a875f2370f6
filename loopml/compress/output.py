"""What every compression method ends with: the size columns of its trade-off table, the new bundle (with
compress.json and the report), its lines on the terminal, and its registry version with lineage.

Quantisation, pruning and distillation differ in how they make the new model, not in how they hand it over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loopml.compress.tradeoff import network_bytes


def sizes(method: str, folder: Path, manifest: dict, new_model, new_network_bytes: int) -> dict:
    """Network and bundle bytes, original (``folder``, its ``manifest``) vs the new model (its documents + network)."""
    from loopml.bundle import model_documents

    documents, _ = model_documents(new_model)
    return {"method": method,
            "original_network_bytes": network_bytes(folder, manifest.get("learner_files", ["model.safetensors"])),
            "original_bundle_bytes": network_bytes(folder, list(manifest.get("files", {}))),
            "compressed_network_bytes": new_network_bytes,
            "compressed_bundle_bytes": sum(len(t.encode()) for t in documents.values()) + new_network_bytes}


def write_model(new_model, table: dict, facts_key: str, facts: dict, output: Path, *, force: bool,
                echo: Any = None, more_lines: list[str] | None = None) -> Path:
    """The new bundle, written atomically with its trade-off table (compress.json, report); prints the table."""
    from loopml.bundle import model_documents, model_files, write_bundle
    from loopml.compress.tradeoff import lines

    new_model.evaluation["compression"] = table
    documents, manifest = model_documents(new_model)
    manifest[facts_key] = facts

    def extras(where: Path) -> None:
        (where / "compress.json").write_text(json.dumps(table, indent=2), encoding="utf-8")
        new_model.report(where / "report.html", name=Path(output).name)

    written = write_bundle(output, documents, manifest, overwrite=force, learner_files=model_files(new_model, documents),
                           extras=extras)
    for line in lines(table) + (more_lines or []):
        (echo or print)(line)
    return written


def register_model(store: Any, name: str, folder: Path, source: dict, *, method: str, kind: str, learner: str,
                   retrains_as: str | None = "network") -> dict:
    """A new version of ``name`` (``kind``: compressed or distilled); its parent is the original's version when
    the original is a version of ``name``."""
    from loopml.registry import Store
    from loopml.registry.store import check_name

    check_name(name)
    store = store if store is not None else Store()
    parent = source.get("version") if source.get("name") == name else None
    lineage = {"reason": f"{kind} ({method})", f"{kind}_from": {k: v for k, v in source.items() if k != "path"},
               "method": method, "learner": learner}
    if retrains_as is not None:
        lineage["retrains_as"] = retrains_as
    where = f"{source['name']}:{source['version']}" if source.get("name") else source.get("folder", "a model folder")
    what = "compression" if kind == "compressed" else "student"
    return store.register(name, path=folder, description=f"{method} {what} of {where}", parent_version=parent,
                          lineage=lineage)


def remeasure(new_model, original, frames: dict) -> None:
    """The new model's own metrics (and evaluations) on the original's splits."""
    for split, frame in frames.items():
        if split in original.metrics and len(frame):
            ev = new_model.evaluation_of(frame, split)
            new_model.metrics[split] = ev["metrics"]
            if split in new_model.evaluation.get("evaluations", {}):
                new_model.evaluation["evaluations"][split] = ev
