"""Text: a Hugging Face ``tokenizers`` tokenizer trained on the training split, saved as JSON."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel

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
        return column.fillna("").astype(str).tolist()

    def fit(self, column: pd.Series) -> dict:
        tok, trainer = self._new_tokenizer()
        texts = self._texts(column)
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
        encoded = self.tokenizer().encode_batch(self._texts(column))
        return torch.tensor(np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(encoded), -1))

    def encoder_inputs(self) -> dict:
        return {"vocab_size": self.state["vocab_size"], "max_length": self.state["max_length"]}
