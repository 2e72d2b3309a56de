"""Building blocks of the encoder. Each class does one job; the Encoder assembles them.

Layout: activations are time-major, ``[batch, frame, channel]``, from the first convolution on.
On a CPU in bf16/fp16 the CNN computes its convolutions as matrix products over windows of that
layout (a window of k frames is one contiguous run of memory, read in place by BLAS): a few large
GEMMs per layer, a little faster than oneDNN's ``conv1d``, and no transpose before the
transformer; training uses them with a hand-written backward (``_WindowConv``). In float32 on a
CPU the CNN runs channels-first through oneDNN's ``conv1d`` instead (MKL's float32 GEMM is half as
fast on AMD processors) and is transposed once at the end. The GroupNorm after the first
convolution is folded into its weights, which saves a pass over the largest activation of the
model. The positional conv's weight norm is one fused op on CPUs (``_TapWeightNorm``). GPUs use
``conv1d`` on channels-first views of the time-major tensors.

Numerics follow fairseq / transformers (GELU with erf, LayerNorm eps 1e-5 in the CNN, GroupNorm
statistics in float32) so that imported teachers reproduce their reference outputs. Under
``torch.autocast`` matrix products run in the autocast dtype while normalisation statistics
stay in float32.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .hardconcrete import HardConcreteGate

CONV_NORM_EPS = 1e-5
# Largest conv window (k * C_in) whose GroupNorm statistics are derived from window moments.
FOLDED_NORM_MAX_WINDOW = 64
# FFT sizes whose positional-conv kernel spectrum a frozen model keeps
# (HuBERT Base: 0.3 MB per FFT bin, ~130 MB for a 15 s input).
SPECTRUM_CACHE_SIZES = 4


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype matrix products produce here: the autocast dtype when autocast is on."""
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


class _OperandCache(dict):
    """Operands kept by :func:`frozen_operands`: derived state that copies and pickles of the module do
    not carry (packed oneDNN weights cannot be copied at all); a copy starts empty and refills."""

    def __deepcopy__(self, memo: Dict[int, Any]) -> "_OperandCache":
        return _OperandCache()

    def __reduce__(self) -> Tuple[type, tuple]:
        return (_OperandCache, ())


def frozen_operands(owner: nn.Module, slot: str, parts: Sequence[torch.Tensor],
                    combine: Callable[[Sequence[torch.Tensor]], Tuple[torch.Tensor, ...]]) -> Tuple[torch.Tensor, ...]:
    """``combine(parts)`` (e.g. a weight and bias, or concatenated Q/K/V weights), kept on ``owner``
    and reused while the parameters are unchanged, already in the autocast dtype when autocast is on.

    Only without autograd (a frozen teacher, inference): re-concatenating or re-casting a HuBERT
    Base's 85 M weights costs each forward ~15 ms on a CPU, 10 % of a 4 s bf16 forward. A cast here
    equals the one autocast would do inside the matrix product (weights and biases both go to the
    autocast dtype), so results do not change. The cache is valid for the same parameter objects
    (held, so that a freed tensor's address cannot be reused by a new one) at the same version
    counters, storage, dtype and device; an in-place update, ``.to()`` or a replaced parameter
    invalidates it. Each autocast dtype (and autocast off) has its own entry, so a model run
    alternately in two precisions (a benchmark, an fp32 check between bf16 passes) does not re-cast
    on every switch.
    """
    if not _is_frozen(parts):  # (inference tensors have no version counter: never kept)
        return combine(parts)
    device_type = parts[0].device.type
    cast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    state = (cast,) + tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in parts)
    cache = owner.__dict__.setdefault("_frozen_operands", _OperandCache())
    key = (slot, cast)
    cached = cache.get(key)
    if cached is None or not _same_parameters(cached[0], parts, state):
        # normal tensors even under inference_mode, so that a later grad-enabled call may use them
        with torch.inference_mode(False), torch.no_grad():
            values = combine(parts)
            if cast is not None:
                values = tuple(v.to(cast) if v is not None and v.dtype == torch.float32 else v for v in values)
        cached = ((tuple(parts), state), values)
        cache[key] = cached
    return cached[1]


def _same_parameters(key: Tuple[Tuple[torch.Tensor, ...], tuple], parts: Sequence[torch.Tensor], state: tuple) -> bool:
    """Whether a cache key (the parameter objects and their state when cached) still matches ``parts``."""
    held, held_state = key
    return len(held) == len(parts) and all(a is b for a, b in zip(held, parts)) and held_state == state


def _is_frozen(parts: Sequence[torch.Tensor]) -> bool:
    """Whether :func:`frozen_operands` keeps operands of ``parts`` (no autograd, not compiling)."""
    return not ((torch.is_grad_enabled() and any(p.requires_grad for p in parts)) or torch.compiler.is_compiling()
                or any(p.is_inference() for p in parts))


# Whether oneDNN's packed linear may be used (switched off for the process if packing ever fails).
_ONEDNN_LINEAR = {"enabled": torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"),
                  "dtypes": (torch.float32, torch.bfloat16)}


def onednn_linear_supports(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`pack_for_onednn` / :func:`onednn_linear` run on ``device`` in ``dtype``."""
    if not (_ONEDNN_LINEAR["enabled"] and device.type == "cpu"):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def pack_for_onednn(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """A linear weight [out, in] packed for oneDNN's matmul on inputs of about ``rows`` rows (opaque)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor], gelu: bool = False
                  ) -> torch.Tensor:
    """``F.linear`` (then erf GELU) with a :func:`pack_for_onednn` weight; x [..., in] in its dtype."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "gelu" if gelu else "none", [],
                                              "none" if gelu else "")


def _packs_linear(x: torch.Tensor, parts: Sequence[torch.Tensor], dtype: torch.dtype) -> bool:
    # Empty inputs and fully pruned layers ([0, D] weights) stay on F.linear; so does an input that needs
    # a gradient (frozen layers between trainable ones, e.g. adapters): the packed op has no backward.
    # An input of the wrong width also stays there, so that the user gets F.linear's shape error and the
    # packed path is not switched off for the process by it.
    return (x.dim() >= 2 and x.numel() > 0 and all(p.numel() > 0 for p in parts)
            and x.shape[-1] == parts[0].shape[-1] and not (torch.is_grad_enabled() and x.requires_grad)
            and dtype in _ONEDNN_LINEAR["dtypes"] and onednn_linear_supports(x.device, dtype) and _is_frozen(parts))


def onednn_matmul(a: torch.Tensor, b: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``a @ b`` (+ ``bias``) for 2-D float32 CPU operands of any strides, by oneDNN's matmul on the
    plain (not packed) operands: its float32 kernels use AVX-512 where MKL's GEMM behind ``torch.mm``
    does not (AMD CPUs): 258 x 768 x 3072 took 2.5-2.9 ms here vs 5.6-5.9 ms for each of the three
    products of a linear layer's forward and backward. The caller checks :func:`onednn_linear_supports`."""
    if not (b.is_contiguous() or b.t().is_contiguous()):
        # oneDNN takes a weight with gaps between its rows (a window view, a column slice) only through
        # its reference kernel: 6.8 s instead of 3 ms for a 512 x 1999 x 512 product
        b = b.contiguous()
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), bias, "none", [], "")


# Smallest product (M x K x N multiply-adds) worth oneDNN's matmul: each new shape costs it ~0.4 ms to
# create its kernel (training shapes change with every batch and utterance), which MKL's slower GEMM
# does not pay; at 2^26 the two break even even uncached, and the recipes' products are 10-25x larger.
ONEDNN_MIN_MACS = 1 << 26


