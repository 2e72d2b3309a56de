"""ECAPA-TDNN speaker embedding extractor and the mean+std linear back-end.

ECAPA-TDNN (paper-era OS-KDFT sizes, specs/methods/06_os_kdft.md §2, as defaults)::

    features [B, N, D] → (optional instance norm over time) → Conv1d(D→C, k5) ReLU BN
    → 3 SE-Res2Net blocks (k3, dilations 2/3/4, Res2Net scale 8, SE bottleneck 128);
      block i receives the sum of the first conv's output and all earlier block outputs
    → concat of the 3 block outputs → Conv1d(3C→1536, k1) ReLU
    → attentive statistics pooling with global context (attention 256)
    → BN(2·1536) → Linear(→192) → BN(192) = embedding [B, 192]

Padding: every layer output is zeroed on padded frames and every pooling (SE squeeze,
global context, attention softmax, statistics) runs over valid frames only, so in eval mode
an utterance gets the same embedding alone or padded in a batch. (In training mode the
BatchNorm batch statistics still see the zeroed padded frames.)

Mean+std linear back-end (the 2024 OS-KDFT scripts, §3): mean and standard deviation of the
features over valid frames → Linear(2D→192) → BatchNorm1d(192).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import torch
from torch import nn

from .specaugment import SpecAugment, SpecAugmentConfig


@dataclasses.dataclass
class EcapaConfig:
    """``input_instance_norm``: normalise each input dimension over the utterance's valid frames
    (the paper-era code does this on SSL features). ``spec_augment``: masking of the input
    features in training (None = off)."""

    channels: int = 512
    res2net_scale: int = 8
    se_bottleneck: int = 128
    dilations: List[int] = dataclasses.field(default_factory=lambda: [2, 3, 4])
    first_kernel_size: int = 5
    block_kernel_size: int = 3
    aggregation_channels: int = 1536
    attention_channels: int = 256
    embedding_size: int = 192
    input_instance_norm: bool = False
    spec_augment: Optional[SpecAugmentConfig] = None


@dataclasses.dataclass
class MeanStdBackendConfig:
    embedding_size: int = 192


def frame_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``[B, 1, N]`` float mask: 1 on valid frames."""
    positions = torch.arange(num_frames, device=lengths.device)[None, :]
    return (positions < lengths[:, None]).unsqueeze(1).float()


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor, weights: Optional[torch.Tensor] = None,
                    unbiased: bool = False, floor: float = 1e-4) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over time of ``x [B, C, N]`` on valid frames (``mask [B, 1, N]``).

    ``weights [B, C, N]`` (summing to one over valid frames) give the attention-weighted
    statistics. The variance is clamped at ``floor`` before the square root (finite gradients).
    """
    if weights is None:
        count = mask.sum(dim=-1, keepdim=True).clamp(min=1.0)
        weights = mask / count
        correction = (count / (count - 1).clamp(min=1.0)) if unbiased else 1.0
    else:
        correction = 1.0
    mean = (x * weights).sum(dim=-1)
    # two-pass form: no cancellation when |mean| >> std
    variance = ((x - mean[..., None]).square() * weights).sum(dim=-1)
    if isinstance(correction, torch.Tensor):
        variance = variance * correction.squeeze(-1)
    std = variance.clamp(min=floor).sqrt()
    return mean, std


class ConvReluBn(nn.Module):
    """Conv1d → ReLU → BatchNorm1d, output zeroed on padded frames."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation,
                              padding=dilation * (kernel_size // 2))
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu(self.conv(x))) * mask


class SqueezeExcitation(nn.Module):
    """Channel gates from the masked time average: ``[B, C, N] → [B, C, N]``."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.reduce = nn.Conv1d(channels, bottleneck, 1)
        self.expand = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        average = (x * mask).sum(dim=-1, keepdim=True) / mask.sum(dim=-1, keepdim=True).clamp(min=1.0)
        gates = torch.sigmoid(self.expand(torch.relu(self.reduce(average))))
        return x * gates


class SeRes2Block(nn.Module):
    """1x1 conv → Res2Net (``scale`` groups, hierarchical dilated convs) → 1x1 conv → SE, + input."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, se_bottleneck: int) -> None:
        super().__init__()
        if scale < 2 or channels % scale:
            raise ValueError(f"ECAPA channels ({channels}) must be divisible by the Res2Net scale ({scale} >= 2)")
        self.width = channels // scale
        self.expand = ConvReluBn(channels, channels)
        self.group_convs = nn.ModuleList(ConvReluBn(self.width, self.width, kernel_size, dilation)
                                         for _ in range(scale - 1))
        self.merge = ConvReluBn(channels, channels)
        self.se = SqueezeExcitation(channels, se_bottleneck)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        groups = torch.split(self.expand(x, mask), self.width, dim=1)
        outputs = []
        carried = None
        for group, conv in zip(groups[:-1], self.group_convs):
            carried = conv(group if carried is None else group + carried, mask)
            outputs.append(carried)
        outputs.append(groups[-1])  # the last group passes through unchanged
        y = self.merge(torch.cat(outputs, dim=1), mask)
        return self.se(y, mask) + x


