"""Building blocks of the encoder, in plain PyTorch. Each class does one job; the Encoder assembles them.

This is the code a CUDA device runs, and what every device runs under ``SPEECHDISTILL_KERNELS=reference``.
At four places (every projection, the CNN, the positional conv, dropout) a block asks
:func:`speechdistill.kernels.find` for a faster kernel for the call at hand (on CPUs: products on packed
weights, window convolutions, FFTs) and hands the call to it when there is one; each kernel is tested against the
code here. Layout: the CNN runs channels-first ``[batch, channel, frame]`` and hands the transformer
time-major ``[batch, frame, channel]`` activations.

Numerics follow fairseq / transformers (GELU with erf, LayerNorm eps 1e-5 in the CNN, GroupNorm statistics
in float32) so that imported teachers reproduce their reference outputs; the one difference is that
GroupNorm statistics and attention use valid frames only, so an utterance gives the same hidden states
alone or in any batch. Under ``torch.autocast`` matrix products run in the autocast dtype while
normalisation statistics stay in float32.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..kernels import compute_dtype
from .hardconcrete import HardConcreteGate

CONV_NORM_EPS = 1e-5

__all__ = ["CONV_NORM_EPS", "ConvBlock", "ConvFeatureExtractor", "Dropout", "FeedForward", "ParallelAdapter",
           "PositionalConv", "SelfAttention", "TransformerLayer", "compute_dtype", "conv_output_length", "dropout",
           "linear", "masked_layer_norm", "project", "project_layer", "relative_position_buckets"]


def linear(in_features: int, out_features: int) -> nn.Linear:
    """nn.Linear that may have zero units (every head or FFN unit pruned away) without a warning."""
    if in_features and out_features:
        return nn.Linear(in_features, out_features)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features)


Combine = Callable[[Sequence[torch.Tensor]], Tuple[torch.Tensor, Optional[torch.Tensor]]]


def project(x: torch.Tensor, owner: nn.Module, slot: str, parts: Sequence[torch.Tensor], combine: Combine,
            in_features: int, out_features: int, gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with ``(weight, bias) = combine(parts)``, then an erf GELU when ``gelu``.

    ``parts`` are parameters and ``combine`` builds one product's weight [out, in] and bias [out] from them
    (e.g. Q, K and V concatenated), so that a kernel may keep that weight, combined, cast or packed, while
    the parameters are frozen (kept on ``owner`` under ``slot``). x: [..., in_features] -> [..., out_features].
    """
    rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    size = rows * in_features * out_features if x.dim() and x.shape[-1] == in_features else 0
    kernel = kernels.find("linear", x, parts, size)
    if kernel is not None:
        return kernel(x, owner, slot, parts, combine, gelu)
    weight, bias = combine(parts)
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def _weight_and_bias(parts: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    return parts[0], parts[1] if len(parts) > 1 else None


def project_layer(layer: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``layer(x)`` (then GELU when ``gelu``) through :func:`project`."""
    parts = (layer.weight,) if layer.bias is None else (layer.weight, layer.bias)
    return project(x, layer, "linear", parts, _weight_and_bias, layer.in_features, layer.out_features, gelu)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``; a kernel may draw the mask faster (on CPUs)."""
    if not training or p == 0.0:
        return x
    kernel = kernels.find("dropout", x, (), x.numel())
    return kernel(x, p) if kernel is not None else F.dropout(x, p, True)


class Dropout(nn.Module):
    """``nn.Dropout`` through :func:`dropout`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


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


class PositionalConv(nn.Module):
    """Convolutional relative position embedding: weight-normalised grouped Conv1d (norm over all dims but
    the kernel axis), "same" padding that drops the last frame for even kernels, GELU. Returns the
    embedding; the caller adds it to its input."""

    def __init__(self, hidden_size: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.groups = groups
        weight = torch.empty(hidden_size, hidden_size // groups, kernel)
        nn.init.normal_(weight, mean=0.0, std=math.sqrt(4.0 / (kernel * hidden_size)))
        self.weight_v = nn.Parameter(weight)
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(weight, dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    def weight(self) -> torch.Tensor:
        """Effective kernel [D, D / groups, k]."""
        # The norm per tap over (out, in): one column reduction of the contiguous [D * D/groups, k] view.
        norm = torch.linalg.vector_norm(self.weight_v.flatten(0, 1), dim=0).view(1, 1, -1)
        return self.weight_v * (self.weight_g / norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> position embedding [B, N, D]."""
        kernel = kernels.find("positional_conv", x, (self.weight_v, self.weight_g, self.bias))
        if kernel is not None:
            return kernel(self, x)
        y = F.conv1d(x.transpose(1, 2), self.weight(), self.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


def relative_position_buckets(num_frames: int, num_buckets: int, max_distance: int,
                              device: Optional[torch.device] = None) -> torch.Tensor:
    """T5-style bidirectional buckets of (key - query) offsets, as WavLM uses them: [N, N] long.

    Half of the buckets per sign; offsets below a quarter of the buckets are exact, larger ones are
    log-spaced up to ``max_distance`` and clipped.
    """
    position = torch.arange(num_frames, device=device)
    offset = position[None, :] - position[:, None]
    half = num_buckets // 2
    buckets = (offset > 0).long() * half
    distance = offset.abs()
    exact = half // 2
    far = exact + (torch.log(distance.clamp_min(1).float() / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    far = far.clamp_max(half - 1)
    return buckets + torch.where(distance < exact, distance, far)


def _concatenated_qkv(parts: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(q, k, v weights, q, k, v biases) -> one [3 * inner, D] weight and [3 * inner] bias."""
    return torch.cat(parts[:3]), torch.cat(parts[3:])


def softmax_last_dim(scores: torch.Tensor) -> torch.Tensor:
    """``torch.softmax(scores, -1)``, written over ``scores`` when no gradient is needed: a fresh
    [B, H, N, N] float32 map is tens of MB (4 x 12 x 500^2: 48 MB) that the scores no longer need."""
    if (torch.is_grad_enabled() and scores.requires_grad) or torch.compiler.is_compiling():
        return torch.softmax(scores, dim=-1)
    return torch.ops.aten._softmax.out(scores, -1, False, out=scores)


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional WavLM gated relative position bias, attention-map
    reuse (no query/key projections) and a hard-concrete gate per head.

    Fused ``scaled_dot_product_attention`` unless the probabilities are needed (asked for, or
    reused by the next layer).
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, *, dropout: float = 0.0,
                 reuse: bool = False, reuse_mode: str = "paper", relative_bias: bool = False,
                 total_heads: Optional[int] = None, head_indices: Optional[Sequence[int]] = None,
                 prunable: bool = False) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.reuse = reuse
        self.reuse_mode = reuse_mode
        inner = num_heads * head_dim
        self.q_proj = None if reuse else linear(hidden_size, inner)
        self.k_proj = None if reuse else linear(hidden_size, inner)
        self.v_proj = linear(hidden_size, inner)
        self.out_proj = linear(inner, hidden_size)
        self.total_heads = total_heads if total_heads is not None else num_heads
        # original head number of each head (a pruned WavLM layer keeps a subset of the 12)
        self.head_indices: List[int] = list(head_indices) if head_indices is not None else list(range(num_heads))
        self.all_heads = self.head_indices == list(range(self.total_heads))
        if relative_bias:
            self.gate_proj: Optional[nn.Linear] = nn.Linear(hidden_size // self.total_heads, 8)
            self.gate_scale: Optional[nn.Parameter] = nn.Parameter(torch.ones(num_heads))
        else:
            self.gate_proj = None
            self.gate_scale = None
        self.head_gate = HardConcreteGate(num_heads, init_drop_prob=0.01) if (prunable and num_heads) else None

    def _qkv_parts(self) -> Tuple[torch.Tensor, ...]:
        """Q, K, V weights and biases, one projection after :func:`_concatenated_qkv`."""
        return (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight,
                self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)

    def _gated_bias(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        """WavLM: bias [H_total, N, N] scaled per head and query by a gate read off the input."""
        batch, frames, _ = x.shape
        chunks = x.view(batch, frames, self.total_heads, -1)
        if not self.all_heads:
            chunks = chunks[:, :, self.head_indices]
        chunks = chunks.transpose(1, 2)  # [B, H, N, D / H_total]
        gates = torch.sigmoid(self.gate_proj(chunks).view(batch, self.num_heads, frames, 2, 4).sum(-1).float())
        gate_a, gate_b = gates[..., 0:1], gates[..., 1:2]
        gate = gate_a * (gate_b * self.gate_scale.float().view(1, -1, 1, 1) - 1.0) + 2.0  # [B, H, N, 1]
        bias = position_bias if self.all_heads else position_bias[self.head_indices]
        return gate * bias.float().unsqueeze(0)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
                position_bias: Optional[torch.Tensor] = None, reuse_probs: Optional[torch.Tensor] = None,
                need_probs: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x: [B, N, D].
            key_padding_mask: [B, N] bool, True on padded frames (None: no padding).
            position_bias: [H_total, N, N] relative bias (WavLM) or None.
            reuse_probs: [B, H, N, N] probabilities of the previous layer (reuse layers only).
            need_probs: return the attention probabilities.
        Returns:
            output [B, N, D]; probabilities [B, H, N, N] or None.
        """
        batch, frames, _ = x.shape
        if self.num_heads == 0:  # every head pruned: only the output bias is left
            return self.out_proj.bias.to(compute_dtype(x)).expand(batch, frames, -1), None
        heads, dim = self.num_heads, self.head_dim
        drop = self.dropout if self.training else 0.0
        probs: Optional[torch.Tensor] = None
        if self.reuse:
            v = project_layer(self.v_proj, x).view(batch, frames, heads, dim).transpose(1, 2)
            if reuse_probs is None:
                raise ValueError("an attention-reuse layer needs the previous layer's probabilities")
            if self.reuse_mode == "released":
                # Released ARMHuBERT code: the map, stored head-major [H, B, N, N], is read back
                # batch-major, then masked and soft-maxed a second time.
                scores = reuse_probs.transpose(0, 1).contiguous().view(batch, heads, frames, frames).float()
                if key_padding_mask is not None:
                    scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
                probs = torch.softmax(scores, dim=-1)
            else:
                probs = reuse_probs
            # Reuse layers have no attention dropout (0 in the original paper).
            out = torch.matmul(probs.to(v.dtype), v)
        else:
            # one product for the three projections (one pass over x, a wider GEMM)
            qkv = project(x, self, "qkv", self._qkv_parts(), _concatenated_qkv, self.hidden_size, 3 * heads * dim)
            q, k, v = qkv.view(batch, frames, 3, heads, dim).permute(2, 0, 3, 1, 4)
            mask: Optional[torch.Tensor] = None
            if position_bias is not None and self.gate_proj is not None:
                mask = self._gated_bias(x, position_bias)
                if key_padding_mask is not None:
                    mask = mask.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            elif key_padding_mask is not None:
                mask = ~key_padding_mask[:, None, None, :]
            # Where a dropout kernel runs (CPUs), SDPA with dropout is unfused anyway (with a slower mask); the
            # explicit form below is the same computation with :func:`dropout`.
            explicit = need_probs or (drop > 0.0 and kernels.find("dropout", x, (), x.numel()) is not None)
            if explicit:
                # scaling q ([B, H, N, d]) is cheaper than scaling the scores ([B, H, N, N])
                scores = torch.matmul(q * (dim ** -0.5), k.transpose(-1, -2)).float()
                if mask is not None:
                    scores = scores + mask if mask.dtype != torch.bool else scores.masked_fill(~mask, float("-inf"))
                probs = softmax_last_dim(scores)
                out = torch.matmul(dropout(probs, drop).to(v.dtype), v)
                if not need_probs:
                    probs = None
            else:
                if mask is not None and mask.dtype != torch.bool:
                    mask = mask.to(q.dtype)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        if self.head_gate is not None:
            out = out * self.head_gate().to(out.dtype).view(1, heads, 1, 1)
        out = out.transpose(1, 2).reshape(batch, frames, heads * dim)
        return project_layer(self.out_proj, out), probs


class FeedForward(nn.Module):
    """fc1 -> GELU -> dropout -> (unit gate) -> fc2 -> dropout; [B, N, D] -> [B, N, D]."""

    def __init__(self, hidden_size: int, ffn_size: int, *, activation_dropout: float = 0.0,
                 dropout: float = 0.0, prunable: bool = False) -> None:
        super().__init__()
        self.fc1 = linear(hidden_size, ffn_size)
        self.fc2 = linear(ffn_size, hidden_size)
        self.activation_dropout = Dropout(activation_dropout)
        self.dropout = Dropout(dropout)
        self.unit_gate = HardConcreteGate(ffn_size, init_drop_prob=0.5) if (prunable and ffn_size) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = project_layer(self.fc1, x, gelu=True)
        h = self.activation_dropout(h)
        if self.unit_gate is not None:
            h = h * self.unit_gate().to(h.dtype)
        return self.dropout(project_layer(self.fc2, h))


class ParallelAdapter(nn.Module):
    """OS-KDFT adapter beside the FFN: [LayerNorm] -> Linear(D, r) -> ReLU -> [noise] -> Linear(r, D),
    times ``scale``. The up projection starts at zero, so a fresh adapter changes nothing.

    ``noise`` (2024 scripts): during training add Gaussian noise to the bottleneck with a
    standard deviation of U(0.1, 0.5) times its mean absolute value.
    """

    def __init__(self, hidden_size: int, bottleneck: int, *, scale: float = 1.0, layer_norm: bool = False,
                 noise: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=eps) if layer_norm else None
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale
        self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> [B, N, D]."""
        h = self.norm(x) if self.norm is not None else x
        h = F.relu(self.down(h))
        if self.noise and self.training:
            level = torch.empty((), device=h.device).uniform_(0.1, 0.5) * h.detach().abs().mean()
            h = h + torch.randn_like(h) * level
        return self.up(h) * self.scale


class TransformerLayer(nn.Module):
    """Post-LN (Base) or pre-LN (Large) transformer layer, with an optional parallel adapter."""

    def __init__(self, attention: SelfAttention, feed_forward: FeedForward, hidden_size: int, *,
                 layer_norm_first: bool, eps: float, dropout: float,
                 adapter: Optional[ParallelAdapter] = None) -> None:
        super().__init__()
        self.attention = attention
        self.attention_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.feed_forward = feed_forward
        self.final_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = Dropout(dropout)
        self.layer_norm_first = layer_norm_first
        self.adapter = adapter

    def _adapter(self, x: torch.Tensor, rows: Union[bool, torch.Tensor, None]) -> Optional[torch.Tensor]:
        if self.adapter is None or rows is False or rows is None:
            return None
        out = self.adapter(x)
        if isinstance(rows, torch.Tensor):
            out = out * rows.to(out.dtype).view(-1, 1, 1)
        return out

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
                position_bias: Optional[torch.Tensor] = None, reuse_probs: Optional[torch.Tensor] = None,
                need_probs: bool = False, adapter_rows: Union[bool, torch.Tensor, None] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x: [B, N, D]; key_padding_mask: [B, N] bool (True = padding).
            adapter_rows: True/False for the whole batch, or [B] bool selecting rows that use the adapter.
        Returns:
            output [B, N, D]; attention probabilities [B, H, N, N] or None.
        """
        if self.layer_norm_first:
            attended, probs = self.attention(self.attention_norm(x), key_padding_mask, position_bias,
                                             reuse_probs, need_probs)
            x = x + self.dropout(attended)
            update = self.feed_forward(self.final_norm(x))
            extra = self._adapter(x, adapter_rows)
            return x + (update if extra is None else update + extra), probs
        attended, probs = self.attention(x, key_padding_mask, position_bias, reuse_probs, need_probs)
        x = self.attention_norm(x + self.dropout(attended))
        update = self.feed_forward(x)
        extra = self._adapter(x, adapter_rows)
        return self.final_norm(x + (update if extra is None else update + extra)), probs