def _onednn_float32(a: torch.Tensor, macs: int) -> bool:
    return (a.dtype == torch.float32 and macs >= ONEDNN_MIN_MACS and not torch.compiler.is_compiling()
            and onednn_linear_supports(a.device, a.dtype))


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.mm(a, b)``; large float32 products on a CPU through :func:`onednn_matmul`."""
    return onednn_matmul(a, b) if _onednn_float32(a, a.shape[0] * a.shape[1] * b.shape[1]) else torch.mm(a, b)


def matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool = False) -> None:
    """``out = a @ b`` (``out += a @ b`` when ``accumulate``), ``out`` any 2-D view; float32 on a CPU
    through :func:`onednn_matmul`, whose result is then copied or added (oneDNN writes a new tensor;
    the extra pass over the output costs far less than MKL's slower float32 product)."""
    if _onednn_float32(a, a.shape[0] * a.shape[1] * b.shape[1]):
        product = onednn_matmul(a, b)
        out.add_(product) if accumulate else out.copy_(product)
    elif accumulate:
        out.addmm_(a, b)
    else:
        torch.mm(a, b, out=out)


class _DenseOneDnnLinear(torch.autograd.Function):
    """``F.linear`` in float32 on a CPU with forward and backward through :func:`onednn_matmul`:
    y = x W^T + b, dx = dy W, dW = dy^T x, db = sum(dy). For trainable layers, whose weights change
    every update (packing them, as :func:`frozen_product` does for frozen ones, would be paid per call)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """x: [..., in] float32; weight: [out, in]; bias: [out] or None. Returns [..., out]."""
        rows = x.reshape(-1, x.shape[-1])
        if not rows.is_contiguous():
            rows = rows.contiguous()
        ctx.save_for_backward(rows, weight)
        ctx.has_bias, ctx.leading = bias is not None, x.shape[:-1]
        return onednn_matmul(rows, weight.t(), bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        if not grad_rows.is_contiguous():
            grad_rows = grad_rows.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_matmul(grad_rows, weight).view(*ctx.leading, weight.shape[1])
        if ctx.needs_input_grad[1]:
            grad_weight = onednn_matmul(grad_rows.t(), rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through :class:`_DenseOneDnnLinear` (differentiable; weights of any
    layout a transpose makes contiguous); callers check :func:`dense_linear_applies` first."""
    return _DenseOneDnnLinear.apply(x, weight, bias)


def dense_linear_applies(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
    """Whether :func:`dense_linear` runs ``F.linear(x, weight, bias)``: float32 (autocast off) on a CPU
    whose torch has oneDNN's matmul, non-empty operands of matching width, a product of at least
    ``ONEDNN_MIN_MACS``, not under torch.compile."""
    return (x.dtype == torch.float32 and weight.dtype == torch.float32 and compute_dtype(x) == torch.float32
            and (bias is None or bias.dtype == torch.float32) and x.dim() >= 2 and x.numel() > 0
            and weight.dim() == 2 and weight.numel() > 0 and x.shape[-1] == weight.shape[-1]
            and x.numel() * weight.shape[0] >= ONEDNN_MIN_MACS and not torch.compiler.is_compiling()
            and onednn_linear_supports(x.device, torch.float32))


def frozen_product(owner: nn.Module, slot: str, parts: Sequence[torch.Tensor],
                   combine: Callable[[Sequence[torch.Tensor]], Tuple[torch.Tensor, ...]], x: torch.Tensor,
                   gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (then an erf GELU when ``gelu``) with ``(weight, bias) = combine(parts)``.

    While frozen on a CPU (a teacher, inference) the weight is kept packed for oneDNN's matmul and the
    GELU is fused into it. MKL's float32 GEMM behind ``F.linear`` does not use AVX-512 on AMD processors:
    a HuBERT Base FFN product (199 x 768 x 3072) took 5.6-5.9 ms there and 2.3-2.6 ms packed; in bf16
    1.19 vs 1.10 ms. The packed copy costs the weights' size again in memory (HuBERT Base's projections:
    340 MB in float32, 170 MB in bf16). Otherwise :func:`frozen_operands` and ``F.linear``, except in
    float32 on a CPU (training, an input that needs a gradient), where :func:`dense_linear` runs the
    forward and backward products on oneDNN's matmul over the plain weights (DistilHuBERT's float32
    step: 8 % faster).
    """
    dtype = compute_dtype(x)
    if _packs_linear(x, parts, dtype):
        rows = x.numel() // max(1, x.shape[-1])

        def packed(values: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
            weight, bias = combine(values)
            return (pack_for_onednn(weight.to(dtype), rows), None if bias is None else bias.to(dtype))
        try:
            weight, bias = frozen_operands(owner, slot + "/onednn", parts, packed)
            return onednn_linear(x.to(dtype), weight, bias, gelu)
        except RuntimeError as error:  # a build or CPU whose oneDNN lacks it: the plain path from now on
            _ONEDNN_LINEAR["enabled"] = False
            warnings.warn(f"oneDNN packed linear unavailable ({error}); using F.linear")
    weight, bias = frozen_operands(owner, slot, parts, combine)
    if dense_linear_applies(x, weight, bias):
        try:
            y = dense_linear(x, weight, bias)
        except RuntimeError as error:
            _ONEDNN_LINEAR["enabled"] = False
            warnings.warn(f"oneDNN matmul unavailable ({error}); using F.linear")
            y = F.linear(x, weight, bias)
    else:
        y = F.linear(x, weight, bias)
    if not gelu:
        return y
    # in place when nothing needs the pre-activation (inference): no second large buffer
    return torch.ops.aten.gelu_(y) if not (torch.is_grad_enabled() and y.requires_grad) else F.gelu(y)


def frozen_linear(module: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``module(x)`` (then GELU when ``gelu``) through :func:`frozen_product`."""
    parts = (module.weight,) if module.bias is None else (module.weight, module.bias)
    return frozen_product(module, "linear", parts, lambda p: (p[0], p[1] if len(p) > 1 else None), x, gelu)


def linear(in_features: int, out_features: int) -> nn.Linear:
    """nn.Linear that may have zero units (every head or FFN unit pruned away) without a warning."""
    if in_features and out_features:
        return nn.Linear(in_features, out_features)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``; on a CPU the keep mask is drawn 4x faster.

    ``bernoulli_`` draws one 32-bit random number per element (4.8 ms for a [2, 129, 3072] bf16
    activation on the reference CPU); here each 64-bit random word gives four 16-bit uniform draws,
    and an element is kept when its draw is at least round(p * 2^16) (1.2 ms with the masking;
    forward + backward 2.5 vs 4.3-5.3 ms). The kept values are scaled by the exact inverse of that
    keep probability, so the expectation is x.
    """
    if not training or p == 0.0:
        return x
    dropped = round(p * 65536)
    if x.device.type != "cpu" or not x.is_floating_point() or dropped >= 65536 or torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    count = x.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
    keep = words.view(torch.int16)[:count].view(x.shape) >= dropped - 32768
    # where(), not a multiply by the mask: no cast of the mask to x's dtype, forward or backward
    return torch.where(keep, x, 0.0).mul_(65536.0 / (65536 - dropped))


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

    A gated (pruned-to-be) channel must not exist for the statistics, otherwise the pruned
    model would normalise over a different set of channels than the gated one. Inactive
    channels come out as 0.

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


def _time_major_group_norm(x: torch.Tensor, lengths: Optional[List[int]], weight: torch.Tensor,
                           bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-channel normalisation over time (GroupNorm with one channel per group), statistics in
    float32 over each row's first ``lengths[b]`` frames (all frames when lengths is None).

    Args:
        x: [B, T, C] time-major. Returns [B, T, C] in x's dtype.
    """
    rows = [x] if lengths is None else [x[b:b + 1, :n] for b, n in enumerate(lengths)]
    stats = [torch.var_mean(row.float(), dim=1, correction=0, keepdim=True) for row in rows]
    var = torch.cat([v for v, _ in stats], 0)
    mean = torch.cat([m for _, m in stats], 0)
    scale = weight.float() * torch.rsqrt(var + eps)  # [B, 1, C]
    shift = bias.float() - mean * scale
    return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


def _zero_padded_frames(y: torch.Tensor, lengths: Optional[Sequence[int]], time_dim: int = 1,
                        per_utterance: Optional[bool] = None) -> torch.Tensor:
    """``y`` with each utterance's frames from ``lengths[b]`` on set to 0, in place (None: unchanged).

    Every path of the CNN gives padded frames this one value (the CPU window products do not compute
    them at all); valid frames never read them, and the encoder zeroes them again after the projection."""
    if lengths is None:
        return y
    frames = y.shape[time_dim]
    if per_utterance is None:  # on CPUs touch only the padded frames; elsewhere one kernel, not a launch
        per_utterance = y.device.type == "cpu"  # per utterance on each layer's hot path
    if not per_utterance:
        padded = torch.arange(frames, device=y.device)[None, :] >= torch.tensor(lengths, device=y.device)[:, None]
        return y.masked_fill_(padded.unsqueeze(-1) if time_dim == 1 else padded.unsqueeze(1), 0.0)
    for row, count in enumerate(lengths):
        if count < frames:
            y[row].narrow(time_dim - 1, count, frames - count).zero_()
    return y


def _per_row_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """conv1d with its own weights per utterance (a folded GroupNorm) as one grouped conv1d.

    Args:
        x: [B, C_in, T] channels-first (any strides); weight: [B, C_out, kernel * C_in] in (tap, channel)
            order; bias: [B, C_out].
    Returns:
        [B, C_out, T_out] contiguous.
    """
    batch, channels, frames = x.shape
    per_row = weight.view(batch, -1, kernel, channels).permute(0, 1, 3, 2).reshape(-1, channels, kernel)
    return F.conv1d(x.reshape(1, batch * channels, frames), per_row, bias.reshape(-1), stride=stride,
                    groups=batch).view(batch, -1, conv_output_length(frames, kernel, stride))


def _tap_chunks(kernel: int, stride: int) -> List[Tuple[int, int]]:
    """(first tap, taps) chunks of at most ``stride`` taps: the windows of one chunk do not overlap,
    so they are a strided matrix (row stride >= width) that BLAS reads, or writes, in place."""
    return [(start, min(stride, kernel - start)) for start in range(0, kernel, stride)]


def _windows(x: torch.Tensor, start: int, taps: int, kernel: int, stride: int) -> torch.Tensor:
    """[B, T_out, taps * C] view of contiguous ``x`` [B, T, C]: row t holds frames s*t+start ... s*t+start+taps-1."""
    batch, frames, channels = x.shape
    out_frames = conv_output_length(frames, kernel, stride)
    return x.as_strided((batch, out_frames, taps * channels), (frames * channels, stride * channels, 1),
                        x.storage_offset() + start * channels)


def _valid_rows(rows: Optional[Sequence[int]], batch: int, out_frames: int) -> List[int]:
    """Valid output frames per utterance, at most ``out_frames`` (all of them when ``rows`` is None)."""
    return [out_frames] * batch if rows is None else [min(int(n), out_frames) for n in rows]


def window_products(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], kernel: int,
                    stride: int, rows: Optional[Sequence[int]] = None) -> torch.Tensor:
    """A strided 1-D convolution of time-major ``x`` as matrix products over its windows.

    Taps are taken in chunks of at most ``stride`` frames (:func:`_tap_chunks`), so a layer is 1-2
    large GEMMs per utterance with no im2col copy (one per utterance rather than one batched product:
    a shared weight expanded over the batch is copied by ``bmm``, a per-utterance ``mm`` reads it in
    place); narrow overlapping windows (the first layer: 10 samples of one channel) are copied
    instead, which is cheaper than a second pass over the much wider output. Only each utterance's
    valid output frames (``rows``) are computed; the frames after them are 0: a valid frame never
    reads them, and the encoder zeroes padded frames before anything mixes frames.

    Args:
        x: [B, T, C_in], contiguous; weight: [C_out, K] or per row [B, C_out, K] with K = kernel * C_in
            in (tap, channel) order; bias: None, [C_out] or [B, C_out]. All in one dtype.
        rows: valid output frames per utterance (None: all).
    Returns:
        [B, T_out, C_out], T_out = (T - kernel) // stride + 1.
    """
    batch, frames, channels = x.shape
    out_frames = conv_output_length(frames, kernel, stride)
    valid = _valid_rows(rows, batch, out_frames)
    out = torch.empty(batch, out_frames, weight.shape[-2], dtype=x.dtype, device=x.device)
    copied = _copies_windows(kernel, stride, channels, weight.shape[-2])
    windows = x.unfold(1, kernel, stride).transpose(-1, -2).reshape(batch, out_frames, kernel * channels) \
        if copied else None
    for row, count in enumerate(valid):
        row_weight = weight[row] if weight.dim() == 3 else weight
        if copied:
            matmul_into(out[row, :count], windows[row, :count], row_weight.t())
        else:
            for index, (start, taps) in enumerate(_tap_chunks(kernel, stride)):
                part = row_weight[:, start * channels:(start + taps) * channels].t()
                window = _windows(x, start, taps, kernel, stride)[row, :count]
                matmul_into(out[row, :count], window, part, accumulate=index > 0)
        if bias is not None:
            out[row, :count].add_(bias[row] if bias.dim() == 2 else bias)
        if count < out_frames:
            out[row, count:].zero_()
    return out


