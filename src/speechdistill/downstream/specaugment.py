"""SpecAugment-style masking of feature sequences (no time warping), lengths-aware.

Applied to SSL representations (SUPERB ASR probe, OS-KDFT's ECAPA input) or fbank. Each
utterance gets its own masks: ``num_time_masks`` spans of 0..``max_time_mask_frames``
frames placed inside its valid frames, and ``num_feature_masks`` spans of
0..``max_feature_mask_dims`` feature dimensions. Masked values are set to zero. Active only in
training mode.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn


@dataclasses.dataclass
class SpecAugmentConfig:
    num_time_masks: int = 2
    max_time_mask_frames: int = 40
    num_feature_masks: int = 2
    max_feature_mask_dims: int = 30


def _span_mask(batch: int, size: torch.Tensor, num_masks: int, max_width: int, total: int,
               generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """``[batch, total]`` bool: ``num_masks`` random spans per row, each of width
    0..min(max_width, size[b]) placed within the first ``size[b]`` positions."""
    mask = torch.zeros(batch, total, dtype=torch.bool, device=device)
    if num_masks <= 0 or max_width <= 0:
        return mask
    positions = torch.arange(total, device=device)[None, :]
    size = size.to(device)
    for _ in range(num_masks):
        limit = torch.clamp(size, max=max_width)
        widths = (torch.rand(batch, generator=generator).to(device) * (limit + 1).float()).long()
        starts = (torch.rand(batch, generator=generator).to(device) * (size - widths + 1).float()).long()
        mask |= (positions >= starts[:, None]) & (positions < (starts + widths)[:, None])
    return mask


class SpecAugment(nn.Module):
    def __init__(self, config: Optional[SpecAugmentConfig] = None) -> None:
        super().__init__()
        self.config = config or SpecAugmentConfig()

    def forward(self, features: torch.Tensor, lengths: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """features: ``[B, N, D]``; lengths: ``[B]`` valid frames. Returns the masked ``[B, N, D]``
        (the input unchanged in eval mode). ``generator`` (CPU) makes the masks reproducible."""
        if not self.training:
            return features
        if features.dim() != 3:
            raise ValueError(f"SpecAugment expects [batch, frame, feature], found shape {tuple(features.shape)}")
        batch, frames, dims = features.shape
        cfg = self.config
        time_mask = _span_mask(batch, lengths.clamp(max=frames), cfg.num_time_masks, cfg.max_time_mask_frames, frames,
                               generator, features.device)
        dim_sizes = torch.full((batch,), dims, dtype=torch.long)
        feature_mask = _span_mask(batch, dim_sizes, cfg.num_feature_masks, cfg.max_feature_mask_dims, dims, generator,
                                  features.device)
        masked = time_mask[:, :, None] | feature_mask[:, None, :]
        return features.masked_fill(masked, 0.0)
