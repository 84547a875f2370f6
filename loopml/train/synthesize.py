"""``target.synthesize``: synthetic training rows for the minority classes from a small conditional VAE.

The CVAE is fitted on the raw training rows only, conditioned on the class: numbers standardised
with a Gaussian output (a learned scale per column, plus a missing flag where the column has
missing values), categories and flags one-hot with a softmax output. Synthetic rows are decoded
back into raw values and go through the fitted preprocessing like real rows, so every learner's
view (tensors, table, ...) receives them; validation and test are never touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from loopml.errors import LoopmlError

TABULAR = ("number", "binary", "category")
#: most frequent values of a category kept as their own output; rarer ones share one "other" output
MAX_LEVELS = 50
#: a number value held by at least this share of the rows (capital-gain's 0) is a "spike": its own output,
#: so the Gaussian models only the other values instead of smearing the spike into them
SPIKE_SHARE = 0.2
VALUE, MISSING, SPIKE = 0, 1, 2  # a number cell's state


@dataclass
class NumberCodec:
    name: str
    mean: float
    std: float
    low: float
    high: float
    integer: bool
    states: list[int]  # VALUE, then MISSING and/or SPIKE where the column has them
    spike: float | None = None

    def encode(self, column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Standardised values (0 where not a value) and each cell's index into ``states``."""
        x = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
        state = np.where(np.isfinite(x), VALUE, MISSING)
        if self.spike is not None:
            state = np.where(x == self.spike, SPIKE, state)
        index = {s: i for i, s in enumerate(self.states)}
        return (np.where(state == VALUE, (x - self.mean) / self.std, 0.0),
                np.array([index[s] for s in state], dtype=np.int64))

    def decode(self, z: np.ndarray, state_index: np.ndarray) -> pd.Series:
        x = np.clip(z * self.std + self.mean, self.low, self.high)
        if self.integer:
            x = np.round(x)
        state = np.asarray(self.states)[state_index]
        x = np.where(state == MISSING, np.nan, x)
        return pd.Series(np.where(state == SPIKE, self.spike, x) if self.spike is not None else x)


@dataclass
class LevelCodec:
    """One output per kept value (missing is a value too); the rest drawn from their training frequencies."""

    name: str
    levels: list  # kept raw values; None stands for missing
    rare: list = field(default_factory=list)  # values pooled in the last level ("other")
    rare_p: np.ndarray | None = None

    @property
    def width(self) -> int:
        return len(self.levels) + (1 if self.rare else 0)

    def encode(self, column: pd.Series) -> np.ndarray:
        index = {v: i for i, v in enumerate(self.levels)}
        other = len(self.levels)
        return np.array([index.get(_key(v), other) for v in column], dtype=np.int64)

    def decode(self, codes: np.ndarray, rng: np.random.Generator) -> pd.Series:
        out = [self.levels[c] if c < len(self.levels) else None for c in codes]
        rare = np.flatnonzero(codes >= len(self.levels))
        if len(rare):
            picks = rng.choice(len(self.rare), size=len(rare), p=self.rare_p)
            for i, p in zip(rare, picks, strict=True):
                out[i] = self.rare[p]
        return pd.Series(out, dtype=object)


def _key(value: Any) -> Any:
    return None if pd.isna(value) else value


def fit_codecs(frame: pd.DataFrame, kinds: dict[str, str]) -> list[NumberCodec | LevelCodec]:
    codecs: list[NumberCodec | LevelCodec] = []
    for col, kind in kinds.items():
        if kind == "number":
            x = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
            present = x[np.isfinite(x)]
            states = [VALUE] + ([MISSING] if len(present) < len(x) else [])
            spike = None
            if len(present):
                values, counts = np.unique(present, return_counts=True)
                if counts.max() >= SPIKE_SHARE * len(x) and len(values) > 1:
                    spike = float(values[counts.argmax()])
                    states.append(SPIKE)
            rest = present[present != spike] if spike is not None else present
            if not len(rest):
                rest = np.zeros(1)
            codecs.append(NumberCodec(col, float(rest.mean()), float(rest.std()) or 1.0, float(rest.min()),
                                      float(rest.max()), bool(np.all(rest == np.round(rest))), states, spike))
        else:
            counts = pd.Series([_key(v) for v in frame[col]], dtype=object).value_counts(dropna=False)
            keep = [_key(v) for v in counts.index[:MAX_LEVELS]]
            rest = counts.iloc[MAX_LEVELS:]
            codecs.append(LevelCodec(col, keep, [_key(v) for v in rest.index],
                                     (rest.to_numpy() / rest.sum()) if len(rest) else None))
    return codecs