def _copies_windows(kernel: int, stride: int, in_channels: int, out_channels: int) -> bool:
    """Whether :func:`window_products` copies overlapping windows: narrow ones (the first layer: 10
    samples of one channel), where a copy costs less than a second pass over the much wider output."""
    return kernel > stride and kernel * in_channels <= out_channels


class _WindowConv(torch.autograd.Function):
    """:func:`window_products`, differentiable, with a backward pass of matrix products over the same
    windows: per utterance and tap chunk, the weight gradient is windows^T x output gradient (summed
    over utterances in float32, one rounding per product as oneDNN's bf16 backward rounds its float32
    accumulator once) and the input gradient is output gradient x weight chunk, accumulated in place in
    the chunk's strided window view of the input gradient. On CPU in bf16 a 512-channel layer trains
    about 2.9x faster than with oneDNN's conv1d forward + backward (21 vs 62 ms, 2 x 1.3 s,
    AVX512-BF16), the whole HuBERT CNN's backward 1.5x.

    ``weight`` is either a shared conv weight in its parameter layout [C_out, C_in, k] (any float
    dtype; cast and reordered to (tap, channel) here, its gradient returned in that layout and dtype,
    so the parameter's gradient needs no re-layout) or per-utterance flat weights [B, C_out, K] (a
    folded GroupNorm). Copied (overlapping) windows get no input gradient: they are the waveform, which
    needs none; :meth:`ConvBlock.forward` uses conv1d when it does.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], kernel: int,
                stride: int, per_row: bool, rows: Optional[List[int]] = None) -> torch.Tensor:
        """x: [B, T, C_in] contiguous, in the compute dtype (weight and bias are cast to it); rows: valid
        output frames per utterance (None: all), the others are 0 and pass no gradient."""
        ctx.weight_dtype, ctx.bias_dtype = weight.dtype, None if bias is None else bias.dtype
        if per_row:
            flat = weight.to(x.dtype)
        else:
            # cast, then re-layout: the strided gather is 2x faster over the narrower dtype
            flat = weight.to(x.dtype).permute(0, 2, 1).reshape(weight.shape[0], -1)
        ctx.save_for_backward(x, flat)
        ctx.kernel, ctx.stride, ctx.per_row, ctx.has_bias, ctx.rows = kernel, stride, per_row, bias is not None, rows
        return window_products(x, flat, None if bias is None else bias.to(x.dtype), kernel, stride, rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, flat = ctx.saved_tensors
        kernel, stride = ctx.kernel, ctx.stride
        batch, frames, channels = x.shape
        grad = grad.contiguous()
        valid = _valid_rows(ctx.rows, batch, grad.shape[1])
        accumulate = torch.promote_types(x.dtype, torch.float32)  # sums of bf16 products in float32
        grad_x = grad_weight = grad_bias = None
        if _copies_windows(kernel, stride, channels, flat.shape[-2]):
            if ctx.needs_input_grad[0]:
                raise RuntimeError("window products: no input gradient through copied windows; use conv1d")
            if ctx.needs_input_grad[1]:
                windows = x.unfold(1, kernel, stride).transpose(-1, -2).reshape(batch, -1, kernel * channels)
                products = [matmul(grad[row, :count].t(), windows[row, :count]) for row, count in enumerate(valid)]
                if ctx.per_row:
                    grad_weight = torch.stack(products)  # [B, C_out, K]
                else:
                    total = products[0].to(accumulate)
                    for product in products[1:]:
                        total.add_(product)
                    grad_weight = total.view(-1, kernel, channels).permute(0, 2, 1)
        else:
            # The first tap chunk's windows tile frames [0, stride * n) of an utterance with n valid outputs
            # exactly once when it is `stride` taps wide: its products are written, not added, so only the
            # frames after them need zeros (not a zero pass over the whole input gradient first).
            chunks = _tap_chunks(kernel, stride)
            writes_first = chunks[0][1] == stride
            if ctx.needs_input_grad[0]:
                grad_x = torch.empty_like(x) if writes_first else torch.zeros_like(x)
                if writes_first:
                    for row, count in enumerate(valid):
                        grad_x[row, stride * count:].zero_()
            if ctx.needs_input_grad[1] and not ctx.per_row:
                grad_weight = torch.empty(flat.shape[0], channels, kernel, dtype=accumulate, device=x.device)
            elif ctx.needs_input_grad[1]:
                grad_weight = torch.empty_like(flat)
            for start, taps in chunks:
                columns = slice(start * channels, (start + taps) * channels)
                window = _windows(x, start, taps, kernel, stride)
                if grad_weight is not None and ctx.per_row:
                    for row, count in enumerate(valid):
                        grad_weight[row, :, columns] = matmul(grad[row, :count].t(), window[row, :count])
                elif grad_weight is not None:
                    total = None
                    for row, count in enumerate(valid):
                        product = matmul(grad[row, :count].t(), window[row, :count])  # [C_out, taps * C_in]
                        total = product.to(accumulate) if total is None else total.add_(product)
                    grad_weight[:, :, start:start + taps] = total.view(-1, taps, channels).permute(0, 2, 1)
                if grad_x is not None:
                    view = _windows(grad_x, start, taps, kernel, stride)
                    part = flat[:, columns] if not ctx.per_row else None
                    for row, count in enumerate(valid):
                        weight_part = part if part is not None else flat[row][:, columns]
                        matmul_into(view[row, :count], grad[row, :count], weight_part,
                                    accumulate=not (start == 0 and writes_first))
        if grad_weight is not None:
            grad_weight = grad_weight.to(ctx.weight_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            per_row = torch.cat([_sum_over_frames(grad[row:row + 1, :count], accumulate)
                                 for row, count in enumerate(valid)])
            grad_bias = (per_row if ctx.per_row else per_row.sum(0)).to(ctx.bias_dtype)
        return grad_x, grad_weight, grad_bias, None, None, None, None


def _sum_over_frames(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.sum(1, dtype=dtype)`` for [B, T, C] -> [B, C], over blocks of frames: ``sum(dtype=...)``
    first casts all of x (a first-layer gradient in bf16, 2 x 8319 x 512, became a 34 MB float32
    copy that took longer than the sum)."""
    batch, frames, channels = x.shape
    step = max(1, (1 << 17) // channels)
    total = torch.zeros(batch, channels, dtype=dtype, device=x.device)
    for start in range(0, frames, step):
        total.add_(x[:, start:start + step].sum(1, dtype=dtype))
    return total


class ConvBlock(nn.Module):
    """One CNN layer: convolution, optional norm (GroupNorm per channel or LayerNorm), GELU,
    optional hard-concrete channel gate (applied after GELU).

    A GroupNorm directly after the first convolution is folded into it: the statistics of a
    convolution over time follow from the mean and covariance of its input windows, so the
    block computes ``(conv(x) - mean) * gain / std + bias`` as one product with per-utterance
    weights, with statistics over valid samples only and no pass over the (large) conv output.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, *, bias: bool,
                 norm: Optional[str], prunable: bool = False) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        # nn.Conv1d holds the weight in the checkpoint layout [C_out, C_in, k] and its init.
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

    @property
    def folds_group_norm(self) -> bool:
        return isinstance(self.norm, nn.GroupNorm) and self.in_channels * self.kernel <= FOLDED_NORM_MAX_WINDOW

    def flat_weight(self) -> torch.Tensor:
        """Weight as [C_out, k * C_in] in (tap, channel) order, the order of a time-major window."""
        weight = self.conv.weight
        return weight.permute(0, 2, 1).reshape(weight.shape[0], -1)

    def product_weights(self, x: torch.Tensor, lengths: Optional[List[int]]
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(weight, bias) of the block's product: shared [C_out, K] / [C_out], or per row
        [B, C_out, K] / [B, C_out] when a GroupNorm is folded in (statistics from ``x`` [B, T, C_in])."""
        if self.folds_group_norm:
            return self._folded_group_norm(x, lengths)
        return self.flat_weight(), self.conv.bias

    def _folded_group_norm(self, x: torch.Tensor, lengths: Optional[List[int]]
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-row weights [B, C_out, K] and biases [B, C_out] computing conv + GroupNorm in one product:
        mean = W m + b and var = diag(W S W^T) from the window mean m and covariance S, in float64
        over each row's valid frames (the conv bias cancels)."""
        batch, frames, channels = x.shape
        k, s = self.kernel, self.stride
        out_frames = conv_output_length(frames, k, s)
        weight = self.flat_weight()
        weight64 = weight.double()
        xs = x.float().contiguous()
        windows = xs.as_strided((batch, out_frames, k * channels), (frames * channels, s * channels, 1))
        gamma, beta, eps = self.norm.weight, self.norm.bias, self.norm.eps
        row_weights, row_biases = [], []
        for b in range(batch):
            n = out_frames if lengths is None else lengths[b]
            win = windows[b, :n].double()
            mean = win.mean(0)
            centered = win - mean
            cov = centered.t() @ centered / n
            var = ((weight64 @ cov) * weight64).sum(-1)
            scale = gamma.double() * torch.rsqrt(var + eps)
            row_weights.append((weight64 * scale[:, None]).to(weight.dtype))
            row_biases.append((beta.double() - (weight64 @ mean) * scale).to(weight.dtype))
        return torch.stack(row_weights), torch.stack(row_biases)

    def _normalize_activate(self, y: torch.Tensor, lengths: Optional[List[int]],
                            channel_mask: Optional[torch.Tensor], in_place: bool = False) -> torch.Tensor:
        """Norm (unless folded), GELU, gate. ``in_place``: y is a scratch tensor of the inference
        path; reusing its memory matters on CPU, where fresh large buffers cost page faults (a new
        262 MB tensor for the first layer of a 4 x 10 s batch costs more than the GELU itself)."""
        if isinstance(self.norm, nn.GroupNorm) and not self.folds_group_norm:
            y = _time_major_group_norm(y, lengths, self.norm.weight, self.norm.bias, self.norm.eps)
        elif isinstance(self.norm, nn.LayerNorm):
            if channel_mask is not None:
                y = masked_layer_norm(y, channel_mask != 0, self.norm.weight, self.norm.bias, self.norm.eps)
            else:
                y = F.layer_norm(y, (y.shape[-1],), self.norm.weight, self.norm.bias, self.norm.eps)
        if in_place:
            y = torch.ops.aten.gelu_(y)
            return _zero_padded_frames(y if channel_mask is None else y.mul_(channel_mask.to(y.dtype)), lengths)
        y = F.gelu(y)
        if channel_mask is not None:
            y = y * channel_mask.to(y.dtype)
        return _zero_padded_frames(y, lengths)

    def packs_for_onednn(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether a frozen forward in ``dtype`` (the compute dtype) runs this block through
        :meth:`_packed_products`: float32 on a CPU, shared weights (no folded GroupNorm) over windows
        read in place (not the first layer's copied ones), no autograd on the weight."""
        return (dtype == torch.float32 and not self.folds_group_norm
                and not _copies_windows(self.kernel, self.stride, self.in_channels, self.out_channels)
                and onednn_linear_supports(device, torch.float32) and _is_frozen((self.conv.weight,)))

    def _packed_products(self, x: torch.Tensor, lengths: Optional[List[int]]) -> torch.Tensor:
        """Frozen float32 CPU inference: the window products of :func:`window_products` with each tap
        chunk's weight packed once for oneDNN's matmul (MKL's float32 GEMM lacks AVX-512 on AMD CPUs;
        a 512-channel k=3 layer over 12799 frames: 20.5 vs 28.4 ms for oneDNN's conv1d). Valid frames
        only, the others 0. x: [B, T, C_in]; returns [B, T_out, C_out] float32."""
        batch, frames, channels = x.shape
        kernel, stride = self.kernel, self.stride
        out_frames = conv_output_length(frames, kernel, stride)
        chunks = _tap_chunks(kernel, stride)
        parts = (self.conv.weight,) if self.conv.bias is None else (self.conv.weight, self.conv.bias)

        def packed(values: Sequence[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
            weight = values[0].float()  # [C_out, C_in, k] -> per chunk [C_out, taps * C_in] in (tap, channel) order
            return tuple(pack_for_onednn(weight[:, :, start:start + taps].permute(0, 2, 1).reshape(
                weight.shape[0], taps * channels), out_frames) for start, taps in chunks) + (
                values[1].float() if len(values) > 1 else None,)
        *weights, bias = frozen_operands(self, "conv/onednn", parts, packed)
        x = x.float().contiguous()
        out = x.new_empty(batch, out_frames, self.out_channels)
        for row, count in enumerate(_valid_rows(lengths, batch, out_frames)):
            for index, ((start, taps), weight) in enumerate(zip(chunks, weights)):
                window = _windows(x, start, taps, kernel, stride)[row, :count]  # (copied when strided)
                product = onednn_linear(window, weight, bias if index == 0 else None)
                if index == 0:
                    out[row, :count] = product
                else:
                    out[row, :count] += product
            if count < out_frames:
                out[row, count:].zero_()
        return out

    def _window_products(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         lengths: Optional[List[int]] = None) -> torch.Tensor:
        """CPU inference: the convolution as batched products over windows of the time-major input
        (:func:`window_products`), in the compute dtype with autocast off.

        Args:
            x: [B, T, C_in]; weight: [C_out, K] or per row [B, C_out, K] ((tap, channel) order);
            bias: None, [C_out] or [B, C_out]; lengths: valid output frames per utterance (None: all).
        Returns:
            [B, T_out, C_out] in the compute dtype.
        """
        dtype = compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            bias = None if bias is None else bias.to(dtype)
            return window_products(x.to(dtype).contiguous(), weight.to(dtype), bias, self.kernel, self.stride,
                                   lengths)

    def forward(self, x: torch.Tensor, lengths: Optional[List[int]] = None,
                channel_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run the block on a batch.

        Args:
            x: [B, T_in, C_in] time-major input.
            lengths: valid output frames per row (used by GroupNorm statistics); None = all.
            channel_mask: [C_out] gate values (also marks the channels a LayerNorm may use).
        Returns:
            [B, T_out, C_out].
        """
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(f"conv block expects [batch, frame, {self.in_channels}], got {list(x.shape)}")
        batch, frames, channels = x.shape
        k, s = self.kernel, self.stride
        out_frames = conv_output_length(frames, k, s)
        if out_frames < 1:
            raise ValueError(f"input of {frames} frames is shorter than the kernel ({k}) of a conv layer")
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.conv.weight.requires_grad)
        if not needs_grad and x.numel() > 0 and self.packs_for_onednn(x.device, compute_dtype(x)):
            return self._normalize_activate(self._packed_products(x, lengths), lengths, channel_mask, in_place=True)
        if x.device.type == "cpu" and not needs_grad:
            weight, bias = self.product_weights(x, lengths)
            return self._normalize_activate(self._window_products(x, weight, bias, lengths), lengths, channel_mask,
                                            in_place=True)
        per_row = self.folds_group_norm
        copies_windows = _copies_windows(k, s, channels, self.out_channels)  # (no input gradient through those)
        dtype = compute_dtype(x)
        if x.device.type == "cpu" and (dtype != torch.float32 or onednn_linear_supports(x.device, dtype)) \
                and not (x.requires_grad and copies_windows) and not torch.compiler.is_compiling():  # (torch.compile generates its own kernels)
            # CPU training in bf16/fp16: window products with their own backward (faster than oneDNN's, see
            # _WindowConv; in float32 oneDNN's is faster); the shared weight goes in its parameter layout,
            # so its gradient needs no re-layout
            weight, bias = self.product_weights(x, lengths) if per_row else (self.conv.weight, self.conv.bias)
            with torch.autocast(x.device.type, enabled=False):
                y = _WindowConv.apply(x.to(dtype).contiguous(), weight, bias, k, s, per_row, lengths)
            return self._normalize_activate(y, lengths, channel_mask)
        weight, bias = self.product_weights(x, lengths)
        # GPUs, and CPU float32 training of CNNs that ConvFeatureExtractor cannot run channels-first
        # (LayerNorm, gates): cuDNN / oneDNN convolutions on the channels-first view of the time-major
        # tensor; the result is again a time-major view, so no copies between layers.
        if weight.dim() == 3:  # per-utterance weights of a folded GroupNorm: one group per utterance
            y = _per_row_conv1d(x.transpose(1, 2), weight, bias, k, s).transpose(1, 2)
        else:
            y = F.conv1d(x.transpose(1, 2), self.conv.weight, self.conv.bias, stride=s).transpose(1, 2)
        return self._normalize_activate(y, lengths, channel_mask)


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

    def _channels_first_float32(self, wavs: torch.Tensor) -> bool:
        """Whether this forward runs channels-first through oneDNN's conv1d: float32 on a CPU whose
        torch lacks oneDNN's matmul (the window products would run on MKL's float32 GEMM, at half of
        oneDNN's speed on AMD processors), for CNNs without LayerNorm or channel gates (HuBERT /
        wav2vec 2.0 Base, WavLM Base, every student copied from them). With oneDNN's matmul the
        window products train faster than oneDNN's conv1d (DistilHuBERT's CNN, 2 x 2.6 s, forward +
        backward: 0.35 vs 0.48 s)."""
        return (wavs.device.type == "cpu" and compute_dtype(wavs) == torch.float32
                and not onednn_linear_supports(wavs.device, torch.float32) and not torch.compiler.is_compiling()
                and all(block.gate is None and not isinstance(block.norm, nn.LayerNorm) for block in self.blocks)
                and all(block.norm is None or block.folds_group_norm for block in self.blocks))

    def _forward_channels_first(self, wavs: torch.Tensor, valid: Sequence[Optional[List[int]]]) -> torch.Tensor:
        """Float32 CPU forward on contiguous [B, C, T] activations (a folded first-layer GroupNorm
        becomes one grouped conv1d with per-utterance weights); ``valid``: each block's valid output
        frames per utterance (None: all). Returns [B, N, C] time-major."""
        x = wavs.unsqueeze(1)  # [B, 1, T]
        in_place = not torch.is_grad_enabled()
        for block, block_valid in zip(self.blocks, valid):
            if block.norm is not None:  # folded GroupNorm: per-utterance weights, one group per utterance
                weight, bias = block.product_weights(x.transpose(1, 2), block_valid)  # [B, C_out, k * C_in]
                y = _per_row_conv1d(x, weight, bias, block.kernel, block.stride)
            else:
                y = F.conv1d(x, block.conv.weight, block.conv.bias, stride=block.stride)
            x = _zero_padded_frames(torch.ops.aten.gelu_(y) if in_place else F.gelu(y), block_valid, time_dim=2)
        return x.transpose(1, 2)

    def output_lengths(self, lengths: Union[int, torch.Tensor]):
        """Frames produced from ``lengths`` samples (int or tensor [B])."""
        for block in self.blocks:
            lengths = conv_output_length(lengths, block.kernel, block.stride)
        return lengths

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None, *,
                host_lengths: Optional[List[int]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            wavs: [B, T] float waveform; lengths: [B] valid samples or None; host_lengths: the same
                lengths as Python ints when the caller has them (saves a device-to-host copy).
        Returns:
            features [B, N, C]; mask [C] of the last layer's channel gate (None without gates).
        """
        masks = [block.gate() if block.gate is not None else None for block in self.blocks]
        if host_lengths is None and lengths is not None:
            host_lengths = lengths.tolist()
        full = host_lengths is None or all(n == wavs.shape[1] for n in host_lengths)
        valid: List[Optional[List[int]]] = []  # each block's valid output frames per utterance
        samples = None if full else list(host_lengths)
        for block in self.blocks:
            samples = None if samples is None else [max(conv_output_length(n, block.kernel, block.stride), 1)
                                                    for n in samples]
            valid.append(samples)
        # A frozen forward whose layers run on packed oneDNN products stays time-major (faster than conv1d).
        if self._channels_first_float32(wavs) and not (
                _is_frozen(list(self.parameters()))
                and all(block.packs_for_onednn(wavs.device, torch.float32) for block in self.blocks[1:])):
            x = self._forward_channels_first(wavs, valid)
        else:
            x = wavs.unsqueeze(-1)
            for block, mask, block_valid in zip(self.blocks, masks, valid):
                x = block(x, block_valid, mask)
        if self.output_scale is not None:
            x = x * self.output_scale.to(x.dtype)
        return x, masks[-1]


def _fft_size(length: int) -> int:
    """Smallest 2^a 3^b 5^c >= length (sizes the FFT handles fastest)."""
    size = length
    while True:
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1


class _TapWeightNorm(torch.autograd.Function):
    """``v * (g / ||v||)`` with the norm over all dims but the last (the kernel tap), written once in
    the compute dtype, with a hand-written backward.

    Autograd's version of the same expression (norm, divide, broadcast multiply, then autocast's
    cast) allocates about seven temporaries of the kernel's size per update in forward and backward;
    for DistilHuBERT's positional conv (4.7 M weights, 19 MB in float32) that cost more than the
    convolution itself on a CPU, where each fresh large buffer is paid again in page faults. Here
    the only full-size buffers are the output and the gradient of v; the reductions and products
    run over row blocks of about 1 MiB, whose temporaries stay in cache (forward + backward of
    that kernel: 8 vs 22-30 ms with whole-tensor temporaries). With s = g / n per tap and
    d = sum(grad * v): grad_g = d / n and grad_v = s * grad - (s * d / n^2) * v.
    """

    @staticmethod
    def _blocks(*tensors: torch.Tensor) -> Any:
        """Row blocks of ~1 MiB in float32 of [rows, k] tensors, zipped."""
        rows = max(1, (1 << 18) // tensors[0].shape[-1])
        return zip(*(t.split(rows) for t in tensors))

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """v: [..., k] float32; g: broadcastable [1, ..., 1, k]. Returns v's shape in ``dtype``."""
        taps = v.shape[-1]
        rows = v.reshape(-1, taps)
        # (Measured on CPU for [36864, 128]: a sum of squares is 5x faster than linalg.vector_norm
        # over dim 0, and a [1, k] operand broadcasts 5x faster than a [k] one.)
        norm = torch.zeros(1, taps, dtype=v.dtype, device=v.device)
        for (block,) in _TapWeightNorm._blocks(rows):
            norm.add_((block * block).sum(0, keepdim=True))
        norm.sqrt_()  # [1, k]
        scale = g.reshape(1, taps) / norm
        weight = torch.empty(rows.shape, dtype=dtype, device=v.device)
        for block, out in _TapWeightNorm._blocks(rows, weight):
            if dtype == v.dtype:
                torch.mul(block, scale, out=out)
            else:
                out.copy_(block * scale)
        ctx.save_for_backward(v, norm, scale)
        ctx.g_shape = g.shape
        return weight.view(v.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        v, norm, scale = ctx.saved_tensors
        taps = v.shape[-1]
        rows = v.reshape(-1, taps)
        grad_rows = grad.reshape(-1, taps)
        dot = torch.zeros(1, taps, dtype=v.dtype, device=v.device)  # sum(grad * v) per tap
        for grad_block, block in _TapWeightNorm._blocks(grad_rows, rows):
            dot.add_((grad_block.to(v.dtype) * block).sum(0, keepdim=True))
        grad_g = (dot / norm).reshape(ctx.g_shape) if ctx.needs_input_grad[1] else None
        grad_v = None
        if ctx.needs_input_grad[0]:
            grad_v = torch.empty_like(rows)
            shrink = scale * dot / (norm * norm)
            for grad_block, block, out in _TapWeightNorm._blocks(grad_rows, rows, grad_v):
                torch.mul(grad_block, scale, out=out).addcmul_(block, shrink, value=-1.0)
            grad_v = grad_v.view(v.shape)
        return grad_v, grad_g, None


class _GroupedConvInputGradByConv(torch.autograd.Function):
    """``conv1d(x, weight, bias, padding, groups)`` (stride 1) whose input gradient is computed as a forward
    convolution of the output gradient with the taps reversed and in/out channels swapped per group.

    For the positional conv (k = 128, 16 groups, a few hundred frames) oneDNN's backward-data pass on
    CPU is 2.3x slower than its forward pass of the same size (12.6 vs 5.4 ms for HuBERT Base's shape,
    2 x 65 frames, bf16); the weight gradient still comes from oneDNN's backward-weights pass.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: int,
                groups: int) -> torch.Tensor:
        """x: [B, C_in, T] (any strides); weight: [C_out, C_in / groups, k]; returns [B, C_out, T + 2p - k + 1]."""
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.groups, ctx.has_bias = padding, groups, bias is not None
        return F.conv1d(x, weight, bias, padding=padding, groups=groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        groups, padding = ctx.groups, ctx.padding
        c_out, c_in_group, kernel = weight.shape
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            swapped = weight.view(groups, c_out // groups, c_in_group, kernel).transpose(1, 2).reshape(
                groups * c_in_group, c_out // groups, kernel).flip(-1)
            grad_x = F.conv1d(grad, swapped, None, padding=kernel - 1 - padding, groups=groups)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1], [padding], [1], False, [0], groups, [False, True, False])[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2))
        return grad_x, grad_weight, grad_bias, None, None


def _group_major_padded(x: torch.Tensor, groups: int, left: int, right: int) -> torch.Tensor:
    """Time-major [B, T, G * C] -> zero-padded channels-first per group [G, B, C, left + T + right]."""
    batch, frames, channels = x.shape
    per_group = channels // groups
    padded = x.new_zeros(groups, batch, per_group, left + frames + right)
    padded[:, :, :, left:left + frames] = x.view(batch, frames, groups, per_group).permute(2, 0, 3, 1)
    return padded


def _window_blocks(padded: torch.Tensor, frames: int, kernel: int, buffer: torch.Tensor) -> Any:
    """(first frame, window matrix) blocks of one group's padded input [B, C, T + k - 1]: row (b, t)
    of a block's [B * t_block, C * k] matrix holds padded[b, :, t:t + k] in (channel, tap) order, the
    order of a conv weight row, copied into ``buffer`` (a few MB, so the copy stays in cache)."""
    batch, channels, length = padded.shape
    step = max(1, buffer.shape[0] // batch)
    for start in range(0, frames, step):
        count = min(step, frames - start)
        windows = padded.as_strided((batch, count, channels, kernel), (channels * length, 1, length, 1),
                                    padded.storage_offset() + start)
        block = buffer[:batch * count]
        block.view(batch, count, channels, kernel).copy_(windows)
        yield start, block


class _GroupedConvByWindows(torch.autograd.Function):
    """The positional conv (stride 1, k taps, "same" output length) on CPUs in bf16/fp16 as matrix
    products over copied windows, one group and a block of frames at a time, with a hand-written backward.

    oneDNN's grouped conv with DistilHuBERT's shape (768 channels, 16 groups, k = 128, 2 x 130 frames,
    bf16) runs at ~250 GFLOP/s forward and slower still for the weight gradient (10 and 17-20 ms); a
    window matrix of one group ([frames, C_in * k], a few MB, copied in cache) times the group's
    [C_out, C_in * k] weight takes 4.5 ms for the forward and 8.4 for the weight gradient. The weight is
    used in its parameter layout (rows in (channel, tap) order, the windows' order); the input gradient
    is the same product over windows of the padded output gradient, reversed in time, with in/out
    channels swapped. Weight-gradient products are summed over blocks in float32.
    """

    BLOCK_ELEMENTS = 1 << 21  # 4 MB of bf16 windows per block

    @staticmethod
    def _buffer(like: torch.Tensor, batch: int, width: int) -> torch.Tensor:
        """Scratch for one block of window rows (at least one frame of every utterance)."""
        return like.new_empty(max(batch, _GroupedConvByWindows.BLOCK_ELEMENTS // width), width)

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int
                ) -> torch.Tensor:
        """x: [B, T, D] time-major; weight: [D, D / groups, k]; bias: [D] or None; all in one dtype.
        Returns [B, T, D]: output t reads frames t - k // 2 ... t - k // 2 + k - 1."""
        batch, frames, channels = x.shape
        out_channels, in_group, kernel = weight.shape
        out_group = out_channels // groups
        left = kernel // 2
        padded = _group_major_padded(x, groups, left, kernel - 1 - left)
        buffer = _GroupedConvByWindows._buffer(x, batch, in_group * kernel)
        flat = weight.reshape(groups, out_group, in_group * kernel)
        out = x.new_empty(groups, batch, frames, out_group)
        for group in range(groups):
            for start, block in _window_blocks(padded[group], frames, kernel, buffer):
                count = block.shape[0] // batch
                product = torch.mm(block, flat[group].t())
                out[group, :, start:start + count] = product.view(batch, count, out_group)
        y = out.permute(1, 2, 0, 3).reshape(batch, frames, out_channels)
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x, weight)
        ctx.groups, ctx.has_bias = groups, bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        groups = ctx.groups
        batch, frames, channels = x.shape
        out_channels, in_group, kernel = weight.shape
        out_group = out_channels // groups
        left = kernel // 2
        grad = grad.contiguous()
        grad_x = grad_weight = grad_bias = None
        grouped_grad = grad.view(batch, frames, groups, out_group).permute(2, 0, 1, 3)  # [G, B, T, C_out]
        if ctx.needs_input_grad[1]:
            padded = _group_major_padded(x, groups, left, kernel - 1 - left)
            buffer = _GroupedConvByWindows._buffer(x, batch, in_group * kernel)
            # One block per group (short batches): each product is the gradient, written in place. Several:
            # summed in float32 (oneDNN's bf16 backward also rounds its float32 accumulator once).
            single = buffer.shape[0] // batch >= frames and weight.dtype == x.dtype == grad.dtype
            accumulate = weight.dtype if single else torch.promote_types(x.dtype, torch.float32)
            total = torch.empty(groups, out_group, in_group * kernel, dtype=accumulate, device=x.device)
            for group in range(groups):
                for start, block in _window_blocks(padded[group], frames, kernel, buffer):
                    count = block.shape[0] // batch
                    rows_grad = grouped_grad[group, :, start:start + count].reshape(-1, out_group)
                    if single:
                        torch.mm(rows_grad.t(), block, out=total[group])
                    elif start == 0:
                        total[group].copy_(torch.mm(rows_grad.t(), block))
                    else:
                        total[group] += torch.mm(rows_grad.t(), block)
            grad_weight = total.view(out_channels, in_group, kernel).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            # x[u] fed outputs t = u + left - j (tap j): its gradient sums grad[u + left - j] * w[:, :, j].
            # Over the output gradient padded by (k - 1 - left, left) and reversed in time, the window at
            # v = T - 1 - u holds exactly those frames in tap order, so the weight needs no tap flip (a
            # slow copy), only its (out, tap) rows; the result comes out reversed in time.
            padded = _group_major_padded(grad, groups, kernel - 1 - left, left).flip(-1)
            rows_weight = weight.view(groups, out_group, in_group, kernel).transpose(2, 3).reshape(
                groups, out_group * kernel, in_group)
            out = x.new_empty(groups, batch, frames, in_group)
            buffer = _GroupedConvByWindows._buffer(x, batch, out_group * kernel)
            for group in range(groups):
                for start, block in _window_blocks(padded[group], frames, kernel, buffer):
                    count = block.shape[0] // batch
                    out[group, :, start:start + count] = torch.mm(block, rows_weight[group]).view(batch, count,
                                                                                                   in_group)
            out = out.flip(2)
            grad_x = out.permute(1, 2, 0, 3).reshape(batch, frames, channels)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = _sum_over_frames(grad, torch.promote_types(grad.dtype, torch.float32)).sum(0).to(grad.dtype)
        return grad_x, grad_weight, grad_bias, None


class PositionalConv(nn.Module):
    """Convolutional relative position embedding: weight-normalised grouped Conv1d (norm over all
    dims but the kernel axis), "same" padding that drops the last frame for even kernels, GELU.
    Returns the embedding; the caller adds it to its input.

    CPU inference computes the (k = 128, 16-group) convolution through FFTs: per frequency a
    group is a small matrix product, about 30x fewer multiplications than the direct form.
    Training uses ``conv1d``; on CPU with the kernel from :class:`_TapWeightNorm`, and in bf16/fp16
    as window products (:class:`_GroupedConvByWindows`, 2x faster than oneDNN's grouped conv there).
    """

    def __init__(self, hidden_size: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.groups = groups
        weight = torch.empty(hidden_size, hidden_size // groups, kernel)
        nn.init.normal_(weight, mean=0.0, std=math.sqrt(4.0 / (kernel * hidden_size)))
        self.weight_v = nn.Parameter(weight)
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(weight, dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self._spectrum_cache: Optional[Tuple[Tuple[Tuple[torch.Tensor, ...], tuple], Dict[int, torch.Tensor]]] = None

    def weight(self) -> torch.Tensor:
        """Effective kernel [D, D / groups, k]."""
        # The norm per tap over (out, in): one column reduction of the contiguous [D * D/groups, k] view.
        norm = torch.linalg.vector_norm(self.weight_v.flatten(0, 1), dim=0).view(1, 1, -1)
        return self.weight_v * (self.weight_g / norm)

    def _kernel_spectrum(self, size: int) -> torch.Tensor:
        """rfft of the reversed kernel zero-padded to ``size``: [F, groups, C_in, C_out] complex.

        Output t = sum_j w[j] x[t + j - pad] is sample t + k - 1 - pad of the linear convolution of x
        with h[i] = w[k - 1 - i]; ``size`` >= frames + k - 1 keeps that range free of wrap-around.
        Spectra of a frozen kernel are kept for the last few sizes: batches of different lengths
        alternate, and recomputing a spectrum costs more than the convolution it serves."""
        parts = (self.weight_v, self.weight_g)
        state = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in parts)
        if self._spectrum_cache is None or not _same_parameters(self._spectrum_cache[0], parts, state):
            self._spectrum_cache = ((parts, state), {})
        spectra = self._spectrum_cache[1]
        if size in spectra:
            spectra[size] = spectra.pop(size)  # most recently used last
            return spectra[size]
        weight = self.weight().float()  # [D_out, C_in, k]
        d_out, c_in, _ = weight.shape
        spectrum = torch.fft.rfft(weight.flip(-1), n=size, dim=-1)  # [D_out, C_in, F]
        groups = self.groups
        spectrum = spectrum.view(groups, d_out // groups, c_in, -1).permute(3, 0, 2, 1).contiguous()
        while len(spectra) >= SPECTRUM_CACHE_SIZES:
            spectra.pop(next(iter(spectra)))
        spectra[size] = spectrum
        return spectrum

    def _fft_forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, channels = x.shape
        size = _fft_size(frames + self.kernel)
        spectrum = self._kernel_spectrum(size)  # [F, G, C_in, C_out]
        with torch.autocast(x.device.type, enabled=False):
            signal = torch.fft.rfft(x.float(), n=size, dim=1)  # [B, F, D]
            signal = signal.view(batch, -1, self.groups, channels // self.groups).permute(1, 2, 0, 3)
            mixed = torch.matmul(signal, spectrum)  # [F, G, B, C_out]
            mixed = mixed.permute(2, 0, 1, 3).reshape(batch, -1, channels)
            offset = self.kernel - 1 - self.kernel // 2
            y = torch.fft.irfft(mixed, n=size, dim=1)[:, offset:offset + frames] + self.bias.float()
            return F.gelu(y).to(compute_dtype(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> position embedding [B, N, D]."""
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight_v.requires_grad)
        if x.device.type == "cpu" and not needs_grad:
            return self._fft_forward(x)
        self._spectrum_cache = None
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            # the kernel straight in the compute dtype, through the fused weight norm (_TapWeightNorm)
            dtype = compute_dtype(x)
            with torch.autocast(x.device.type, enabled=False):
                weight = _TapWeightNorm.apply(self.weight_v, self.weight_g, dtype)
                if dtype != torch.float32:  # window products (_GroupedConvByWindows); float32 stays on oneDNN
                    return F.gelu(_GroupedConvByWindows.apply(x.to(dtype).contiguous(), weight, self.bias.to(dtype),
                                                              self.groups))
                y = _GroupedConvInputGradByConv.apply(x.transpose(1, 2).to(dtype), weight, self.bias.to(dtype),
                                                      self.kernel // 2, self.groups)
            if self.kernel % 2 == 0:
                y = y[:, :, :-1]
            return F.gelu(y).transpose(1, 2)
        y = F.conv1d(x.transpose(1, 2), self.weight(), self.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


def relative_position_buckets(num_frames: int, num_buckets: int, max_distance: int,
                              device: Optional[torch.device] = None) -> torch.Tensor:
    """T5-style bidirectional buckets of (key - query) offsets, as WavLM uses them: [N, N] long.

    Half of the buckets per sign; offsets below a quarter of the buckets are exact, larger
    ones are log-spaced up to ``max_distance`` and clipped.
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


def _softmax_last_dim(scores: torch.Tensor) -> torch.Tensor:
    """``torch.softmax(scores, -1)``, written over ``scores`` when no gradient is needed: a fresh
    [B, H, N, N] float32 map is tens of MB (4 x 12 x 500^2: 48 MB), and on a CPU its page faults cost
    4x the softmax itself (16.8 vs 3.3 ms)."""
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
        """Q, K, V weights and biases, fused into one projection by :func:`_concatenated_qkv` (kept while
        frozen: :func:`frozen_product`)."""
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
            v = frozen_linear(self.v_proj, x).view(batch, frames, heads, dim).transpose(1, 2)
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
            qkv = frozen_product(self, "qkv", self._qkv_parts(), _concatenated_qkv, x)
            q, k, v = qkv.view(batch, frames, 3, heads, dim).permute(2, 0, 3, 1, 4)
            mask: Optional[torch.Tensor] = None
            if position_bias is not None and self.gate_proj is not None:
                mask = self._gated_bias(x, position_bias)
                if key_padding_mask is not None:
                    mask = mask.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            elif key_padding_mask is not None:
                mask = ~key_padding_mask[:, None, None, :]
            # On CPUs an attention dropout sends SDPA to its unfused path anyway (with a slower mask);
            # the explicit one below is the same computation with :func:`dropout`.
            explicit = need_probs or (drop > 0.0 and x.device.type == "cpu" and not torch.compiler.is_compiling())
            if explicit:
                # scaling q ([B, H, N, d]) is cheaper than scaling the scores ([B, H, N, N])
                scores = torch.matmul(q * (dim ** -0.5), k.transpose(-1, -2)).float()
                if mask is not None:
                    scores = scores + mask if mask.dtype != torch.bool else scores.masked_fill(~mask, float("-inf"))
                probs = _softmax_last_dim(scores)
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
        return frozen_linear(self.out_proj, out), probs


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
        h = frozen_linear(self.fc1, x, gelu=True)
        h = self.activation_dropout(h)
        if self.unit_gate is not None:
            h = h * self.unit_gate().to(h.dtype)
        return self.dropout(frozen_linear(self.fc2, h))


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
