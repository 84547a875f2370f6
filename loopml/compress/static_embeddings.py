"""A student's token embeddings taken from its teacher (distillation's ``--student-init``), Model2Vec-style.

A bag / BiLSTM student learns its word vectors from the training rows alone; a pretrained teacher already
knows what each of its tokens means. With an init other than ``random`` the student's text columns use the
teacher's tokenizer (``pretrained_tokenizer``: the same vocabulary, kept in the student's bundle as JSON)
and its embedding table starts from one vector per token of the teacher:

- ``teacher-tokens``: each token alone as a text (``[CLS] token [SEP]``) through the teacher's own
  (fine-tuned) transformer, pooled as the teacher pools: what the teacher makes of that one token;
- ``teacher-input``: the teacher's input embedding table.

Then PCA down to the student's embedding width, scaled to unit variance (the scale of a fresh
``nn.Embedding``, so the hashed word-pair rows the table does not cover start alike). The vectors only
start training (they are fine-tuned) and end up in the student's ``model.safetensors``: predicting with
the student reads no teacher file.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from loopml.errors import LoopmlError
from loopml.train.callbacks import Callback

INITS = ("random", "teacher-tokens", "teacher-input")
#: the preset students' embedding width with a teacher init (MiniLM's 384 reduced by PCA)
STATIC_DIM = 256
#: the text encoders whose ``embedding`` table the init fills, and the setting that sets its width
WIDTH_SETTING = {"bag": "dim", "bilstm": "embedding_dim", "transformer": "dim"}
_BATCH = 512


def check_init(value: str) -> str:
    if value not in INITS:
        from loopml.errors import did_you_mean

        raise LoopmlError(f"unknown --student-init '{value}'{did_you_mean(value, INITS)}; choose one of: {', '.join(INITS)}")
    return value


def teacher_models(teacher) -> dict[str, str]:
    """{text column: the pretrained model reference the teacher reads it with}; an error when there is none."""
    out = {column: feature.state["pretrained"]["model"] for column, feature in teacher.preprocessor.features.items()
           if feature.config.type == "text" and "pretrained" in (feature.state or {})}
    if not out:
        raise LoopmlError("--student-init teacher-* needs a teacher with a pretrained text encoder (encoder: "
                          "{type: pretrained}); this teacher has none")
    return out


def _teacher_transformer(teacher, column: str, ref: str) -> tuple[torch.nn.Module, str]:
    """The teacher's transformer for ``column`` (its fine-tuned weights) and its pooling."""
    from loopml.models.pretrained import shared_transformer

    network = getattr(teacher.learner, "network", None)
    if network is not None and column in getattr(network, "columns", []):
        encoder = network.encoders[network.columns.index(column)]
        if getattr(encoder, "transformer", None) is not None:
            return encoder.transformer, encoder.pooling
        return shared_transformer(ref), encoder.pooling  # frozen: the pretrained weights as they are
    return shared_transformer(ref), teacher.preprocessor.features[column].state["pretrained"]["pooling"]


def _markers(ref: str) -> tuple[list[int], list[int]]:
    """The ids the teacher's tokenizer puts before and after a text ([CLS] and [SEP] for BERT)."""
    from loopml.models.pretrained import load_tokenizer

    tok = load_tokenizer(ref)
    tok.no_padding()
    tok.no_truncation()
    bare = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a").ids
    at = next((i for i in range(len(full)) if full[i : i + len(bare)] == bare), None)
    if at is None:
        return [], []
    return full[:at], full[at + len(bare) :]


#: token_vectors per teacher object: a grid of students from one teacher computes them once
_COMPUTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_vectors(teacher, column: str, how: str, rows: torch.Tensor | None = None) -> torch.Tensor:
    """[vocab, hidden]: one vector per token id of the teacher's tokenizer for ``column`` (``how``: an init);
    ``rows``: only these token ids (in that order)."""
    memo = _COMPUTED.setdefault(teacher, {}) if rows is None else {}
    if (column, how) not in memo:
        memo[(column, how)] = _token_vectors(teacher, column, how, rows)
    return memo[(column, how)]


