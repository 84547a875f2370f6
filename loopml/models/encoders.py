"""Per-feature encoders: each maps one feature's tensor to a [batch, output_dim] vector.

An encoder is one registered class with a nested ``Params`` model (its config section, with a
``type`` literal) and the feature types it accepts. config.py builds the schema from here.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from loopml.features.base import StrictModel
from loopml.plugins import Registry


class EncoderParams(StrictModel):
    """Settings every encoder has."""

    #: this encoder's learning rate (None = training.optimizer.lr); embeddings often want more
    lr: float | None = Field(None, gt=0)


class Encoder(nn.Module):
    Params: ClassVar[type[EncoderParams]]
    feature_types: ClassVar[tuple[str, ...]]
    output_dim: int
    #: what integrated gradients explain: the whole feature, each token, or each pixel
    attribution: ClassVar[Literal["feature", "tokens", "pixels"]] = "feature"

    def attribution_layer(self) -> nn.Module:
        """The module whose output is attributed (an embedding table for tokens, the input for pixels)."""
        return self

    def token_scores(self, attributions: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[B, L, D] attributions of the attribution layer -> one score per input token [B, L]."""
        return attributions.sum(-1)[:, : ids.shape[1]]


class TextEncoder(Encoder):
    """Text encoders with a token embedding table, explained token by token."""

    attribution = "tokens"

    def attribution_layer(self) -> nn.Module:
        return self.embedding


ENCODERS: Registry[type[Encoder]] = Registry("encoder")


def default_embedding_dim(vocab_size: int) -> int:
    """fast.ai's rule of thumb, capped: enough width for big vocabularies, little for small."""
    return int(min(64, max(2, round(1.6 * vocab_size**0.56))))


# -- numbers and flags ------------------------------------------------------------------------
@ENCODERS.register("passthrough")
class Passthrough(Encoder):
    class Params(EncoderParams):
        type: Literal["passthrough"] = "passthrough"

    feature_types = ("number", "binary", "date")

    def __init__(self, params: Params, width: int, **_: object) -> None:
        super().__init__()
        self.output_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@ENCODERS.register("dense")
class Dense(Encoder):
    class Params(EncoderParams):
        type: Literal["dense"] = "dense"
        dim: int = Field(16, ge=1)

    feature_types = ("number", "binary", "date")

    def __init__(self, params: Params, width: int, **_: object) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(width, params.dim), nn.ReLU())
        self.output_dim = params.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


# -- categories -------------------------------------------------------------------------------
@ENCODERS.register("embedding")
class CategoryEmbedding(Encoder):
    class Params(EncoderParams):
        type: Literal["embedding"] = "embedding"
        #: None = sized from the vocabulary
        dim: int | None = Field(None, ge=1)
        dropout: float = Field(0.0, ge=0.0, lt=1.0)

    feature_types = ("category",)

    def __init__(self, params: Params, vocab_size: int, **_: object) -> None:
        super().__init__()
        dim = params.dim or default_embedding_dim(vocab_size)
        self.embedding = nn.Embedding(vocab_size, dim)
        self.dropout = nn.Dropout(params.dropout)
        self.output_dim = dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embedding(ids))


# -- text -------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the sequence axis of ``x`` [B, L, D] where ``mask`` [B, L] is True."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the sequence axis where ``mask`` is True (0 for an empty row)."""
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values.clamp(min=-1e4) * mask.any(1, keepdim=True)


