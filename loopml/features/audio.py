"""Audio: file paths (relative to the data file) decoded with soundfile to fixed-length waveforms.

``transform`` hands the encoder float32 waveforms [N, samples] at ``sample_rate`` (mono, resampled,
zero-padded or trimmed to ``duration``). The spectrogram (log-mel or MFCC), its per-band
normalisation and the training-only augmentation (noise, time shift, SpecAugment) are computed
in the encoder, batch by batch (loopml.models.audio_encoders), so the cache holds waveforms.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from pydantic import Field, model_validator

from loopml.data.media import AUDIO_EXTENSIONS, extension_ratio, resolve
from loopml.errors import LoopmlError
from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel


class AudioConfig(StrictModel):
    type: Literal["audio"] = "audio"
    #: every clip is resampled to this rate (Hz)
    sample_rate: int = Field(16_000, ge=1_000, le=192_000)
    #: seconds per clip: shorter clips are zero-padded at the end, longer ones trimmed
    duration: float = Field(1.0, gt=0, le=600)
    #: a missing or undecodable file: error (naming the file) or skip the row in training
    on_error: Literal["error", "skip"] = "error"
    #: what the encoder sees: log-mel energies, or MFCCs (a DCT of them)
    representation: Literal["logmel", "mfcc"] = "logmel"
    n_mels: int = Field(40, ge=4, le=512)
    #: cepstral coefficients kept when representation is mfcc
    n_mfcc: int = Field(20, ge=2, le=512)
    #: STFT size (and Hann window length) in samples
    n_fft: int = Field(512, ge=16, le=65_536)
    #: STFT hop in samples; None = 10 ms
    hop_length: int | None = Field(None, ge=1)
    # -- training-only augmentation (off at evaluation and predict) --------------------------------
    #: add white noise at a random SNR between this and this + 20 dB to a random half of the
    #: clips (the other half stay clean, like evaluation data); None = off
    noise_snr_db: float | None = None
    #: shift each clip by up to +- this many seconds, zero-filling the gap (0 = off)
    time_shift: float = Field(0.0, ge=0)
    #: SpecAugment: one band of up to this many mel bands / coefficients masked (0 = off)
    freq_mask: int = Field(0, ge=0)
    #: SpecAugment: one stretch of up to this many frames masked (0 = off)
    time_mask: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> AudioConfig:
        if self.representation == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        if self.n_fft > self.samples:
            raise ValueError(f"n_fft ({self.n_fft}) is longer than a clip ({self.samples} samples)")
        return self

    @property
    def samples(self) -> int:
        return max(1, round(self.duration * self.sample_rate))

    @property
    def hop(self) -> int:
        return self.hop_length or max(1, self.sample_rate // 100)


# -- resampling ---------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _sinc_table(up: int, down: int, zeros: int, rolloff: float) -> tuple[np.ndarray, int]:
    """Windowed-sinc weights [up, 2 * half] for each output phase, and ``half`` (taps each side)."""
    cutoff = rolloff * min(1.0, up / down)  # as a fraction of the input Nyquist frequency
    half = math.ceil(zeros / cutoff)
    offsets = np.arange(up)[:, None] / up + (half - 1) - np.arange(2 * half)[None, :]  # t - k, in input samples
    window = 0.5 * (1.0 + np.cos(np.pi * np.clip(offsets / half, -1.0, 1.0)))  # Hann over +- half
    weights = cutoff * np.sinc(cutoff * offsets) * window
    weights /= weights.sum(axis=1, keepdims=True)  # unit gain at DC for every phase
    return weights.astype(np.float32), half


def _lookahead(orig_sr: int, new_sr: int, zeros: int = 16, rolloff: float = 0.97) -> int:
    """Input samples the resampler reads past the last output position."""
    return math.ceil(zeros / (rolloff * min(1.0, new_sr / orig_sr))) + 1


def resample(x: np.ndarray, orig_sr: int, new_sr: int, length: int | None = None, zeros: int = 16,
             rolloff: float = 0.97) -> np.ndarray:
    """Band-limited (windowed-sinc, polyphase) resampling of a 1-D signal from ``orig_sr`` to ``new_sr``.

    ``length`` caps the number of output samples (so a long file is not resampled past the clip).
    """
    x = np.asarray(x, dtype=np.float32)
    if orig_sr == new_sr or not len(x):
        return x[:length] if length is not None else x
    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    weights, half = _sinc_table(up, down, zeros, rolloff)
    n_out = -(-len(x) * up // down)
    if length is not None:
        n_out = min(n_out, length)
    j = np.arange(n_out, dtype=np.int64)
    base, phase = (j * down) // up, (j * down) % up
    padded = np.concatenate([np.zeros(half, np.float32), x, np.zeros(half + 1, np.float32)])
    out = np.empty(n_out, dtype=np.float32)
    taps = np.arange(2 * half)
    for begin in range(0, n_out, 4096):  # bounded memory for long files
        sl = slice(begin, begin + 4096)
        idx = base[sl, None] + 1 + taps[None, :]  # = (base - half + 1 + tap) shifted by the padding
        out[sl] = np.einsum("ij,ij->i", padded[idx], weights[phase[sl]])
    return out


def fix_length(x: np.ndarray, length: int) -> np.ndarray:
    """Trim to ``length`` samples or zero-pad at the end."""
    if len(x) >= length:
        return x[:length]
    return np.concatenate([x, np.zeros(length - len(x), dtype=np.float32)])


class _Bad(Exception):
    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.why = why


def load_audio(path: Path, sample_rate: int, samples: int) -> np.ndarray:
    """One file as a mono float32 waveform of exactly ``samples`` samples at ``sample_rate``."""
    if not path.is_file():
        raise _Bad(str(path), "file not found")
    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            # read only what the clip needs, plus what the resampler looks ahead
            needed = samples if rate == sample_rate else math.ceil(samples * rate / sample_rate) + _lookahead(rate, sample_rate)
            data = f.read(frames=needed, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as e:
        # libsndfile names the resolved path ("Error opening '/srv/media/x.wav': ..."): a server never shows it
        reason = str(e).replace(f"'{path}'", "the file").replace(str(path), "the file").strip()
        raise _Bad(str(path), f"cannot decode audio ({reason or type(e).__name__})") from None
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise _Bad(str(path), "audio contains NaN or infinite samples")
    return fix_length(resample(mono, rate, sample_rate, length=samples), samples)


@FEATURE_TYPES.register("audio")
class AudioFeature(FeatureType):
    Config = AudioConfig
    infer_priority = 40

    @classmethod
    def infer(cls, column: pd.Series, stats: dict) -> bool:
        return extension_ratio(column, AUDIO_EXTENSIONS) >= 0.9

    # -- decoding ----------------------------------------------------------------------------
    def _decode(self, column: pd.Series) -> tuple[list[np.ndarray | None], list[str]]:
        cfg: AudioConfig = self.config
        rate, samples = self.state.get("sample_rate", cfg.sample_rate), self.state.get("samples", cfg.samples)
        base = Path(column.attrs["base_dir"]) if column.attrs.get("base_dir") else None

        def one(value: object) -> tuple[np.ndarray | None, str | None]:
            if not isinstance(value, str) or not value.strip():
                return None, f"{value!r}: no audio path"
            path = resolve(value, base)  # a path outside the data folder is always an error
            try:
                return load_audio(path, rate, samples), None
            except _Bad as e:  # named as given, never by the resolved (server) path
                return None, f"{value.strip()}: {e.why}"

        values = column.tolist()
        if len(values) < 64:
            results = [one(v) for v in values]
        else:
            with ThreadPoolExecutor(max_workers=4) as pool:  # libsndfile releases the GIL
                results = list(pool.map(one, values))
        return [r[0] for r in results], [r[1] for r in results if r[1]]

    def _raise(self, errors: list[str]) -> None:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        hint = "; set on_error: skip to leave such rows out of training" if self.config.on_error == "error" else ""
        raise LoopmlError(f"audio column '{self.column}': {errors[0]}{more}{hint}")

    def missing_rows(self, column: pd.Series) -> pd.Series:
        if self.config.on_error != "skip":
            return pd.Series(False, index=column.index)
        waves, _ = self._decode(column)
        bad = pd.Series([w is None for w in waves], index=column.index)
        self.skipped = getattr(self, "skipped", 0) + int(bad.sum())  # summed over the splits
        return bad

    # -- fitting and transforming --------------------------------------------------------------
    def fit(self, column: pd.Series) -> dict:
        from loopml.models.audio_encoders import AudioFrontend

        cfg: AudioConfig = self.config
        self.state = {"sample_rate": cfg.sample_rate, "samples": cfg.samples, "n_fft": cfg.n_fft,
                      "hop_length": cfg.hop}
        waves = self.transform(column)
        if not len(waves):
            raise LoopmlError(f"audio column '{self.column}': no training clips to fit on")
        self._memo = (self._memo_key(column), waves)  # the training split's transform comes next: decode once
        frontend = AudioFrontend(cfg.sample_rate, cfg.n_fft, cfg.hop, cfg.n_mels, cfg.n_mfcc, cfg.representation)
        total = sq = None
        count = 0
        with torch.no_grad():
            for begin in range(0, len(waves), 256):
                spec = frontend(waves[begin : begin + 256]).double()  # [B, bands, frames]
                s, q = spec.sum(dim=(0, 2)), spec.pow(2).sum(dim=(0, 2))
                total, sq = (s, q) if total is None else (total + s, sq + q)
                count += spec.shape[0] * spec.shape[2]
        mean = total / max(count, 1)
        std = (sq / max(count, 1) - mean**2).clamp(min=0).sqrt().clamp(min=1e-3)
        self.state.update({"band_mean": mean.tolist(), "band_std": std.tolist()})
        return self.state

    def _memo_key(self, column: pd.Series) -> tuple:
        return (column.attrs.get("base_dir"), tuple(column.tolist()), self.state.get("sample_rate"),
                self.state.get("samples"))

    def transform(self, column: pd.Series) -> torch.Tensor:
        memo, self._memo = getattr(self, "_memo", None), None
        if memo is not None and memo[0] == self._memo_key(column):
            return memo[1]
        waves, errors = self._decode(column)
        if errors:
            self._raise(errors)
        samples = self.state.get("samples", self.config.samples)
        if not waves:
            return torch.zeros(0, samples)
        return torch.from_numpy(np.stack(waves).astype(np.float32, copy=False))

    def encoder_inputs(self) -> dict:
        cfg: AudioConfig = self.config
        s = self.state
        return {
            "sample_rate": s["sample_rate"], "samples": s["samples"], "n_fft": s["n_fft"],
            "hop_length": s["hop_length"], "n_mels": cfg.n_mels, "n_mfcc": cfg.n_mfcc,
            "representation": cfg.representation, "band_mean": s["band_mean"], "band_std": s["band_std"],
            "noise_snr_db": cfg.noise_snr_db, "shift_samples": round(cfg.time_shift * s["sample_rate"]),
            "freq_mask": cfg.freq_mask, "time_mask": cfg.time_mask,
        }