class CVAE(nn.Module):
    def __init__(self, n_numbers: int, widths: list[int], n_classes: int, hidden: int, latent: int) -> None:
        super().__init__()
        d_in = n_numbers + sum(widths)
        self.n_numbers, self.widths, self.n_classes, self.latent = n_numbers, widths, n_classes, latent
        self.encoder = nn.Sequential(nn.Linear(d_in + n_classes, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent + n_classes, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, d_in))
        self.log_sigma = nn.Parameter(torch.full((n_numbers,), -1.0))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.decoder(torch.cat([z, nn.functional.one_hot(y, self.n_classes).float()], dim=1))
        return out[:, : self.n_numbers], list(out[:, self.n_numbers:].split(self.widths, dim=1))

    def loss(self, x: torch.Tensor, numbers: torch.Tensor, present: torch.Tensor, codes: torch.Tensor,
             y: torch.Tensor) -> torch.Tensor:
        """``x``: the encoder's input, numbers then one-hot levels then the one-hot class (built once, not per step)."""
        h = self.encoder(x)
        mu, log_var = h.chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
        mean, logits = self.decode(z, y)
        sigma = self.log_sigma.clamp(-4.0, 2.0)
        nll = (0.5 * ((numbers - mean) / sigma.exp()) ** 2 + sigma) * present  # Gaussian, observed values only
        ce = sum(nn.functional.cross_entropy(lg, codes[:, i], reduction="none") for i, lg in enumerate(logits))
        kl = -0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(dim=1)
        return (nll.sum(dim=1) + ce + kl).mean()


