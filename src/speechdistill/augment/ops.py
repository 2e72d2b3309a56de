"""Batched signal operations on padded waveforms ``[B, T]`` with valid ``lengths`` ``[B]`` (samples).

Every operation works on any device and leaves the padding (samples ``t >= lengths[b]``) at
zero; levels and SNRs are measured on the valid part only, so a short utterance in a batch of
long ones gets exactly the SNR it was asked for.
"""
from __future__ import annotations

import math

import torch


def valid_mask(lengths: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``[B, T]`` bool, True where ``t < lengths[b]``."""
    return torch.arange(num_samples, device=lengths.device)[None, :] < lengths[:, None]


def check_batch(wavs: torch.Tensor, lengths: torch.Tensor) -> None:
    if wavs.dim() != 2:
        raise ValueError(f"expected waveforms of shape [batch, samples], found shape {tuple(wavs.shape)}")
    if lengths.shape != (wavs.shape[0],):
        raise ValueError(f"expected lengths of shape [{wavs.shape[0]}], found {tuple(lengths.shape)}")
    if bool((lengths > wavs.shape[1]).any()) or bool((lengths < 0).any()):
        raise ValueError(f"lengths must lie in [0, {wavs.shape[1]}] (the padded length); found "
                         f"{lengths.min().item()}..{lengths.max().item()}")


def mean_power(x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean square over the valid samples of each row: ``[B]``."""
    return (x.square() * mask).sum(dim=1) / lengths.clamp(min=1).to(x.dtype)


def scale_to_snr(clean: torch.Tensor, noise: torch.Tensor, lengths: torch.Tensor, snr_db: torch.Tensor
                 ) -> torch.Tensor:
    """``noise`` ``[B, T]`` scaled so that clean/noise power over the valid part is ``snr_db`` ``[B]`` dB.

    The result is zero in the padding. A row whose clean part or noise is all zeros gets no noise.
    """
    mask = valid_mask(lengths, clean.shape[1])
    p_clean = mean_power(clean, mask, lengths)
    p_noise = mean_power(noise, mask, lengths)
    target = p_clean * torch.pow(10.0, -snr_db.to(clean.dtype) / 10.0)
    gain = torch.where(p_noise > 0, torch.sqrt(target / p_noise.clamp(min=1e-30)), torch.zeros_like(p_noise))
    return noise * gain[:, None] * mask


def add_noise(clean: torch.Tensor, noise: torch.Tensor, lengths: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """``clean + noise`` with the noise scaled to ``snr_db`` per row (see :func:`scale_to_snr`)."""
    return clean + scale_to_snr(clean, noise, lengths, snr_db)


def measure_snr(clean: torch.Tensor, noisy: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """SNR in dB of ``noisy`` against ``clean`` over the valid part of each row: ``[B]``."""
    mask = valid_mask(lengths, clean.shape[1])
    p_clean = mean_power(clean.double(), mask, lengths)
    p_noise = mean_power((noisy - clean).double(), mask, lengths)
    return (10.0 * torch.log10(p_clean / p_noise)).to(clean.dtype)


def fast_fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (sizes the FFT libraries are fastest at)."""
    best = 1 << max(0, (n - 1).bit_length())
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35
            while size < n:
                size *= 2
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


def fft_convolve_aligned(wavs: torch.Tensor, lengths: torch.Tensor, rirs: torch.Tensor, delays: torch.Tensor
                         ) -> torch.Tensor:
    """Reverberate each row with its RIR, keeping the output time-aligned with the input.

    ``wavs`` ``[B, T]``, ``rirs`` ``[B, L]`` (zero-padded), ``delays`` ``[B]`` samples: output
    sample ``t`` is full-convolution sample ``t + delays[b]``, so a RIR whose direct path is at
    ``delays[b]`` maps the dry sound at ``t`` onto ``t``. The tail past ``lengths[b]`` is cut
    (the output has the input's length) and the padding stays zero.
    """
    batch, num_samples = wavs.shape
    size = fast_fft_size(num_samples + rirs.shape[1] - 1)
    spectrum = torch.fft.rfft(wavs, n=size) * torch.fft.rfft(rirs.to(wavs.dtype), n=size)
    full = torch.fft.irfft(spectrum, n=size)
    index = delays.to(wavs.device)[:, None] + torch.arange(num_samples, device=wavs.device)[None, :]
    out = torch.gather(full, 1, index)
    return out * valid_mask(lengths, num_samples)


def clip_peaks(wavs: torch.Tensor, lengths: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Hard-clip each row at ``ratio`` ``[B]`` times its own valid-part minimum and maximum (OS-KDFT clipping)."""
    mask = valid_mask(lengths, wavs.shape[1])
    big = torch.finfo(wavs.dtype).max
    low = torch.where(mask, wavs, torch.full_like(wavs, big)).amin(dim=1) * ratio
    high = torch.where(mask, wavs, torch.full_like(wavs, -big)).amax(dim=1) * ratio
    return torch.clamp(wavs, min=low[:, None], max=high[:, None]) * mask


EASING_CURVES = ("sine", "quad", "cubic", "circ", "expo", "bounce")


def easing_curve(kind: int, u: torch.Tensor) -> torch.Tensor:
    """Ease-in curve number ``kind`` (index into :data:`EASING_CURVES`) at ``u`` in [0, 1]; 0 -> 0, 1 -> 1."""
    if kind == 0:
        return 1.0 - torch.cos(u * (math.pi / 2))
    if kind == 1:
        return u ** 2
    if kind == 2:
        return u ** 3
    if kind == 3:
        return 1.0 - torch.sqrt((1.0 - u ** 2).clamp(min=0.0))
    if kind == 4:
        return torch.where(u > 0, torch.pow(2.0, 10.0 * u - 10.0), torch.zeros_like(u))
    if kind == 5:  # ease-in bounce = 1 - ease-out bounce(1 - u)
        v = 1.0 - u
        n1, d1 = 7.5625, 2.75
        out = torch.where(v < 1 / d1, n1 * v ** 2,
                          torch.where(v < 2 / d1, n1 * (v - 1.5 / d1) ** 2 + 0.75,
                                      torch.where(v < 2.5 / d1, n1 * (v - 2.25 / d1) ** 2 + 0.9375,
                                                  n1 * (v - 2.625 / d1) ** 2 + 0.984375)))
        return 1.0 - out
    raise ValueError(f"easing curve index {kind} out of range 0..{len(EASING_CURVES) - 1}")


def ease_gain(wavs: torch.Tensor, lengths: torch.Tensor, kinds: torch.Tensor, reverse: torch.Tensor,
              floor: torch.Tensor) -> torch.Tensor:
    """A slow gain ramp over each utterance (OS-KDFT "easing").

    Row ``b`` is multiplied by ``floor + (1 - floor) * curve(u)``, ``u = t / (lengths[b] - 1)``
    running 0 -> 1 over the valid part (1 -> 0 when ``reverse[b]``): a fade-in or fade-out
    from ``floor`` ``[B]`` to full level along easing curve ``kinds[b]``.
    """
    num_samples = wavs.shape[1]
    t = torch.arange(num_samples, device=wavs.device, dtype=wavs.dtype)[None, :]
    u = (t / (lengths[:, None].to(wavs.dtype) - 1).clamp(min=1)).clamp(0, 1)
    u = torch.where(reverse[:, None], 1.0 - u, u)
    curve = torch.zeros_like(wavs)
    for kind in range(len(EASING_CURVES)):
        rows = kinds == kind
        if bool(rows.any()):
            curve[rows] = easing_curve(kind, u.expand_as(wavs)[rows])
    gain = floor[:, None].to(wavs.dtype) + (1.0 - floor[:, None].to(wavs.dtype)) * curve
    return wavs * gain * valid_mask(lengths, num_samples)


def uniform(low: float, high: float, size: int, generator: torch.Generator, integer: bool = False) -> torch.Tensor:
    """``size`` draws from U[low, high] (or integers low..high inclusive) on the generator's device."""
    device = generator.device
    if integer:
        return torch.randint(int(math.ceil(low)), int(math.floor(high)) + 1, (size,), generator=generator,
                             device=device).to(torch.float32)
    return low + (high - low) * torch.rand(size, generator=generator, device=device)

