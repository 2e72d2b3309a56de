"""Kaldi-style MFCCs with Δ and ΔΔ, batched in torch: the features of HuBERT's first iteration.

HuBERT's first-iteration targets are k-means clusters (100) of 39-dimensional MFCC frames:
13 cepstra + Δ + ΔΔ at 100 frames/s, computed with Kaldi-compatible options as fairseq's
``simple_kmeans/dump_mfcc_feature.py`` does through torchaudio (whose defaults are Kaldi's
except ``dither=0`` and ``use_energy=False``). Our defaults follow that recipe:

====================  ==========================================================================
frames                25 ms window (400 samples), 10 ms hop (160), ``snip_edges``: a frame is
                      taken only where it fits, ``N = 1 + (T − 400) // 160`` (0 if T < 400)
per frame             remove the DC offset; pre-emphasis 0.97 (``x[i] −= 0.97·x[i−1]``, and
                      ``x[0] −= 0.97·x[0]``); Povey window ``(½ − ½cos(2πn/(L−1)))^0.85``;
                      zero-pad to 512; power spectrum |X|²
mel filterbank        **23** triangular filters (Kaldi's and torchaudio's default, used by
                      HuBERT; 40 is the other common choice, ``num_mel_bins=40``) equally
                      spaced on mel = 1127·ln(1 + f/700) between 20 Hz and Nyquist, over FFT
                      bins 0..255 (Kaldi leaves out the Nyquist bin)
cepstra               log(max(E, FLT_EPSILON)) of the filter energies, orthonormal DCT-II,
                      first 13 kept; **C0 is kept** (``use_energy=False``, HuBERT's choice;
                      ``use_energy=True`` replaces C0 by the log raw frame energy, Kaldi's own
                      default); lifter 22: ``c_i ·= 1 + 11·sin(πi/22)``
no dither             deterministic features (Kaldi's default dither is 1.0)
deltas                window 2: ``Δ_t = Σ_{n=1..2} n (c_{t+n} − c_{t−n}) / 10`` with the first/last
                      valid frame repeated at the edges; ΔΔ = Δ of Δ (torchaudio's
                      ``compute_deltas`` applied twice, as HuBERT; Kaldi's ``add-deltas`` differs
                      only in the 4 frames nearest each edge)
====================  ==========================================================================

50 Hz targets. The encoders emit 50 frames/s. HuBERT clusters the 100 Hz MFCC frames and keeps
``label_rate=100``; the model then reads every other label (frames 0, 2, 4, …), which is
:func:`subsample_frames` with factor 2. Its frame count, ``ceil(N/2)``, equals the encoder's
``1 + (T − 400) // 320`` for every T ≥ 400, and frame 2k starts at sample 320k like encoder
frame k. (A 20 ms hop, ``frame_shift_ms=20``, gives the same count and alignment but loses the
100 Hz Δ context.)

Waveforms are float in [−1, 1] (as soundfile reads them; Kaldi's tools see 16-bit integers,
which only shifts C0 by a constant).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal, Tuple

import numpy as np
import torch

FLT_EPSILON = float(np.finfo(np.float32).eps)
WINDOWS = ("povey", "hanning", "hamming", "rectangular")


class FeatureError(ValueError):
    """Bad feature options or inputs; the message says which value and how to fix it."""


@dataclasses.dataclass(frozen=True)
class MfccOptions:
    """Kaldi ``compute-mfcc-feats`` options (only those that change the result here).

    Attributes:
        sample_rate: Hz. frame_length_ms / frame_shift_ms: window and hop in milliseconds.
        num_mel_bins: triangular mel filters (23 default, 40 common).
        num_ceps: cepstra kept, C0 included. cepstral_lifter: Q of the sine lifter (0 = none).
        preemphasis: coefficient (0 = none). window: ``povey``/``hanning``/``hamming``/``rectangular``.
        low_freq: Hz. high_freq: Hz; <= 0 means Nyquist + high_freq.
        use_energy: replace C0 by the log raw frame energy. energy_floor: floor on that energy (0 = none).
        remove_dc_offset: subtract each frame's mean first.
    """

    sample_rate: int = 16000
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    num_mel_bins: int = 23
    num_ceps: int = 13
    cepstral_lifter: float = 22.0
    preemphasis: float = 0.97
    window: Literal["povey", "hanning", "hamming", "rectangular"] = "povey"
    low_freq: float = 20.0
    high_freq: float = 0.0
    use_energy: bool = False
    energy_floor: float = 0.0
    remove_dc_offset: bool = True

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise FeatureError(f"MFCC window {self.window!r} is not one of {list(WINDOWS)}")
        if self.frame_length < 2 or self.frame_shift < 1:
            raise FeatureError(f"MFCC frame_length_ms={self.frame_length_ms} / frame_shift_ms={self.frame_shift_ms} "
                               f"give {self.frame_length}/{self.frame_shift} samples at {self.sample_rate} Hz")
        if not 1 <= self.num_ceps <= self.num_mel_bins:
            raise FeatureError(f"MFCC num_ceps={self.num_ceps} must be in [1, num_mel_bins={self.num_mel_bins}]")
        nyquist = self.sample_rate / 2
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        if not 0 <= self.low_freq < high <= nyquist:
            raise FeatureError(f"MFCC mel range low_freq={self.low_freq} .. high_freq={high} Hz must satisfy "
                               f"0 <= low < high <= Nyquist ({nyquist})")

    @property
    def frame_length(self) -> int:
        """Window length in samples."""
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def frame_shift(self) -> int:
        """Hop in samples."""
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def fft_size(self) -> int:
        """Window length rounded up to a power of two (Kaldi's ``round_to_power_of_two``)."""
        return 1 << (self.frame_length - 1).bit_length()


def num_frames(num_samples: torch.Tensor, options: MfccOptions = MfccOptions()) -> torch.Tensor:
    """Frames per utterance with ``snip_edges``: ``1 + (T − L) // hop`` if ``T >= L`` else 0. ``[B]`` -> ``[B]``."""
    num_samples = torch.as_tensor(num_samples)
    frames = 1 + torch.div(num_samples - options.frame_length, options.frame_shift, rounding_mode="floor")
    return torch.where(num_samples >= options.frame_length, frames, torch.zeros_like(frames))


def _mel(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=16)
def _mel_banks(options: MfccOptions) -> np.ndarray:
    """``[fft_size//2 + 1, num_mel_bins]`` triangular weights (Nyquist row zero), float64."""
    fft_bins = options.fft_size // 2
    nyquist = options.sample_rate / 2
    high = options.high_freq if options.high_freq > 0 else nyquist + options.high_freq
    mel_low, mel_high = _mel(np.float64(options.low_freq)), _mel(np.float64(high))
    delta = (mel_high - mel_low) / (options.num_mel_bins + 1)
    bin_mel = _mel(np.arange(fft_bins, dtype=np.float64) * options.sample_rate / options.fft_size)
    banks = np.zeros((fft_bins + 1, options.num_mel_bins))
    for index in range(options.num_mel_bins):
        left, center, right = (mel_low + (index + k) * delta for k in range(3))
        rising = (bin_mel - left) / (center - left)
        falling = (right - bin_mel) / (right - center)
        inside = (bin_mel > left) & (bin_mel < right)
        banks[:fft_bins, index] = np.where(inside, np.where(bin_mel <= center, rising, falling), 0.0)
    return banks


@functools.lru_cache(maxsize=16)
def _dct_lifter(options: MfccOptions) -> np.ndarray:
    """``[num_mel_bins, num_ceps]``: orthonormal DCT-II rows times the lifter, float64."""
    bins = options.num_mel_bins
    n = np.arange(bins) + 0.5
    k = np.arange(options.num_ceps)[:, None]
    dct = np.sqrt(2.0 / bins) * np.cos(np.pi / bins * n[None, :] * k)
    dct[0] = np.sqrt(1.0 / bins)
    lifter = np.ones(options.num_ceps)
    if options.cepstral_lifter:
        q = options.cepstral_lifter
        lifter = 1.0 + 0.5 * q * np.sin(np.pi * np.arange(options.num_ceps) / q)
    return (dct * lifter[:, None]).T


def _window(options: MfccOptions) -> np.ndarray:
    length = options.frame_length
    n = np.arange(length)
    hanning = 0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))
    if options.window == "povey":
        return hanning ** 0.85
    if options.window == "hanning":
        return hanning
    if options.window == "hamming":
        return 0.54 - 0.46 * np.cos(2 * np.pi * n / (length - 1))
    return np.ones(length)


