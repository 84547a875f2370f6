"""Audio encoders: waveform -> (augment) -> log-mel / MFCC -> normalise -> (SpecAugment) -> CNN.

The spectrogram is plain torch (``torch.stft`` with a Hann window, an HTK mel filterbank and an
orthonormal DCT-II), computed inside ``forward`` so waveform augmentation can run per batch.
Augmentation only runs in training mode; in eval mode the output is deterministic.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from loopml.models.encoders import ENCODERS, Encoder, EncoderParams, pool


# -- spectrogram helpers ------------------------------------------------------------------------
def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular filters on the HTK mel scale: [n_fft // 2 + 1, n_mels], peak 1 each."""
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(hz_to_mel(torch.tensor(f_min)).item(), hz_to_mel(torch.tensor(f_max)).item(),
                          n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mels)  # n_mels + 2 points: lower edge, centre, upper edge of each filter
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lower[None, :]) / (centre - lower)[None, :]
    down = (upper[None, :] - freqs[:, None]) / (upper - centre)[None, :]
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def dct_matrix(n_mels: int, n_mfcc: int) -> torch.Tensor:
    """Orthonormal DCT-II as a [n_mels, n_mfcc] matrix (``log_mel.T @ dct`` gives MFCCs)."""
    n = torch.arange(n_mels, dtype=torch.float64)
    k = torch.arange(n_mfcc, dtype=torch.float64)
    dct = torch.cos(math.pi / n_mels * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_mels)
    dct[:, 0] /= math.sqrt(2.0)
    return dct.float()


def n_frames(samples: int, hop_length: int) -> int:
    """Frames of a centred STFT."""
    return samples // hop_length + 1


class AudioFrontend(nn.Module):
    """Waveforms [B, samples] -> log-mel [B, n_mels, frames] or MFCC [B, n_mfcc, frames]."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, n_mfcc: int,
                 representation: str) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.representation = n_fft, hop_length, representation
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mel", mel_filterbank(n_fft, sample_rate, n_mels), persistent=False)
        self.register_buffer("dct", dct_matrix(n_mels, n_mfcc), persistent=False)
        self.bands = n_mfcc if representation == "mfcc" else n_mels

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        stft = torch.stft(waves.float(), self.n_fft, self.hop_length, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = stft.real.pow(2) + stft.imag.pow(2)  # [B, freqs, frames]
        log_mel = torch.log(torch.einsum("bft,fm->bmt", power, self.mel) + 1e-6)
        if self.representation == "mfcc":
            return torch.einsum("bmt,mk->bkt", log_mel, self.dct)
        return log_mel


# -- augmentation (training only) ---------------------------------------------------------------
def add_noise(waves: torch.Tensor, snr_db: float, probability: float = 0.5) -> torch.Tensor:
    """White noise at an SNR drawn per example from [snr_db, snr_db + 20], on a random half of the examples.

    Half stay clean so the model still sees the clean (zero-padded) silence it meets at evaluation.
    """
    b = waves.shape[0]
    snr = snr_db + 20.0 * torch.rand(b, 1, device=waves.device)
    power = waves.pow(2).mean(dim=1, keepdim=True)
    noise_std = torch.sqrt(power / 10.0 ** (snr / 10.0))
    noise_std = noise_std * (torch.rand(b, 1, device=waves.device) < probability)
    return waves + noise_std * torch.randn_like(waves)


def random_shift(waves: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each example by up to +- ``max_shift`` samples, zero-filling what comes in."""
    b, n = waves.shape
    shift = torch.randint(-max_shift, max_shift + 1, (b, 1), device=waves.device)
    source = torch.arange(n, device=waves.device)[None, :] - shift
    valid = (source >= 0) & (source < n)
    return torch.gather(waves, 1, source.clamp(0, n - 1)) * valid


def spec_mask(spec: torch.Tensor, width: int, axis: int) -> torch.Tensor:
    """One SpecAugment mask per example of up to ``width`` rows (axis 1) or frames (axis 2), set to 0."""
    b, size = spec.shape[0], spec.shape[axis]
    width = min(width, size)
    w = torch.randint(0, width + 1, (b, 1), device=spec.device)
    start = (torch.rand(b, 1, device=spec.device) * (size - w + 1)).long()
    pos = torch.arange(size, device=spec.device)[None, :]
    mask = (pos >= start) & (pos < start + w)  # [B, size]
    mask = mask[:, :, None] if axis == 1 else mask[:, None, :]
    return spec.masked_fill(mask, 0.0)


