"""A model trained on a local pretrained encoder (``model: ./enc``) carries that encoder's files.

At save time the files the fitted text feature needs at predict time are copied into the bundle
under ``pretrained/<n>/`` (config.json and the tokenizer files always; the weights only for
``trainable: frozen``, where the feature itself runs the transformer; a fine-tuned transformer's
weights are already in the network's model.safetensors). The feature's state records the copy as
``bundled`` and loading points ``model`` at it, so the bundle works after enc/ is moved or deleted,
and wherever it is served. Bundles from before this keep their absolute path and load as before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from loopml.errors import LoopmlError

FOLDER = "pretrained"
#: what a fitted text feature reads from its model directory at predict time (besides weights)
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "spiece.model",
                   "sentencepiece.bpe.model")


def _pretrained_states(preprocessing: dict) -> list[dict]:
    """The ``pretrained`` entries of the text features that name a local directory."""
    from loopml.models.pretrained import MINILM

    out = []
    for feature in preprocessing.get("features", {}).values():
        info = (feature.get("state") or {}).get("pretrained")
        if isinstance(info, dict) and info.get("model") not in (None, MINILM):
            out.append(info)
    return out


def bundle_pretrained(preprocessing_json: str, folder: Path) -> str:
    """Copy each local pretrained model's files into ``folder/pretrained/<n>``; the rewritten preprocessing.json."""
    preprocessing = json.loads(preprocessing_json)
    states = _pretrained_states(preprocessing)
    if not states:
        return preprocessing_json
    copies: dict[tuple[str, bool], str] = {}
    for info in states:
        source = Path(info["model"])
        weights = info.get("output") == "embeddings"
        key = (str(source), weights)
        if key not in copies:
            if not source.is_dir():
                raise LoopmlError(f"cannot save the model: its pretrained encoder directory {source} is gone")
            name = f"{FOLDER}/{len(copies)}"
            target = folder / name
            target.mkdir(parents=True)
            names = [n for n in TOKENIZER_FILES if (source / n).is_file()]
            if weights:
                names += sorted(p.name for p in source.glob("*.safetensors")) + (
                    ["model.safetensors.index.json"] if (source / "model.safetensors.index.json").is_file() else [])
            for n in names:
                if not (source / n).resolve().is_relative_to(source.resolve()):  # never copy e.g. /etc/shadow in
                    raise LoopmlError(f"pretrained model directory {source}: {n} links outside the directory")
                shutil.copyfile(source / n, target / n)
            copies[key] = name
        info["bundled"] = copies[key]
    return json.dumps(preprocessing)


def use_bundled(preprocessing: dict, folder: Path) -> dict:
    """Point every bundled pretrained model at its copy inside the (loaded) bundle ``folder``."""
    root = folder.resolve()
    for info in _pretrained_states(preprocessing):
        bundled = info.get("bundled")
        if bundled is None:
            continue  # a bundle from before: the original directory
        path = (root / bundled).resolve()
        if not path.is_relative_to(root) or not path.is_dir():
            raise LoopmlError(f"the model in {folder} names a pretrained copy {bundled} it does not hold")
        info["model"] = str(path)
    return preprocessing


def has_weights(path: str | Path) -> bool:
    p = Path(path)
    return any(p.glob("*.safetensors")) or (p / "model.safetensors.index.json").is_file()
