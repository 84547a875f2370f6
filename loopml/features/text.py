"""Text: a Hugging Face ``tokenizers`` tokenizer trained on the training split, saved as JSON.

With ``encoder: {type: pretrained}`` nothing is trained: the column uses the pretrained model's own
tokenizer (token ids for a fine-tuned encoder) or, when the encoder is frozen, becomes the model's
pooled sentence embeddings [N, hidden], computed once here so the tensor cache keeps them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel, canonical_keys
from loopml.features.sparse_view import ANALYZERS

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1
#: tfidf: at most this many terms per text (the 95th percentile of the training texts' when ``max_length: auto``)
TFIDF_MAX_TERMS = 2048
#: the longest ``max_length`` a config may set (every row's tensor is padded to it: a bigger one only exhausts memory)
MAX_LENGTH = 16_384


class TextConfig(StrictModel):
    type: Literal["text"] = "text"
    #: ``tfidf``: no token sequence but the text's word 1-2-gram and char 2-5-gram TF-IDF weights (the linear
    #: learner's: vocabularies fitted on the training rows, terms in fewer than 2 of them dropped), its
    #: ``max_length`` largest as (term id, weight) pairs, for the ``bag`` encoder (a TF-IDF-weighted bag of
    #: n-gram embeddings); ``vocab_size`` and ``min_frequency`` apply to the other tokenizers
    tokenizer: Literal["word", "bpe", "wordpiece", "tfidf"] = "word"
    vocab_size: int = Field(30_000, ge=10)
    #: tokens seen fewer times in training are unknown
    min_frequency: int = Field(1, ge=1)
    lowercase: bool = True
    #: tokens kept per text; auto = the 95th percentile of training lengths (at most 256; tfidf: terms, at most 2048)
    max_length: int | Literal["auto"] = "auto"
    #: a pretrained model's tokenizer (``minilm`` or a Hugging Face model directory) instead of one trained
    #: here; kept in the bundle as JSON (a distilled student shares its teacher's vocabulary this way)
    pretrained_tokenizer: str | None = None

    @field_validator("max_length")
    @classmethod
    def _max_length_in_range(cls, value: int | str) -> int | str:
        if value != "auto" and not 1 <= value <= MAX_LENGTH:
            raise ValueError(f"max_length must be 'auto' or from 1 to {MAX_LENGTH:,}")
        return value

    @model_validator(mode="after")
    def _tfidf_fits(self) -> TextConfig:
        if self.tokenizer != "tfidf":
            return self
        if self.pretrained_tokenizer is not None:
            raise ValueError("tokenizer: tfidf builds its own vocabulary; remove pretrained_tokenizer (or use "
                             "tokenizer: word)")
        encoder = getattr(getattr(self, "encoder", None), "type", "bag")
        if encoder != "bag":
            raise ValueError(f"tokenizer: tfidf gives TF-IDF weights, not a token sequence: only the bag encoder reads "
                             f"them, not {encoder}")
        return self


@FEATURE_TYPES.register("text")
class TextFeature(FeatureType):
    Config = TextConfig
    infer_priority = 50
    tensor_dtype = torch.long

    @classmethod
    def infer(cls, column: pd.Series, stats: dict) -> bool:
        return stats["numeric_ratio"] < 0.5 and (stats["mean_words"] >= 3 or stats["mean_length"] >= 30)

    def _new_tokenizer(self) -> tuple[Tokenizer, trainers.Trainer]:
        cfg: TextConfig = self.config
        common = {"vocab_size": cfg.vocab_size, "min_frequency": cfg.min_frequency, "special_tokens": [PAD, UNK]}
        if cfg.tokenizer == "word":
            tok, trainer = Tokenizer(models.WordLevel(unk_token=UNK)), trainers.WordLevelTrainer(**common)
        elif cfg.tokenizer == "bpe":
            tok, trainer = Tokenizer(models.BPE(unk_token=UNK)), trainers.BpeTrainer(**common)
        else:
            tok, trainer = Tokenizer(models.WordPiece(unk_token=UNK)), trainers.WordPieceTrainer(**common)
        steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
        tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        return tok, trainer

    @staticmethod
    def _texts(column: pd.Series) -> list[str]:
        # canonical_key: a column read as numbers (2.0 from a CSV with gaps) tokenises like the
        # JSON string "2"; missing values are the empty text
        return [key or "" for key in canonical_keys(column)]

    # -- pretrained models -------------------------------------------------------------------------
    @staticmethod
    def _pretrained_encoder(config: object) -> object | None:
        encoder = getattr(config, "encoder", None)
        return encoder if getattr(encoder, "type", None) == "pretrained" else None

    @classmethod
    def tensor_key(cls, config: object) -> dict | None:
        """Encoder settings that shape this column's tensors (for the cache key); None = none do."""
        encoder = cls._pretrained_encoder(config)
        from loopml.models.pretrained import model_identity

        if encoder is None:
            borrowed = getattr(config, "pretrained_tokenizer", None)
            return None if borrowed is None else {"tokenizer": model_identity(borrowed, weights=False)}

        frozen = encoder.trainable == "frozen"
        return {"type": "pretrained", "model": encoder.model, "identity": model_identity(encoder.model),
                "output": "embeddings" if frozen else "ids", **({"pooling": encoder.pooling} if frozen else {})}

    def _fit_pretrained(self, column: pd.Series, encoder: object) -> dict:
        from loopml.models.pretrained import load_tokenizer, model_config, model_reference, pad_id

        ref = model_reference(encoder.model)
        tok, model_cfg = load_tokenizer(ref), model_config(ref)
        limit = int(getattr(model_cfg, "max_position_embeddings", 512) or 512)
        tok.no_padding()
        tok.no_truncation()
        max_length = self.config.max_length
        if max_length == "auto":
            lengths = [len(e.ids) for e in tok.encode_batch(self._texts(column))] or [1]
            max_length = int(min(128, max(8, np.percentile(lengths, 95))))
        self.state = {
            "pretrained": {
                "model": ref, "output": "embeddings" if encoder.trainable == "frozen" else "ids",
                "pooling": encoder.pooling, "hidden_size": int(model_cfg.hidden_size),
                "pad_id": pad_id(ref, tok, model_cfg),
            },
            "max_length": min(int(max_length), limit),
            "vocab_size": tok.get_vocab_size(),
        }
        self._tokenizer = None
        return self.state

    def _pretrained_tokenizer(self) -> Tokenizer:
        if getattr(self, "_tokenizer", None) is None:
            from loopml.models.pretrained import load_tokenizer

            tok = load_tokenizer(self.state["pretrained"]["model"])
            tok.no_padding()
            tok.enable_truncation(self.state["max_length"])
            self._tokenizer = tok
        return self._tokenizer

    def _transform_pretrained(self, column: pd.Series) -> torch.Tensor:
        info = self.state["pretrained"]
        ids = [e.ids for e in self._pretrained_tokenizer().encode_batch(self._texts(column))]
        if info["output"] == "embeddings":
            from loopml.models.pretrained import embed

            return embed(ids, info["model"], info["pooling"], info["pad_id"])
        out = np.full((len(ids), self.state["max_length"]), info["pad_id"], dtype=np.int64)
        for row, seq in enumerate(ids):
            out[row, : len(seq)] = seq
        return torch.from_numpy(out)

    # -- fitting and transforming --------------------------------------------------------------------
    def fit(self, column: pd.Series) -> dict:
        encoder = self._pretrained_encoder(self.config)
        if encoder is not None:
            return self._fit_pretrained(column, encoder)
        texts = self._texts(column)
        if self.config.tokenizer == "tfidf":
            return self._fit_tfidf(texts)
        if self.config.pretrained_tokenizer is not None:
            tok = borrowed_tokenizer(self.config.pretrained_tokenizer)
        else:
            tok, trainer = self._new_tokenizer()
            tok.train_from_iterator(texts, trainer=trainer)
        max_length = self.config.max_length
        if max_length == "auto":
            lengths = [len(e.ids) for e in tok.encode_batch(texts)] or [1]
            max_length = int(min(256, max(8, np.percentile(lengths, 95))))
        self.state = {"tokenizer": tok.to_str(), "max_length": max_length, "vocab_size": tok.get_vocab_size()}
        self._tokenizer = None
        return self.state

    def tokenizer(self) -> Tokenizer:
        if getattr(self, "_tokenizer", None) is None:
            tok = Tokenizer.from_str(self.state["tokenizer"])
            tok.enable_truncation(self.state["max_length"])
            tok.enable_padding(length=self.state["max_length"], pad_id=0, pad_token=PAD)
            self._tokenizer = tok
        return self._tokenizer

    # -- tfidf: (term id, weight) pairs ----------------------------------------------------------------
    def _fit_tfidf(self, texts: list[str]) -> dict:
        from loopml.features.sparse_view import fit_terms

        self.__dict__.pop("_terms_cache", None)
        self.__dict__.pop("_term_names", None)
        terms, _ = fit_terms(texts, self.config.lowercase)
        self.state = {"tfidf": terms, "max_length": 1, "vocab_size": 1 + sum(len(terms[a]["terms"]) for a in ANALYZERS)}
        max_length = self.config.max_length
        if max_length == "auto":
            nonzero = np.diff(self._term_weights(texts)[0].indptr) if texts else [1]
            max_length = int(min(TFIDF_MAX_TERMS, max(8, np.percentile(nonzero, 95))))
        # no text holds more terms than the vocabulary: longer rows would only be padding
        self.state["max_length"] = int(min(max_length, max(1, self.state["vocab_size"] - 1)))
        return self.state

    def _term_weights(self, texts: list[str]):
        from loopml.features.sparse_view import term_weights

        return term_weights(self, self.state["tfidf"], "_terms_cache", texts)

    def _transform_tfidf(self, column: pd.Series) -> torch.Tensor:
        """[N, 2, max_length] float32: term ids (1-based: 0 pads) over weights. A text with more terms keeps the
        ones with the largest weight before normalisation (ties: the lower id), all in id order."""
        texts = self._texts(column)
        length = self.state["max_length"]
        out = np.zeros((len(texts), 2, length), dtype=np.float32)
        if not texts:
            return torch.from_numpy(out)
        weights, raw = self._term_weights(texts)
        for row in range(len(texts)):
            start, end = weights.indptr[row], weights.indptr[row + 1]
            ids, values = weights.indices[start:end], weights.data[start:end]
            if len(ids) > length:
                kept = np.sort(np.lexsort((ids, -raw.data[start:end]))[:length])
                ids, values = ids[kept], values[kept]
            out[row, 0, : len(ids)] = ids + 1
            out[row, 1, : len(ids)] = values
        return torch.from_numpy(out)

    def _term_list(self) -> list[str]:
        state = self.state["tfidf"]
        return [t for name in ANALYZERS for t in state[name]["terms"]]

    def transform(self, column: pd.Series) -> torch.Tensor:
        if "tfidf" in self.state:
            return self._transform_tfidf(column)
        if "pretrained" in self.state:
            return self._transform_pretrained(column)
        encoded = self.tokenizer().encode_batch(self._texts(column))
        return torch.tensor(np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(encoded), -1))

    def token_strings(self, ids: list[int]) -> list[str | None]:
        """Token text for each id; None for padding (tfidf: the ids row of a text's [2, L] pairs, or that row)."""
        if "tfidf" in self.state:
            ids = ids[0] if ids and isinstance(ids[0], list) else ids
            terms = self.__dict__.get("_term_names") or self.__dict__.setdefault("_term_names", self._term_list())
            return [None if int(i) <= 0 else terms[int(i) - 1] for i in ids]
        pretrained = "pretrained" in self.state
        tok = self._pretrained_tokenizer() if pretrained else self.tokenizer()
        pad = int(self.state["pretrained"]["pad_id"]) if pretrained else 0
        return [None if i == pad else tok.id_to_token(int(i)) for i in ids]

    def encoder_inputs(self) -> dict:
        inputs = {"vocab_size": self.state["vocab_size"], "max_length": self.state["max_length"]}
        if "tfidf" in self.state:
            inputs["weighted"] = True
        if "pretrained" in self.state:
            inputs["pretrained"] = self.state["pretrained"]
        return inputs


def borrowed_tokenizer(ref: str) -> Tokenizer:
    """A pretrained model's tokenizer for a column with a trained encoder: no [CLS]/[SEP], padding id 0."""
    from loopml.errors import LoopmlError
    from loopml.models.pretrained import load_tokenizer, model_config, model_reference, pad_id

    ref = model_reference(ref, weights=False)  # a tokenizer only: a teacher bundle's copy holds no weights
    tok = load_tokenizer(ref)
    if pad_id(ref, tok, model_config(ref, weights=False)) != 0:
        raise LoopmlError(f"pretrained_tokenizer {ref}: its padding token is not id 0, which text encoders other "
                          "than pretrained take for padding")
    tok.post_processor = None  # sentence markers carry nothing for a bag or an LSTM
    tok.no_padding()
    tok.no_truncation()
    return tok