class AttentiveStatisticsPooling(nn.Module):
    """Attention over valid frames, conditioned on each frame and the utterance's global mean
    and std; returns the weighted mean and std concatenated: ``[B, C, N] → [B, 2C]``."""

    def __init__(self, channels: int, attention_channels: int) -> None:
        super().__init__()
        self.hidden = nn.Conv1d(3 * channels, attention_channels, 1)
        self.norm = nn.BatchNorm1d(attention_channels)
        self.score = nn.Conv1d(attention_channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        num_frames = x.shape[-1]
        mean, std = masked_mean_std(x, mask, unbiased=True)
        context = torch.cat([x, mean[..., None].expand(-1, -1, num_frames), std[..., None].expand(-1, -1, num_frames)],
                            dim=1)
        hidden = torch.tanh(self.norm(torch.relu(self.hidden(context))))
        logits = self.score(hidden).masked_fill(mask == 0, float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        weighted_mean, weighted_std = masked_mean_std(x, mask, weights=weights)
        return torch.cat([weighted_mean, weighted_std], dim=1)


class EcapaTdnn(nn.Module):
    def __init__(self, input_size: int, config: Optional[EcapaConfig] = None) -> None:
        super().__init__()
        self.config = config or EcapaConfig()
        cfg = self.config
        if len(cfg.dilations) < 1:
            raise ValueError("ECAPA needs at least one SE-Res2Net block (dilations is empty)")
        self.input_size = input_size
        self.spec_augment = SpecAugment(cfg.spec_augment) if cfg.spec_augment is not None else None
        self.first = ConvReluBn(input_size, cfg.channels, cfg.first_kernel_size)
        self.blocks = nn.ModuleList(SeRes2Block(cfg.channels, cfg.block_kernel_size, d, cfg.res2net_scale,
                                                cfg.se_bottleneck) for d in cfg.dilations)
        self.aggregate = nn.Conv1d(len(cfg.dilations) * cfg.channels, cfg.aggregation_channels, 1)
        self.pooling = AttentiveStatisticsPooling(cfg.aggregation_channels, cfg.attention_channels)
        self.pooled_norm = nn.BatchNorm1d(2 * cfg.aggregation_channels)
        self.embedding = nn.Linear(2 * cfg.aggregation_channels, cfg.embedding_size)
        self.embedding_norm = nn.BatchNorm1d(cfg.embedding_size)

    @property
    def embedding_size(self) -> int:
        return self.config.embedding_size

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features: ``[B, N, D]``; lengths: ``[B]`` valid frames (>= 1). Returns ``[B, E]``."""
        if features.dim() != 3 or features.shape[-1] != self.input_size:
            raise ValueError(f"expected features [batch, frame, {self.input_size}], found shape "
                             f"{tuple(features.shape)}")
        if int(lengths.min()) < 1:
            raise ValueError(f"every utterance needs at least one frame, found lengths {lengths.tolist()}")
        lengths = lengths.to(features.device).clamp(max=features.shape[1])
        if self.spec_augment is not None:
            features = self.spec_augment(features, lengths)
        x = features.transpose(1, 2).float()  # [B, D, N]
        mask = frame_mask(lengths, x.shape[-1])
        if self.config.input_instance_norm:
            # population variance and eps 1e-5, as torch.nn.InstanceNorm1d, over valid frames only
            count = mask.sum(dim=-1, keepdim=True)
            mean = (x * mask).sum(dim=-1, keepdim=True) / count
            variance = ((x - mean).square() * mask).sum(dim=-1, keepdim=True) / count
            x = (x - mean) / (variance + 1e-5).sqrt()
        x = x * mask
        first = self.first(x, mask)
        running = first
        outputs = []
        for block in self.blocks:
            out = block(running, mask)
            outputs.append(out)
            running = running + out
        x = torch.relu(self.aggregate(torch.cat(outputs, dim=1))) * mask
        pooled = self.pooled_norm(self.pooling(x, mask))
        return self.embedding_norm(self.embedding(pooled))


class MeanStdLinearBackend(nn.Module):
    """Mean and (sample) std over valid frames → Linear(2D → E) → BatchNorm1d(E)."""

    def __init__(self, input_size: int, config: Optional[MeanStdBackendConfig] = None) -> None:
        super().__init__()
        self.config = config or MeanStdBackendConfig()
        self.input_size = input_size
        self.projection = nn.Linear(2 * input_size, self.config.embedding_size)
        self.norm = nn.BatchNorm1d(self.config.embedding_size)

    @property
    def embedding_size(self) -> int:
        return self.config.embedding_size

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features: ``[B, N, D]``; lengths: ``[B]`` valid frames. Returns ``[B, E]``."""
        if features.dim() != 3 or features.shape[-1] != self.input_size:
            raise ValueError(f"expected features [batch, frame, {self.input_size}], found shape "
                             f"{tuple(features.shape)}")
        x = features.transpose(1, 2).float()
        mask = frame_mask(lengths.to(x.device).clamp(max=x.shape[-1]), x.shape[-1])
        mean, std = masked_mean_std(x, mask, unbiased=True, floor=1e-8)
        return self.norm(self.projection(torch.cat([mean, std], dim=1)))