@dataclass
class Synthesizer:
    codecs: list[NumberCodec | LevelCodec]
    model: CVAE
    seed: int
    info: dict
    #: class index -> (mu, log_var) of its training rows' posteriors: z is drawn from these, not from N(0, I),
    #: because with a 3% class the prior's z mostly decodes to majority-looking rows even under the minority label
    posteriors: dict = field(default_factory=dict)

    @property
    def numbers(self) -> list[NumberCodec]:
        return [c for c in self.codecs if isinstance(c, NumberCodec)]

    def sample(self, label: int, n: int) -> pd.DataFrame:
        """``n`` raw rows of class index ``label`` (the condition decides the class: it is the label given)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + label)
        rng = np.random.default_rng([self.seed, label])
        self.model.eval()
        with torch.no_grad():
            if label in self.posteriors:
                mu, log_var = self.posteriors[label]
                pick = torch.randint(len(mu), (n,), generator=gen)
                z = mu[pick] + (0.5 * log_var[pick]).exp() * torch.randn(n, self.model.latent, generator=gen)
            else:
                z = torch.randn(n, self.model.latent, generator=gen)
            mean, logits = self.model.decode(z, torch.full((n,), label, dtype=torch.long))
            sigma = self.model.log_sigma.clamp(-4.0, 2.0).exp()
            numbers = (mean + sigma * torch.randn(mean.shape, generator=gen)).numpy().astype(np.float64)
            codes = [torch.multinomial(lg.softmax(dim=1), 1, generator=gen)[:, 0].numpy() for lg in logits]
        out, levels = {}, iter(codes)
        for codec in self.codecs:
            if isinstance(codec, LevelCodec):
                out[codec.name] = codec.decode(next(levels), rng)
        for i, codec in enumerate(self.numbers):
            state = out.pop(_flag(codec.name)).to_numpy(dtype=np.int64) if len(codec.states) > 1 else np.zeros(n, int)
            out[codec.name] = codec.decode(numbers[:, i], state)
        return pd.DataFrame(out)


def _flag(name: str) -> str:
    return f"\0state:{name}"  # cannot clash with a column name read from a file


def fit(frame: pd.DataFrame, y: np.ndarray, kinds: dict[str, str], n_classes: int, params: Any) -> Synthesizer:
    """Fit the CVAE on these (training) rows; ``y`` their class indices."""
    start = time.perf_counter()
    codecs = fit_codecs(frame, kinds)
    numbers = [c for c in codecs if isinstance(c, NumberCodec)]
    # a number column with missing values or a spike gets a "state" output (value/missing/spike), decoded
    # with its column; the Gaussian term counts only cells in the value state
    stated = [c for c in numbers if len(c.states) > 1]
    flags = [LevelCodec(_flag(c.name), list(range(len(c.states)))) for c in stated]
    level_codecs = [c for c in codecs if isinstance(c, LevelCodec)] + flags
    encoded = {c.name: c.encode(frame[c.name]) for c in numbers}
    num = np.stack([encoded[c.name][0] for c in numbers], axis=1) if numbers else np.zeros((len(frame), 0))
    present = (np.stack([encoded[c.name][1] == 0 for c in numbers], axis=1) if numbers
               else np.zeros((len(frame), 0), bool))
    codes = [c.encode(frame[c.name]) for c in level_codecs if not c.name.startswith("\0")]
    codes += [encoded[c.name][1] for c in stated]
    code_matrix = np.stack(codes, axis=1) if codes else np.zeros((len(frame), 0), np.int64)
    widths = [c.width for c in level_codecs]
    threads = torch.get_num_threads()
    # a network this small gains nothing from intra-op threads, and loses ~5x to them on a busy machine
    torch.set_num_threads(1)
    try:
        return _train(num, present, code_matrix, y, widths, n_classes, params, [*codecs, *flags], start)
    finally:
        torch.set_num_threads(threads)


def _train(num: np.ndarray, present: np.ndarray, code_matrix: np.ndarray, y: np.ndarray, widths: list[int],
           n_classes: int, params: Any, codecs: list, start: float) -> Synthesizer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        model = CVAE(num.shape[1], widths, n_classes, params.hidden, params.latent)
        codes_t, y_t = torch.tensor(code_matrix), torch.tensor(y, dtype=torch.long)
        num_t = torch.tensor(num, dtype=torch.float32)
        x = torch.cat([num_t, *(nn.functional.one_hot(codes_t[:, i], w).float() for i, w in enumerate(widths)),
                       nn.functional.one_hot(y_t, n_classes).float()], dim=1)
        tensors = (x, num_t, torch.tensor(present, dtype=torch.float32), codes_t, y_t)
        optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
        gen = torch.Generator().manual_seed(params.seed)
        losses = []
        for _ in range(params.epochs):
            order, total = torch.randperm(len(y), generator=gen), 0.0
            for batch in order.split(params.batch_size):
                loss = model.loss(*(t[batch] for t in tensors))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            losses.append(total / len(y))
        model.eval()
        with torch.no_grad():
            mu, log_var = model.encoder(x).chunk(2, dim=1)
    posteriors = {int(c): (mu[y_t == c], log_var[y_t == c]) for c in np.unique(y)}
    info = {"epochs": params.epochs, "final_loss": losses[-1], "fit_seconds": time.perf_counter() - start}
    return Synthesizer(codecs, model, params.seed, info, posteriors)


def check(config: Any, kinds: dict[str, str], target_kind: str) -> None:
    """One-line errors for what synthesis cannot do, before anything is fitted."""
    if config.target.synthesize is None:
        return
    if target_kind == "number":
        raise LoopmlError("target.synthesize is for classification; this target is a number")
    other = [col for col, kind in kinds.items() if kind not in (*TABULAR, "skip")]
    if other:
        raise LoopmlError(f"target.synthesize needs tabular features; column '{other[0]}' is {kinds[other[0]]} "
                          "(remove target.synthesize, or use target.sampling: oversample)")


def augment(config: Any, prepared: Any, pre: Any, train: Any, make_input: Any) -> tuple[Any, dict | None]:
    """``train`` (a Split) with synthetic minority rows appended; the record of what was made (None when off).

    ``make_input(frame)`` is the learner's input for raw rows. Only the training split's raw rows are read.
    """
    from loopml.learners import Split
    from loopml.learners.multiview import concat_views
    from loopml.train.sampling import class_targets

    params = config.target.synthesize
    if params is None:
        return train, None
    if params.seed is None:
        params = params.model_copy(update={"seed": config.training.seed})
    kinds = {col: f.config.type for col, f in pre.features.items()}
    check(config, kinds, pre.target.kind)
    frame = prepared.raw("train", config)
    if frame is None or len(frame) != len(train):
        raise LoopmlError("target.synthesize needs the training split's raw rows (not available for this data)")
    y = np.asarray(train.y).astype(np.int64)
    n_classes = len(pre.target.classes)
    counts = np.bincount(y, minlength=n_classes)
    wanted = class_targets(counts, "oversample", params.ratio)
    extra = {c: n - int(counts[c]) for c, n in wanted.items() if n > counts[c]}
    record = {"method": params.method, "ratio": params.ratio, "rows": 0, "per_class": {}}
    if not extra:
        return train, record
    columns = [col for col, kind in kinds.items() if kind in TABULAR]
    synth = fit(frame[columns].reset_index(drop=True), y, {c: kinds[c] for c in columns}, n_classes, params)
    parts = [synth.sample(c, n) for c, n in sorted(extra.items())]
    rows = pd.concat(parts, ignore_index=True)
    for col, kind in kinds.items():
        if kind not in TABULAR:
            rows[col] = None
    labels = np.concatenate([np.full(n, c) for c, n in sorted(extra.items())]).astype(np.asarray(train.y).dtype)
    out = Split(concat_views(train.x, make_input(rows[list(kinds)])), np.concatenate([np.asarray(train.y), labels]))
    classes = [str(c) for c in pre.target.classes]
    record.update(rows=int(len(rows)), per_class={classes[c]: int(n) for c, n in sorted(extra.items())}, **synth.info)
    return out, record
