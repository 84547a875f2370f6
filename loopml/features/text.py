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
from pydantic import Field
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel, canonical_keys

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1


class TextConfig(StrictModel):
    type: Literal["text"] = "text"
    tokenizer: Literal["word", "bpe", "wordpiece"] = "word"
    vocab_size: int = Field(30_000, ge=10)
    #: tokens seen fewer times in training are unknown
    min_frequency: int = Field(1, ge=1)
    lowercase: bool = True
    #: tokens kept per text; auto = the 95th percentile of training lengths (at most 256)
    max_length: int | Literal["auto"] = "auto"
    #: a pretrained model's tokenizer (``minilm`` or a Hugging Face model directory) instead of one trained
    #: here; kept in the bundle as JSON (a distilled student shares its teacher's vocabulary this way)
    pretrained_tokenizer: str | None = None


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

    def transform(self, column: pd.Series) -> torch.Tensor:
        if "pretrained" in self.state:
            return self._transform_pretrained(column)
        encoded = self.tokenizer().encode_batch(self._texts(column))
        return torch.tensor(np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(encoded), -1))

    def token_strings(self, ids: list[int]) -> list[str | None]:
        """Token text for each id; None for padding."""
        pretrained = "pretrained" in self.state
        tok = self._pretrained_tokenizer() if pretrained else self.tokenizer()
        pad = int(self.state["pretrained"]["pad_id"]) if pretrained else 0
        return [None if i == pad else tok.id_to_token(int(i)) for i in ids]

    def encoder_inputs(self) -> dict:
        inputs = {"vocab_size": self.state["vocab_size"], "max_length": self.state["max_length"]}
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