def _token_vectors(teacher, column: str, how: str, rows: torch.Tensor | None) -> torch.Tensor:
    from loopml.models.pretrained import pool_hidden

    ref = teacher_models(teacher).get(column)
    if ref is None:
        raise LoopmlError(f"--student-init: the teacher reads column '{column}' without a pretrained text encoder")
    model, pooling = _teacher_transformer(teacher, column, ref)
    table = model.get_input_embeddings().weight.detach().float().cpu()
    wanted = torch.arange(len(table)) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    if how == "teacher-input":
        return table[wanted].clone()
    before, after = _markers(ref)
    out = torch.zeros(len(wanted), table.shape[1])
    ids = torch.tensor([[*before, 0, *after]] * min(_BATCH, len(wanted)), dtype=torch.long)
    position = len(before)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for begin in range(0, len(wanted), _BATCH):
                part = wanted[begin : begin + _BATCH]
                batch = ids[: len(part)].clone()
                batch[:, position] = part
                mask = torch.ones_like(batch, dtype=torch.bool)
                hidden = model(input_ids=batch, attention_mask=mask.long()).last_hidden_state
                out[begin : begin + len(part)] = pool_hidden(hidden, mask, pooling).float()
    finally:
        model.train(was_training)
    return out


def reduce(vectors: torch.Tensor, dim: int) -> torch.Tensor:
    """PCA of ``vectors`` [N, H] to ``dim`` columns (``dim`` = H: centred only), scaled to unit variance."""
    if dim > vectors.shape[1]:
        raise LoopmlError(f"--student-init: the student's embedding width {dim} is more than the teacher's "
                          f"{vectors.shape[1]}")
    centred = vectors - vectors.mean(0, keepdim=True)
    if dim < vectors.shape[1]:
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        centred = centred @ v[:dim].T
    return centred / centred.std().clamp(min=1e-12)


def init_tables(teacher, config, how: str) -> dict[str, torch.Tensor]:
    """{student text column: its starting embedding rows} for the student ``config``; {} for ``random``."""
    if check_init(how) == "random":
        return {}
    models = teacher_models(teacher)
    tables: dict[str, torch.Tensor] = {}
    for column, feature in config.features.items():
        encoder = getattr(feature, "encoder", None)
        kind = getattr(encoder, "type", None)
        if getattr(feature, "type", None) != "text" or kind not in WIDTH_SETTING:
            continue
        if column not in models or feature.pretrained_tokenizer is None:
            raise LoopmlError(f"--student-init: student column '{column}' must use the teacher's tokenizer "
                              f"(pretrained_tokenizer: {models.get(column, 'minilm')})")
        tables[column] = reduce(token_vectors(teacher, column, how), int(getattr(encoder, WIDTH_SETTING[kind])))
    if not tables:
        raise LoopmlError("--student-init: the student has no bag, bilstm or transformer text encoder to start")
    return tables


class EmbeddingInit(Callback):
    """Copies the teacher's token vectors into the student's embedding tables before the first epoch."""

    def __init__(self, tables: dict[str, torch.Tensor]) -> None:
        self.tables = tables

    def on_train_begin(self, trainer: Any) -> None:
        if trainer.epoch:  # a resumed run has its own trained weights
            return
        network = trainer.model
        for column, table in self.tables.items():
            weight = network.encoders[network.columns.index(column)].embedding.weight
            if table.shape[0] > weight.shape[0] or table.shape[1] != weight.shape[1]:
                raise LoopmlError(f"--student-init: {tuple(table.shape)} teacher vectors do not fit column "
                                  f"'{column}''s embedding table {tuple(weight.shape)}")
            with torch.no_grad():
                weight[: len(table)] = table.to(weight.device, weight.dtype)
                weight[0] = 0.0  # the padding row
