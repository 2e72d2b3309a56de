"""Band-limited resampling (polyphase windowed sinc), numpy in, numpy out.

Used when a corpus is not at 16 kHz and the user asked for resampling, and by the
embedded corpora (espeak-ng synthesises at 22.05 kHz). The filter is a Kaiser-windowed
sinc with cut-off at ``rolloff`` times the lower Nyquist frequency.
"""
from __future__ import annotations

from math import gcd

import numpy as np
import torch


def _kernel(orig: int, new: int, width: int, rolloff: float, beta: float) -> torch.Tensor:
    """kernel[p, i]: weight of padded input tap i for output phase p (one block = ``orig`` inputs)."""
    base = min(orig, new) * rolloff  # cut-off as a fraction of the block rate (2·fc)
    taps = torch.arange(2 * width + orig, dtype=torch.float64) - width
    delay = torch.arange(new, dtype=torch.float64)[:, None] / new - taps[None, :] / orig  # in blocks
    in_samples = (delay * orig / width).clamp(-1.0, 1.0)
    window = torch.special.i0(beta * torch.sqrt(1.0 - in_samples ** 2)) / torch.special.i0(
        torch.tensor(beta, dtype=torch.float64))
    window = torch.where((delay * orig).abs() <= width, window, torch.zeros_like(window))
    z = base * delay
    sinc = torch.where(z == 0, torch.ones_like(z), torch.sin(torch.pi * z) / (torch.pi * z))
    return (sinc * window * base / orig).to(torch.float32)


def resample(samples: np.ndarray, orig_rate: int, new_rate: int, *, lowpass_width: int = 16,
             rolloff: float = 0.95, beta: float = 8.555) -> np.ndarray:
    """Resample a 1-D signal from ``orig_rate`` to ``new_rate`` Hz; output length ceil(T·new/orig)."""
    if orig_rate == new_rate:
        return np.asarray(samples, dtype=np.float32)
    g = gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    width = int(np.ceil(lowpass_width * orig / (min(orig, new) * rolloff)))
    kernel = _kernel(orig, new, width, rolloff, beta)  # [new, 2*width+orig]
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32))[None, None, :]
    length = x.shape[-1]
    x = torch.nn.functional.pad(x, (width, width + orig))
    y = torch.nn.functional.conv1d(x, kernel[:, None, :], stride=orig)  # [1, new, frames]
    y = y.transpose(1, 2).reshape(-1)
    target = int(np.ceil(new * length / orig))
    return y[:target].numpy().astype(np.float32)