class AudioInput(nn.Module):
    """The shared front of the audio encoders: augment, spectrogram, per-band normalisation."""

    def __init__(self, *, sample_rate: int, samples: int, n_fft: int, hop_length: int, n_mels: int, n_mfcc: int,
                 representation: str, band_mean: list[float], band_std: list[float],
                 noise_snr_db: float | None = None, shift_samples: int = 0, freq_mask: int = 0, time_mask: int = 0,
                 **_: object) -> None:
        super().__init__()
        self.frontend = AudioFrontend(sample_rate, n_fft, hop_length, n_mels, n_mfcc, representation)
        self.register_buffer("mean", torch.tensor(band_mean, dtype=torch.float32)[:, None], persistent=False)
        self.register_buffer("std", torch.tensor(band_std, dtype=torch.float32)[:, None], persistent=False)
        self.noise_snr_db, self.shift_samples = noise_snr_db, shift_samples
        self.freq_mask, self.time_mask = freq_mask, time_mask
        self.shape = (self.frontend.bands, n_frames(samples, hop_length))  # (bands, frames)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        if self.training:
            if self.shift_samples:
                waves = random_shift(waves, self.shift_samples)
            if self.noise_snr_db is not None:
                waves = add_noise(waves, self.noise_snr_db)
        spec = (self.frontend(waves) - self.mean) / self.std
        if self.training:
            if self.freq_mask:
                spec = spec_mask(spec, self.freq_mask, 1)
            if self.time_mask:
                spec = spec_mask(spec, self.time_mask, 2)
        return spec  # [B, bands, frames]


# -- encoders -----------------------------------------------------------------------------------
def conv_blocks(channels: list[int], shape: tuple[int, int]) -> tuple[nn.Sequential, tuple[int, int]]:
    """conv3x3-BN-ReLU-maxpool per entry; pooling halves each axis that is still at least 2 long."""
    layers: list[nn.Module] = []
    c_in, (h, w) = 1, shape
    for c in channels:
        kernel = (2 if h >= 2 else 1, 2 if w >= 2 else 1)
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                   nn.MaxPool2d(kernel)]
        c_in, h, w = c, h // kernel[0], w // kernel[1]
    return nn.Sequential(*layers), (h, w)


@ENCODERS.register("audio_cnn")
class AudioCNN(Encoder):
    """A 2-D CNN over the (normalised, augmented) spectrogram, global average + max pooled."""

    class Params(EncoderParams):
        type: Literal["audio_cnn"] = "audio_cnn"
        #: output channels of each conv-BN-ReLU-pool block; four blocks see about half a second of
        #: a 10 ms-hop spectrogram, enough for a short word (three learned far slower on FSDD)
        channels: list[int] = Field([16, 32, 64, 128], min_length=1)
        dropout: float = Field(0.2, ge=0.0, lt=1.0)

    feature_types = ("audio",)

    def __init__(self, params: Params, **inputs: object) -> None:
        super().__init__()
        self.input = AudioInput(**inputs)
        self.blocks, _ = conv_blocks(params.channels, self.input.shape)
        self.dropout = nn.Dropout(params.dropout)
        self.output_dim = 2 * params.channels[-1]

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.input(waves).unsqueeze(1))  # [B, C, H, W]
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.dropout(pooled)


@ENCODERS.register("audio_crnn")
class AudioCRNN(Encoder):
    """CNN blocks, then a BiLSTM over time (frequency folded into features), mean + max pooled."""

    class Params(EncoderParams):
        type: Literal["audio_crnn"] = "audio_crnn"
        #: output channels of each conv-BN-ReLU-pool block
        channels: list[int] = Field([32, 64], min_length=1)
        hidden_size: int = Field(64, ge=1)
        num_layers: int = Field(1, ge=1)
        dropout: float = Field(0.2, ge=0.0, lt=1.0)

    feature_types = ("audio",)

    def __init__(self, params: Params, **inputs: object) -> None:
        super().__init__()
        self.input = AudioInput(**inputs)
        self.blocks, (h, _) = conv_blocks(params.channels, self.input.shape)
        self.lstm = nn.LSTM(params.channels[-1] * h, params.hidden_size, num_layers=params.num_layers,
                            batch_first=True, bidirectional=True,
                            dropout=params.dropout if params.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(params.dropout)
        self.output_dim = 4 * params.hidden_size

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.input(waves).unsqueeze(1))  # [B, C, H, T]
        seq = h.flatten(1, 2).transpose(1, 2)  # [B, T, C * H]
        out, _ = self.lstm(seq)
        mask = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
        return self.dropout(pool(out, mask, "mean_max"))
