"""The CNN feature extractor of the encoder, in plain PyTorch: waveform samples -> frames.

This is the code a CUDA device runs; on CPUs :func:`speechdistill.kernels.find` may hand the whole CNN
to the ``conv_features`` kernel (window convolutions), which is tested against the code here. The CNN
runs channels-first ``[batch, channel, frame]`` and hands the transformer time-major
``[batch, frame, channel]`` features.

Numerics follow fairseq / transformers (GELU with erf, LayerNorm eps 1e-5, GroupNorm statistics in
float32) so that imported teachers reproduce their reference outputs; the one difference is that
GroupNorm statistics use valid frames only, so an utterance gives the same features alone or in any
batch. With hard-concrete channel gates (pruning) a LayerNorm counts only the gated channels.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from .hardconcrete import HardConcreteGate

CONV_NORM_EPS = 1e-5

__all__ = ["CONV_NORM_EPS", "ConvBlock", "ConvFeatureExtractor", "conv_output_length", "masked_group_norm",
           "masked_layer_norm", "valid_frames"]


def conv_output_length(length: Union[int, torch.Tensor], kernel: int, stride: int):
    """Frames out of an unpadded convolution: floor((L - k) / s) + 1 (may be <= 0)."""
    if isinstance(length, torch.Tensor):
        return torch.div(length - kernel, stride, rounding_mode="floor") + 1
    return (length - kernel) // stride + 1


def masked_layer_norm(x: torch.Tensor, active: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float) -> torch.Tensor:
    """LayerNorm over the last dimension using only the ``active`` channels.

    A gated (pruned-to-be) channel must not exist for the statistics, otherwise the pruned model would
    normalise over a different set of channels than the gated one. Inactive channels come out as 0.

    Args:
        x: [..., C]; active: [C] bool; weight, bias: [C].
    """
    dtype = x.dtype
    keep = active.to(torch.float32)
    count = keep.sum().clamp_min(1.0)
    xf = x.float() * keep
    mean = xf.sum(-1, keepdim=True) / count
    centered = (xf - mean) * keep
    var = centered.pow(2).sum(-1, keepdim=True) / count
    out = centered * torch.rsqrt(var + eps) * weight.float() + bias.float()
    return (out * keep).to(dtype)


def valid_frames(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, frames] bool, True on each utterance's first ``lengths[b]`` frames (built on lengths' device)."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def masked_group_norm(y: torch.Tensor, lengths: Optional[torch.Tensor], norm: nn.GroupNorm) -> torch.Tensor:
    """Per-channel GroupNorm of channels-first y [B, C, T] with statistics in float32 over each utterance's
    first ``lengths[b]`` frames (all frames when lengths is None). Returns y's shape, in float32."""
    if lengths is None:
        return F.group_norm(y.float(), norm.num_groups, norm.weight, norm.bias, norm.eps)
    valid = valid_frames(lengths, y.shape[-1]).unsqueeze(1)  # [B, 1, T]
    yf = y.float()
    count = lengths.clamp_min(1).to(torch.float32)[:, None, None]
    mean = (yf * valid).sum(-1, keepdim=True) / count
    var = ((yf - mean) * valid).square().sum(-1, keepdim=True) / count
    return (yf - mean) * torch.rsqrt(var + norm.eps) * norm.weight.float()[:, None] + norm.bias.float()[:, None]