def pool(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "mean":
        return masked_mean(x, mask)
    if how == "max":
        return masked_max(x, mask)
    return torch.cat([masked_mean(x, mask), masked_max(x, mask)], dim=1)


#: the starting spread of a tfidf bag's embeddings
WEIGHTED_INIT_STD = 0.01


@ENCODERS.register("bag")
class BagOfEmbeddings(TextEncoder):
    """fastText-style: the mean of token (and hashed bigram) embeddings. On a ``tokenizer: tfidf`` column
    (``weighted``: [B, 2, L] term ids over weights) the mean is the TF-IDF-weighted sum of the n-gram
    embeddings (the TF-IDF vector times the table); its n-grams are terms already, so ``ngrams`` does not apply."""

    class Params(EncoderParams):
        type: Literal["bag"] = "bag"
        dim: int = Field(64, ge=1)
        #: 2 adds hashed word-pair embeddings, which helps short texts a lot
        ngrams: Literal[1, 2] = 2
        ngram_buckets: int = Field(50_000, ge=1)
        #: mean_max concatenates both: the mean keeps the gist, the max keeps rare strong tokens
        pooling: Literal["mean", "max", "mean_max"] = "mean_max"
        #: fastText-style embeddings learn best fast; the layers above keep the base lr
        lr: float | None = Field(0.01, gt=0)
        dropout: float = Field(0.0, ge=0.0, lt=1.0)

    feature_types = ("text",)

    def __init__(self, params: Params, vocab_size: int, weighted: bool = False, **_: object) -> None:
        super().__init__()
        self.weighted = weighted
        self.vocab_size, self.ngrams, self.buckets = vocab_size, 1 if weighted else params.ngrams, params.ngram_buckets
        self.pooling = params.pooling
        rows = vocab_size + (params.ngram_buckets if self.ngrams == 2 else 0)
        self.embedding = nn.Embedding(rows, params.dim, padding_idx=0)
        if weighted:  # the sum over hundreds of terms starts near zero, as a linear model's does: rare terms'
            # N(0, 1) starting vectors would stay noise in every text holding them (ag_news 0.885 -> 0.894)
            with torch.no_grad():
                self.embedding.weight.normal_(0.0, WEIGHTED_INIT_STD)
                self.embedding.weight[0] = 0.0
        self.dropout = nn.Dropout(params.dropout)
        self.output_dim = params.dim * (2 if params.pooling == "mean_max" else 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weighted:
            return self.dropout(self._weighted(ids[:, 0].long(), ids[:, 1]))
        mask = ids != 0
        tokens = ids
        if self.ngrams == 2:
            pair_mask = mask[:, 1:] & mask[:, :-1]
            pairs = (ids[:, :-1] * 1_000_003 + ids[:, 1:]) % self.buckets + self.vocab_size
            tokens = torch.cat([ids, torch.where(pair_mask, pairs, torch.zeros_like(pairs))], dim=1)
            mask = torch.cat([mask, pair_mask], dim=1)
        return self.dropout(pool(self.embedding(tokens), mask, self.pooling))

    def _weighted(self, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        vectors = self.embedding(ids)
        total = (vectors * weights.unsqueeze(-1).to(vectors.dtype)).sum(1)
        if self.pooling == "mean":
            return total
        peak = masked_max(vectors, ids != 0)
        return peak if self.pooling == "max" else torch.cat([total, peak], dim=1)

    def token_scores(self, attributions: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Each word pair's share goes half to each of its two words (tfidf: each term's own)."""
        if self.weighted:
            return attributions.sum(-1)
        length = ids.shape[1]
        scores = attributions.sum(-1)
        tokens = scores[:, :length].clone()
        if self.ngrams == 2 and scores.shape[1] > length:
            pairs = scores[:, length:]
            tokens[:, :-1] += pairs / 2
            tokens[:, 1:] += pairs / 2
        return tokens


@ENCODERS.register("bilstm")
class BiLSTM(TextEncoder):
    class Params(EncoderParams):
        type: Literal["bilstm"] = "bilstm"
        embedding_dim: int = Field(64, ge=1)
        hidden_size: int = Field(64, ge=1)
        num_layers: int = Field(1, ge=1)
        dropout: float = Field(0.1, ge=0.0, lt=1.0)

    feature_types = ("text",)

    def __init__(self, params: Params, vocab_size: int, **_: object) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, params.embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(
            params.embedding_dim, params.hidden_size, num_layers=params.num_layers, batch_first=True,
            bidirectional=True, dropout=params.dropout if params.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(params.dropout)
        self.output_dim = 4 * params.hidden_size  # mean and max pooling, both directions

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != 0
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(ids), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return self.dropout(pool(out, mask, "mean_max"))


@ENCODERS.register("transformer")
class TransformerText(TextEncoder):
    class Params(EncoderParams):
        type: Literal["transformer"] = "transformer"
        dim: int = Field(64, ge=8)
        heads: int = Field(4, ge=1)
        layers: int = Field(2, ge=1)
        feedforward: int = Field(128, ge=1)
        dropout: float = Field(0.1, ge=0.0, lt=1.0)

    feature_types = ("text",)

    def __init__(self, params: Params, vocab_size: int, max_length: int, **_: object) -> None:
        super().__init__()
        if params.dim % params.heads:
            from loopml.errors import LoopmlError

            raise LoopmlError(f"transformer dim ({params.dim}) must be divisible by heads ({params.heads})")
        self.embedding = nn.Embedding(vocab_size, params.dim, padding_idx=0)
        self.register_buffer("positions", sinusoidal_positions(max_length, params.dim), persistent=False)
        layer = nn.TransformerEncoderLayer(
            params.dim, params.heads, params.feedforward, params.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, params.layers, enable_nested_tensor=False)
        self.output_dim = params.dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != 0
        mask = mask | (torch.arange(ids.shape[1], device=ids.device) == 0)  # never a fully masked row
        x = self.embedding(ids) * math.sqrt(self.output_dim) + self.positions[: ids.shape[1]]
        return masked_mean(self.encoder(x, src_key_padding_mask=~mask), mask)


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    scale = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * scale)
    table[:, 1::2] = torch.cos(position * scale[: dim // 2])
    return table


#: the encoder a feature type gets when the config names none
DEFAULT_ENCODERS = {"number": "passthrough", "binary": "passthrough", "category": "embedding", "text": "bag",
                    "image": "cnn", "audio": "audio_cnn", "date": "passthrough"}