def _check_batch(wavs: torch.Tensor, lengths: torch.Tensor, where: str) -> torch.Tensor:
    if wavs.dim() != 2:
        raise FeatureError(f"{where}: waveforms must be [B, T] samples, found shape {tuple(wavs.shape)}")
    lengths = torch.as_tensor(lengths, device=wavs.device)
    if tuple(lengths.shape) != (wavs.shape[0],):
        raise FeatureError(f"{where}: lengths must be [B] = [{wavs.shape[0]}], found {tuple(lengths.shape)}")
    if bool((lengths < 0).any()) or bool((lengths > wavs.shape[1]).any()):
        raise FeatureError(f"{where}: lengths {lengths.tolist()} outside [0, {wavs.shape[1]}] samples")
    return lengths


def _log_mel_and_energy(wavs: torch.Tensor, lengths: torch.Tensor, options: MfccOptions, where: str
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shared front end: ``(log_mel [B, N, bins], log_energy [B, N], valid [B, N], frame_lengths [B])``."""
    lengths = _check_batch(wavs, lengths, where)
    frame_lengths = num_frames(lengths, options)
    batch = wavs.shape[0]
    total = int(frame_lengths.max()) if batch else 0
    device = wavs.device
    if total == 0:
        empty = wavs.new_zeros(batch, 0)
        return wavs.new_zeros(batch, 0, options.num_mel_bins), empty, empty.bool(), frame_lengths
    span = options.frame_length + (total - 1) * options.frame_shift
    frames = wavs[:, :span].float().unfold(1, options.frame_length, options.frame_shift)  # [B, N, L]
    if options.remove_dc_offset:
        frames = frames - frames.mean(dim=-1, keepdim=True)
    log_energy = frames.pow(2).sum(-1).clamp_min(FLT_EPSILON).log()  # raw energy: before pre-emphasis
    if options.energy_floor > 0:
        log_energy = log_energy.clamp_min(math.log(options.energy_floor))
    if options.preemphasis:
        first = frames[..., :1] * (1.0 - options.preemphasis)
        frames = torch.cat([first, frames[..., 1:] - options.preemphasis * frames[..., :-1]], dim=-1)
    frames = frames * torch.as_tensor(_window(options), dtype=torch.float32, device=device)
    power = torch.fft.rfft(frames, n=options.fft_size).abs().pow(2)  # [B, N, fft/2+1]
    banks = torch.as_tensor(_mel_banks(options), dtype=torch.float32, device=device)
    log_mel = torch.matmul(power, banks).clamp_min(FLT_EPSILON).log()
    valid = torch.arange(total, device=device)[None, :] < frame_lengths[:, None]
    return log_mel, log_energy, valid, frame_lengths


def log_mel_filterbank(wavs: torch.Tensor, lengths: torch.Tensor, options: MfccOptions = MfccOptions()
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kaldi ``fbank`` features (log mel energies) of a padded batch.

    Args:
        wavs: ``[B, T]`` float waveforms (samples in [−1, 1]); lengths: ``[B]`` valid samples.
    Returns:
        ``(features [B, N, num_mel_bins] float32, frame_lengths [B] int64)``; frames past an
        utterance's own count are zero.
    """
    log_mel, _, valid, frame_lengths = _log_mel_and_energy(wavs, lengths, options, "log_mel_filterbank")
    return log_mel.masked_fill(~valid[..., None], 0.0), frame_lengths


def mfcc(wavs: torch.Tensor, lengths: torch.Tensor, options: MfccOptions = MfccOptions()
         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Static MFCCs of a padded batch.

    Args:
        wavs: ``[B, T]`` float waveforms (samples in [−1, 1]).
        lengths: ``[B]`` valid samples per utterance.
    Returns:
        ``(features [B, N, num_ceps] float32, frame_lengths [B] int64)``; ``N`` is the frame count
        of the longest utterance, frames past an utterance's own count are zero.
    """
    log_mel, log_energy, valid, frame_lengths = _log_mel_and_energy(wavs, lengths, options, "mfcc")
    if log_mel.shape[1] == 0:
        return log_mel.new_zeros(wavs.shape[0], 0, options.num_ceps), frame_lengths
    cepstra = torch.matmul(log_mel, torch.as_tensor(_dct_lifter(options), dtype=torch.float32, device=wavs.device))
    if options.use_energy:
        cepstra = torch.cat([log_energy[..., None], cepstra[..., 1:]], dim=-1)
    return cepstra.masked_fill(~valid[..., None], 0.0), frame_lengths


def compute_deltas(features: torch.Tensor, frame_lengths: torch.Tensor, window: int = 2) -> torch.Tensor:
    """Regression deltas along time with each utterance's edge frames repeated.

    ``Δ_t = Σ_{n=1..w} n (c_{min(t+n, n_b−1)} − c_{max(t−n, 0)}) / (2 Σ n²)``.

    Args:
        features: ``[B, N, C]``; frame_lengths: ``[B]`` valid frames.
    Returns:
        ``[B, N, C]``, zero past each utterance's frames.
    """
    if window < 1:
        raise FeatureError(f"compute_deltas: window must be >= 1, found {window}")
    batch, total, _ = features.shape
    frame_lengths = torch.as_tensor(frame_lengths, device=features.device)
    if total == 0:
        return features.clone()
    time = torch.arange(total, device=features.device)[None, :]
    last = (frame_lengths[:, None] - 1).clamp_min(0)
    denominator = 2.0 * sum(n * n for n in range(1, window + 1))
    def frames_at(index: torch.Tensor) -> torch.Tensor:
        return torch.gather(features, 1, index.expand(batch, total)[..., None].expand_as(features))

    deltas = torch.zeros_like(features)
    for n in range(1, window + 1):
        ahead = torch.minimum(time + n, last)
        behind = (time - n).clamp_min(0).minimum(last)
        deltas = deltas + n * (frames_at(ahead) - frames_at(behind))
    deltas = deltas / denominator
    valid = time < frame_lengths[:, None]
    return deltas.masked_fill(~valid[..., None], 0.0)


def mfcc_deltas(wavs: torch.Tensor, lengths: torch.Tensor, options: MfccOptions = MfccOptions()
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """MFCC + Δ + ΔΔ at the options' frame rate: ``[B, N, 3·num_ceps]`` (39 by default), frame lengths ``[B]``."""
    static, frame_lengths = mfcc(wavs, lengths, options)
    delta = compute_deltas(static, frame_lengths)
    delta_delta = compute_deltas(delta, frame_lengths)
    return torch.cat([static, delta, delta_delta], dim=-1), frame_lengths


def subsample_frames(features: torch.Tensor, frame_lengths: torch.Tensor, factor: int = 2
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep frames 0, factor, 2·factor, …: ``[B, N, C]`` -> ``[B, ceil(N/factor), C]``, lengths ceil(n/factor)."""
    if factor < 1:
        raise FeatureError(f"subsample_frames: factor must be >= 1, found {factor}")
    frame_lengths = torch.as_tensor(frame_lengths, device=features.device)
    return features[:, ::factor], torch.div(frame_lengths + factor - 1, factor, rounding_mode="floor")


def hubert_mfcc_features(wavs: torch.Tensor, lengths: torch.Tensor, *, label_rate: int = 50,
                         options: MfccOptions = MfccOptions()) -> Tuple[torch.Tensor, torch.Tensor]:
    """HuBERT first-iteration features: 39-dim MFCC+Δ+ΔΔ at 100 Hz, optionally read at 50 Hz.

    Args:
        wavs: ``[B, T]`` 16 kHz waveforms; lengths: ``[B]`` samples.
        label_rate: 100 (every MFCC frame: fit k-means on these, as HuBERT does) or 50 (every
            other frame: one per encoder frame, the labels the model is trained on).
    Returns:
        ``(features [B, N, 39], frame_lengths [B])``.
    """
    if label_rate not in (50, 100):
        raise FeatureError(f"hubert_mfcc_features: label_rate must be 50 or 100 (Hz), found {label_rate}")
    if options.sample_rate != 16000:
        raise FeatureError(f"hubert_mfcc_features: the encoders run at 16 kHz; found sample_rate={options.sample_rate} "
                           "(resample the audio first)")
    if options.frame_shift_ms != 10.0:
        raise FeatureError("hubert_mfcc_features: the MFCC hop must be 10 ms (100 Hz); "
                           f"found frame_shift_ms={options.frame_shift_ms}")
    features, frame_lengths = mfcc_deltas(wavs, lengths, options)
    if label_rate == 50:
        return subsample_frames(features, frame_lengths, 2)
    return features, frame_lengths