class ConvBlock(nn.Module):
    """One CNN layer: convolution, optional norm (GroupNorm per channel or LayerNorm), GELU, optional
    hard-concrete channel gate (applied after GELU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, *, bias: bool,
                 norm: Optional[str], prunable: bool = False) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        if norm == "group":
            self.norm: Optional[nn.Module] = nn.GroupNorm(out_channels, out_channels, eps=CONV_NORM_EPS)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_channels, eps=CONV_NORM_EPS)
        elif norm is None:
            self.norm = None
        else:
            raise ValueError(f"conv norm '{norm}' is unknown; use 'group', 'layer' or None")
        self.gate = HardConcreteGate(out_channels, init_drop_prob=0.01) if prunable else None

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def layer_norm(self, y: torch.Tensor, channel_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The block's LayerNorm over the channels of time-major y [B, T, C]; with a channel gate only the
        gated channels count (:func:`masked_layer_norm`)."""
        norm = self.norm
        if channel_mask is not None:
            return masked_layer_norm(y, channel_mask != 0, norm.weight, norm.bias, norm.eps)
        return F.layer_norm(y, (y.shape[-1],), norm.weight, norm.bias, norm.eps)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                channel_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: [B, C_in, T_in] channels-first.
            lengths: [B] valid output frames per utterance (GroupNorm statistics use only those); None = all.
            channel_mask: [C_out] gate values (also marks the channels a LayerNorm may use).
        Returns:
            [B, C_out, T_out]; frames after ``lengths`` hold values computed from padding.
        """
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"conv block expects [batch, {self.in_channels}, frame], got {list(x.shape)}")
        if x.shape[-1] < self.kernel:
            raise ValueError(f"input of {x.shape[-1]} frames is shorter than the kernel ({self.kernel}) of a conv "
                             "layer")
        y = self.conv(x)
        if isinstance(self.norm, nn.GroupNorm):
            y = masked_group_norm(y, lengths, self.norm)
        elif isinstance(self.norm, nn.LayerNorm):
            y = self.layer_norm(y.transpose(1, 2), channel_mask).transpose(1, 2)
        y = F.gelu(y)
        if channel_mask is not None:
            y = y * channel_mask.to(y.dtype)[:, None]
        return y


class ConvFeatureExtractor(nn.Module):
    """Waveform [B, T] (samples) -> features [B, N, C] (frames at 16000 / stride Hz)."""

    def __init__(self, conv_layers: Sequence[Sequence[int]], *, norm: str = "group", bias: bool = False,
                 prunable: bool = False, output_scale: bool = False) -> None:
        super().__init__()
        blocks = []
        in_channels = 1
        for index, (channels, kernel, stride) in enumerate(conv_layers):
            block_norm = norm if (norm == "layer" or index == 0) else None
            blocks.append(ConvBlock(in_channels, int(channels), int(kernel), int(stride), bias=bias,
                                    norm=block_norm, prunable=prunable))
            in_channels = int(channels)
        self.blocks = nn.ModuleList(blocks)
        if output_scale:
            # Folded gate values of a pruned CNN's last layer (not trained, like DPHuBERT's dummy weight).
            self.register_buffer("output_scale", torch.ones(in_channels))
        else:
            self.output_scale = None

    @property
    def out_channels(self) -> int:
        return self.blocks[-1].out_channels

    def output_lengths(self, lengths: Union[int, torch.Tensor]):
        """Frames produced from ``lengths`` samples (int or tensor [B])."""
        for block in self.blocks:
            lengths = conv_output_length(lengths, block.kernel, block.stride)
        return lengths

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None, *,
                host_lengths: Optional[List[int]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            wavs: [B, T] float waveform; lengths: [B] valid samples (on wavs' device) or None;
                host_lengths: the same lengths as Python ints (None: unknown, or no padding when lengths
                is None too).
        Returns:
            features [B, N, C] with padded frames 0; mask [C] of the last layer's channel gate (None without
            gates).
        """
        masks = [block.gate() if block.gate is not None else None for block in self.blocks]
        kernel = kernels.find("conv_features", wavs, [block.conv.weight for block in self.blocks], wavs.numel())
        if kernel is not None:
            if host_lengths is None and lengths is not None:
                host_lengths = lengths.tolist()  # (kernels run on the host: no device synchronisation)
            x = kernel(self, wavs, host_lengths, masks)
        else:
            if host_lengths is not None and all(n == wavs.shape[1] for n in host_lengths):
                lengths = None  # no padding: plain GroupNorm statistics
            x = wavs.unsqueeze(1)
            frames = lengths
            for block, mask in zip(self.blocks, masks):
                frames = None if frames is None else conv_output_length(frames, block.kernel, block.stride).clamp_min(1)
                x = block(x, frames, mask)
            x = x.transpose(1, 2)
            if frames is not None:
                x = x.masked_fill(~valid_frames(frames, x.shape[1]).unsqueeze(-1), 0.0)
        if self.output_scale is not None:
            x = x * self.output_scale.to(x.dtype)
        return x, masks[-1]
