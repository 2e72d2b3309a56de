"""Kaldi-style log-mel filterbank ("fbank") for batches of waveforms, in torch.

Per utterance, with the textbook (Kaldi ``compute-fbank-feats``) recipe:

1. the waveform is scaled by ``input_scale`` (32768: Kaldi works on 16-bit sample values);
2. frames of 25 ms every 10 ms (400 / 160 samples at 16 kHz); only whole frames, so an
   utterance of L samples has 1 + (L - 400) // 160 frames (0 if L < 400);
3. per frame: Gaussian dither of standard deviation ``dither`` (0 = off), the frame mean
   removed, pre-emphasis x[n] - 0.97 x[n-1] (x[-1] taken as x[0]), then the window: Hamming
   0.54 - 0.46 cos(2πn/(M-1)) or Povey (0.5 - 0.5 cos(2πn/(M-1)))^0.85;
4. zero-padded to 512 samples, power spectrum |FFT|²;
5. ``num_mel_bins`` triangular filters, equally spaced on the mel scale
   1127 ln(1 + f/700) between ``low_freq`` and ``high_freq`` (<= 0: that much below
   Nyquist), applied to FFT bins 0..255 (the Nyquist bin is not used);
6. natural log, floored at the float32 machine epsilon;
7. optionally the mean of each bin over the utterance's valid frames subtracted (CMN).

Hamming is the default window because the fbank ECAPA-TDNN baselines of WeSpeaker use it
(with CMN); Kaldi's own default is Povey.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal, Optional, Tuple

import torch
from torch import nn

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


@dataclasses.dataclass
class FbankConfig:
    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: Literal["hamming", "povey"] = "hamming"
    preemphasis: float = 0.97
    dither: float = 0.0
    low_freq: float = 20.0
    high_freq: float = 0.0
    input_scale: float = 32768.0
    mean_norm: bool = True


def mel_scale(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(freq / 700.0)


def mel_filterbank(num_bins: int, fft_size: int, sample_rate: int, low_freq: float, high_freq: float
                   ) -> torch.Tensor:
    """Triangular mel filters ``[num_bins, fft_size // 2]`` in float64 (rows: filters)."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq = nyquist + high_freq
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"fbank needs 0 <= low_freq < high_freq <= {nyquist} Hz, got {low_freq} and {high_freq}")
    mel_low = mel_scale(torch.tensor(low_freq, dtype=torch.float64))
    mel_high = mel_scale(torch.tensor(high_freq, dtype=torch.float64))
    step = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + step * torch.arange(num_bins, dtype=torch.float64)[:, None]
    center, right = left + step, left + 2 * step
    bin_mel = mel_scale(torch.arange(fft_size // 2, dtype=torch.float64) * sample_rate / fft_size)[None, :]
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def window_function(kind: str, length: int) -> torch.Tensor:
    n = torch.arange(length, dtype=torch.float64)
    cosine = torch.cos(2 * math.pi * n / (length - 1))
    if kind == "hamming":
        return 0.54 - 0.46 * cosine
    if kind == "povey":
        return (0.5 - 0.5 * cosine) ** 0.85
    raise ValueError(f"unknown window '{kind}'; expected 'hamming' or 'povey'")


class Fbank(nn.Module):
    """Batched log-mel filterbank. No trainable parameters; buffers follow ``.to(device)``."""

    def __init__(self, config: Optional[FbankConfig] = None) -> None:
        super().__init__()
        self.config = config or FbankConfig()
        cfg = self.config
        self.frame_length = int(round(cfg.sample_rate * cfg.frame_length_ms / 1000.0))
        self.frame_shift = int(round(cfg.sample_rate * cfg.frame_shift_ms / 1000.0))
        if self.frame_length < 2 or self.frame_shift < 1:
            raise ValueError(f"frame length {cfg.frame_length_ms} ms / shift {cfg.frame_shift_ms} ms are too short at "
                             f"{cfg.sample_rate} Hz")
        self.fft_size = 1 << (self.frame_length - 1).bit_length()
        self.register_buffer("window", window_function(cfg.window, self.frame_length).float(), persistent=False)
        filters = mel_filterbank(cfg.num_mel_bins, self.fft_size, cfg.sample_rate, cfg.low_freq, cfg.high_freq)
        self.register_buffer("filters", filters.float(), persistent=False)

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames ``[B]`` of waveforms of ``lengths`` ``[B]`` samples."""
        frames = torch.div(lengths - self.frame_length, self.frame_shift, rounding_mode="floor") + 1
        return torch.clamp(frames, min=0)

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """wavs: ``[B, T]`` float samples in [-1, 1] at ``sample_rate``; lengths: ``[B]`` samples.
        Returns features ``[B, N, num_mel_bins]`` (frames past an utterance's length are zero)
        and frame lengths ``[B]``. ``generator`` seeds the dither (on the device of ``wavs``)."""
        if wavs.dim() != 2:
            raise ValueError(f"expected waveforms [batch, samples], found shape {tuple(wavs.shape)}")
        cfg = self.config
        lengths = lengths.to(wavs.device)
        frame_counts = self.num_frames(lengths)
        num_frames = int(frame_counts.max()) if frame_counts.numel() else 0
        batch = wavs.shape[0]
        if num_frames == 0:
            return wavs.new_zeros(batch, 0, cfg.num_mel_bins), frame_counts
        needed = (num_frames - 1) * self.frame_shift + self.frame_length
        signal = wavs.float() * cfg.input_scale
        if signal.shape[1] < needed:
            signal = torch.nn.functional.pad(signal, (0, needed - signal.shape[1]))
        frames = signal.unfold(1, self.frame_length, self.frame_shift)[:, :num_frames]  # [B, N, M]
        if cfg.dither > 0.0:
            noise = torch.randn(frames.shape, generator=generator, device=frames.device, dtype=frames.dtype)
            frames = frames + cfg.dither * noise
        frames = frames - frames.mean(dim=-1, keepdim=True)
        if cfg.preemphasis > 0.0:
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = frames - cfg.preemphasis * previous
        frames = frames * self.window
        spectrum = torch.fft.rfft(frames, n=self.fft_size, dim=-1)
        power = spectrum.real.square() + spectrum.imag.square()
        energies = power[..., : self.fft_size // 2] @ self.filters.T
        features = torch.log(torch.clamp(energies, min=FLOAT32_EPS))
        valid = (torch.arange(num_frames, device=wavs.device)[None, :] < frame_counts[:, None])[..., None]
        features = features * valid
        if cfg.mean_norm:
            counts = torch.clamp(frame_counts, min=1)[:, None, None].to(features.dtype)
            features = (features - features.sum(dim=1, keepdim=True) / counts) * valid
        return features, frame_counts
