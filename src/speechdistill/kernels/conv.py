"""The ``conv_features`` op on CPUs: the CNN of :class:`speechdistill.models.components.ConvFeatureExtractor`
computed time-major, ``[batch, frame, channel]`` from the first layer on, valid frames only.

A strided convolution over time-major frames is a few large matrix products over windows of the input
(a window of k frames is one contiguous run of memory that BLAS reads in place), with no im2col copy and
no transpose before the transformer (:func:`window_products`); training uses them with a hand-written
backward (:class:`WindowConv`: a 512-channel layer trains about 2.9x faster than with oneDNN's conv1d in
bf16, 21 vs 62 ms for 2 x 1.3 s on AVX512-BF16). Frozen float32 layers keep each tap chunk's weight packed
for oneDNN (:func:`packed_products`, 20.5 vs 28.4 ms with conv1d for a 512-channel k=3 layer). A
GroupNorm directly after a narrow first convolution is folded into its weights: the statistics of a
convolution over time follow from the mean and covariance of its input windows, so the layer computes
``(conv(x) - mean) * gain / std + bias`` as one product with per-utterance weights, without a pass over
the (large) conv output. Padded frames come out 0; each utterance's valid frames are computed alone.

Call: ``run(extractor, wavs [B, T], host_lengths: list of B ints or None, masks: per layer [C] gate or None)
-> [B, N, C]`` in the compute dtype, before the extractor's output scale.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn
from .cache import kept
from .registry import Kernel, Request, compute_dtype, is_frozen, register

# Largest conv window (k * C_in) whose GroupNorm statistics are derived from window moments.
FOLDED_NORM_MAX_WINDOW = 64


def conv_output_length(length: int, kernel: int, stride: int) -> int:
    return (length - kernel) // stride + 1


def tap_chunks(kernel: int, stride: int) -> List[Tuple[int, int]]:
    """(first tap, taps) chunks of at most ``stride`` taps: the windows of one chunk do not overlap, so
    they are a strided matrix (row stride >= width) that BLAS reads, or writes, in place."""
    return [(start, min(stride, kernel - start)) for start in range(0, kernel, stride)]


def windows(x: torch.Tensor, start: int, taps: int, kernel: int, stride: int) -> torch.Tensor:
    """[B, T_out, taps * C] view of contiguous ``x`` [B, T, C]: row t holds frames s*t+start ... s*t+start+taps-1."""
    batch, frames, channels = x.shape
    out_frames = conv_output_length(frames, kernel, stride)
    return x.as_strided((batch, out_frames, taps * channels), (frames * channels, stride * channels, 1),
                        x.storage_offset() + start * channels)


def valid_rows(rows: Optional[Sequence[int]], batch: int, out_frames: int) -> List[int]:
    """Valid output frames per utterance, at most ``out_frames`` (all of them when ``rows`` is None)."""
    return [out_frames] * batch if rows is None else [min(int(n), out_frames) for n in rows]


def copies_windows(kernel: int, stride: int, in_channels: int, out_channels: int) -> bool:
    """Whether :func:`window_products` copies overlapping windows: narrow ones (the first layer: 10 samples
    of one channel), where a copy costs less than a second pass over the much wider output."""
    return kernel > stride and kernel * in_channels <= out_channels


def sum_over_frames(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.sum(1, dtype=dtype)`` for [B, T, C] -> [B, C], over blocks of frames: ``sum(dtype=...)`` first
    casts all of x (a first-layer gradient in bf16, 2 x 8319 x 512, became a 34 MB float32 copy that took
    longer than the sum)."""
    batch, frames, channels = x.shape
    step = max(1, (1 << 17) // channels)
    total = torch.zeros(batch, channels, dtype=dtype, device=x.device)
    for start in range(0, frames, step):
        total.add_(x[:, start:start + step].sum(1, dtype=dtype))
    return total


def window_products(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], kernel: int,
                    stride: int, rows: Optional[Sequence[int]] = None) -> torch.Tensor:
    """A strided 1-D convolution of time-major ``x`` as matrix products over its windows.

    Taps are taken in chunks of at most ``stride`` frames (:func:`tap_chunks`), so a layer is 1-2 large
    GEMMs per utterance with no im2col copy (one per utterance rather than one batched product: a shared
    weight expanded over the batch is copied by ``bmm``, a per-utterance ``mm`` reads it in place); narrow
    overlapping windows (the first layer: 10 samples of one channel) are copied instead, which is cheaper
    than a second pass over the much wider output. Only each utterance's valid output frames (``rows``)
    are computed; the frames after them are 0.

    Args:
        x: [B, T, C_in], contiguous; weight: [C_out, K] or per row [B, C_out, K] with K = kernel * C_in in
            (tap, channel) order; bias: None, [C_out] or [B, C_out]. All in one dtype.
        rows: valid output frames per utterance (None: all).
    Returns:
        [B, T_out, C_out], T_out = (T - kernel) // stride + 1.
    """
    batch, frames, channels = x.shape
    out_frames = conv_output_length(frames, kernel, stride)
    valid = valid_rows(rows, batch, out_frames)
    out = torch.empty(batch, out_frames, weight.shape[-2], dtype=x.dtype, device=x.device)
    copied = copies_windows(kernel, stride, channels, weight.shape[-2])
    copies = x.unfold(1, kernel, stride).transpose(-1, -2).reshape(batch, out_frames, kernel * channels) \
        if copied else None
    for row, count in enumerate(valid):
        row_weight = weight[row] if weight.dim() == 3 else weight
        if copied:
            onednn.matmul_into(out[row, :count], copies[row, :count], row_weight.t())
        else:
            for index, (start, taps) in enumerate(tap_chunks(kernel, stride)):
                part = row_weight[:, start * channels:(start + taps) * channels].t()
                window = windows(x, start, taps, kernel, stride)[row, :count]
                onednn.matmul_into(out[row, :count], window, part, accumulate=index > 0)
        if bias is not None:
            out[row, :count].add_(bias[row] if bias.dim() == 2 else bias)
        if count < out_frames:
            out[row, count:].zero_()
    return out


class WindowConv(torch.autograd.Function):
    """:func:`window_products`, differentiable, with a backward pass of matrix products over the same
    windows: per utterance and tap chunk, the weight gradient is windows^T x output gradient (summed over
    utterances in float32, one rounding per product as oneDNN's bf16 backward rounds its float32
    accumulator once) and the input gradient is output gradient x weight chunk, accumulated in place in
    the chunk's strided window view of the input gradient.

    ``weight`` is either a shared conv weight in its parameter layout [C_out, C_in, k] (any float dtype;
    cast and reordered to (tap, channel) here, its gradient returned in that layout and dtype) or
    per-utterance flat weights [B, C_out, K] (a folded GroupNorm). Copied (overlapping) windows get no
    input gradient: they are the waveform, which needs none.
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
        valid = valid_rows(ctx.rows, batch, grad.shape[1])
        accumulate = torch.promote_types(x.dtype, torch.float32)  # sums of bf16 products in float32
        grad_x = grad_weight = grad_bias = None
        if copies_windows(kernel, stride, channels, flat.shape[-2]):
            if ctx.needs_input_grad[0]:
                raise RuntimeError("window products: no input gradient through copied windows; use conv1d")
            if ctx.needs_input_grad[1]:
                copies = x.unfold(1, kernel, stride).transpose(-1, -2).reshape(batch, -1, kernel * channels)
                products = [onednn.matmul(grad[row, :count].t(), copies[row, :count])
                            for row, count in enumerate(valid)]
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
            chunks = tap_chunks(kernel, stride)
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
                window = windows(x, start, taps, kernel, stride)
                if grad_weight is not None and ctx.per_row:
                    for row, count in enumerate(valid):
                        grad_weight[row, :, columns] = onednn.matmul(grad[row, :count].t(), window[row, :count])
                elif grad_weight is not None:
                    total = None
                    for row, count in enumerate(valid):
                        product = onednn.matmul(grad[row, :count].t(), window[row, :count])  # [C_out, taps*C_in]
                        total = product.to(accumulate) if total is None else total.add_(product)
                    grad_weight[:, :, start:start + taps] = total.view(-1, taps, channels).permute(0, 2, 1)
                if grad_x is not None:
                    view = windows(grad_x, start, taps, kernel, stride)
                    part = flat[:, columns] if not ctx.per_row else None
                    for row, count in enumerate(valid):
                        weight_part = part if part is not None else flat[row][:, columns]
                        onednn.matmul_into(view[row, :count], grad[row, :count], weight_part,
                                           accumulate=not (start == 0 and writes_first))
        if grad_weight is not None:
            grad_weight = grad_weight.to(ctx.weight_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            per_row = torch.cat([sum_over_frames(grad[row:row + 1, :count], accumulate)
                                 for row, count in enumerate(valid)])
            grad_bias = (per_row if ctx.per_row else per_row.sum(0)).to(ctx.bias_dtype)
        return grad_x, grad_weight, grad_bias, None, None, None, None


def per_row_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernel: int, stride: int
                   ) -> torch.Tensor:
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


def folds_group_norm(block: nn.Module) -> bool:
    """Whether ``block``'s GroupNorm is folded into its convolution (a narrow first layer)."""
    return isinstance(block.norm, nn.GroupNorm) and block.in_channels * block.kernel <= FOLDED_NORM_MAX_WINDOW


def flat_weight(block: nn.Module) -> torch.Tensor:
    """Conv weight as [C_out, k * C_in] in (tap, channel) order, the order of a time-major window."""
    weight = block.conv.weight
    return weight.permute(0, 2, 1).reshape(weight.shape[0], -1)


def folded_group_norm(block: nn.Module, x: torch.Tensor, lengths: Optional[List[int]]
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row weights [B, C_out, K] and biases [B, C_out] computing conv + GroupNorm in one product:
    mean = W m + b and var = diag(W S W^T) from the window mean m and covariance S, in float64 over each
    row's valid frames (the conv bias cancels). x: [B, T, C_in]."""
    batch, frames, channels = x.shape
    k, s = block.kernel, block.stride
    out_frames = conv_output_length(frames, k, s)
    weight = flat_weight(block)
    weight64 = weight.double()
    xs = x.float().contiguous()
    strided = xs.as_strided((batch, out_frames, k * channels), (frames * channels, s * channels, 1))
    gamma, beta, eps = block.norm.weight, block.norm.bias, block.norm.eps
    row_weights, row_biases = [], []
    for b in range(batch):
        n = out_frames if lengths is None else lengths[b]
        win = strided[b, :n].double()
        mean = win.mean(0)
        centered = win - mean
        cov = centered.t() @ centered / n
        var = ((weight64 @ cov) * weight64).sum(-1)
        scale = gamma.double() * torch.rsqrt(var + eps)
        row_weights.append((weight64 * scale[:, None]).to(weight.dtype))
        row_biases.append((beta.double() - (weight64 @ mean) * scale).to(weight.dtype))
    return torch.stack(row_weights), torch.stack(row_biases)


def product_weights(block: nn.Module, x: torch.Tensor, lengths: Optional[List[int]]
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight, bias) of the block's product: shared [C_out, K] / [C_out], or per row [B, C_out, K] /
    [B, C_out] when a GroupNorm is folded in (statistics from ``x`` [B, T, C_in])."""
    if folds_group_norm(block):
        return folded_group_norm(block, x, lengths)
    return flat_weight(block), block.conv.bias


def time_major_group_norm(x: torch.Tensor, lengths: Optional[List[int]], norm: nn.GroupNorm) -> torch.Tensor:
    """Per-channel normalisation over time, statistics in float32 over each row's first ``lengths[b]``
    frames (all frames when lengths is None). x: [B, T, C] time-major; returns x's shape and dtype."""
    rows = [x] if lengths is None else [x[b:b + 1, :n] for b, n in enumerate(lengths)]
    stats = [torch.var_mean(row.float(), dim=1, correction=0, keepdim=True) for row in rows]
    var = torch.cat([v for v, _ in stats], 0)
    mean = torch.cat([m for _, m in stats], 0)
    scale = norm.weight.float() * torch.rsqrt(var + norm.eps)  # [B, 1, C]
    shift = norm.bias.float() - mean * scale
    return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


def zero_padded_frames(y: torch.Tensor, lengths: Optional[Sequence[int]]) -> torch.Tensor:
    """``y`` [B, T, C] with each utterance's frames from ``lengths[b]`` on set to 0, in place."""
    if lengths is None:
        return y
    frames = y.shape[1]
    for row, count in enumerate(lengths):
        if count < frames:
            y[row, count:].zero_()
    return y


def normalize_activate(block: nn.Module, y: torch.Tensor, lengths: Optional[List[int]],
                       channel_mask: Optional[torch.Tensor], in_place: bool = False) -> torch.Tensor:
    """Norm (unless folded), GELU, gate, padded frames 0, on time-major y [B, T, C]. ``in_place``: y is a
    scratch tensor of an inference pass; reusing its memory matters on CPU, where fresh large buffers cost
    page faults (a new 262 MB tensor for the first layer of a 4 x 10 s batch costs more than the GELU)."""
    if isinstance(block.norm, nn.GroupNorm) and not folds_group_norm(block):
        y = time_major_group_norm(y, lengths, block.norm)
    elif isinstance(block.norm, nn.LayerNorm):
        y = block.layer_norm(y, channel_mask)
    if in_place:
        y = torch.ops.aten.gelu_(y)
        return zero_padded_frames(y if channel_mask is None else y.mul_(channel_mask.to(y.dtype)), lengths)
    y = F.gelu(y)
    if channel_mask is not None:
        y = y * channel_mask.to(y.dtype)
    return zero_padded_frames(y, lengths)


def packs_for_onednn(block: nn.Module, dtype: torch.dtype) -> bool:
    """Whether a no-grad forward of ``block`` in ``dtype`` runs on packed oneDNN products: float32, frozen
    shared weights (no folded GroupNorm) over windows read in place (not the first layer's copied ones)."""
    return (dtype == torch.float32 and not folds_group_norm(block)
            and not copies_windows(block.kernel, block.stride, block.in_channels, block.out_channels)
            and onednn.available(torch.float32) and is_frozen((block.conv.weight, block.conv.bias)))


def packed_products(block: nn.Module, x: torch.Tensor, lengths: Optional[List[int]]) -> torch.Tensor:
    """Frozen float32 inference: :func:`window_products` with each tap chunk's weight kept packed for
    oneDNN's matmul. Valid frames only, the others 0. x: [B, T, C_in]; returns [B, T_out, C_out] float32."""
    batch, frames, channels = x.shape
    kernel, stride = block.kernel, block.stride
    out_frames = conv_output_length(frames, kernel, stride)
    chunks = tap_chunks(kernel, stride)
    parts = (block.conv.weight,) if block.conv.bias is None else (block.conv.weight, block.conv.bias)

    def derive(values: Sequence[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
        weight = values[0].float()  # [C_out, C_in, k] -> per chunk [C_out, taps * C_in] in (tap, channel) order
        return tuple(onednn.pack(weight[:, :, start:start + taps].permute(0, 2, 1).reshape(
            weight.shape[0], taps * channels), out_frames) for start, taps in chunks) + (
            values[1].float() if len(values) > 1 else None,)

    *weights, bias = kept(block, "conv/onednn", parts, derive)
    x = x.float().contiguous()
    out = x.new_empty(batch, out_frames, block.out_channels)
    for row, count in enumerate(valid_rows(lengths, batch, out_frames)):
        for index, ((start, taps), weight) in enumerate(zip(chunks, weights)):
            window = windows(x, start, taps, kernel, stride)[row, :count]  # (copied when strided)
            product = onednn.packed_linear(window, weight, bias if index == 0 else None)
            if index == 0:
                out[row, :count] = product
            else:
                out[row, :count] += product
        if count < out_frames:
            out[row, count:].zero_()
    return out


def block_forward(block: nn.Module, x: torch.Tensor, lengths: Optional[List[int]],
                  channel_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """One CNN layer on time-major x [B, T_in, C_in] -> [B, T_out, C_out]; ``lengths``: valid output frames
    per utterance (None: all)."""
    k, s = block.kernel, block.stride
    dtype = compute_dtype(x)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or block.conv.weight.requires_grad)
    if not needs_grad:
        if x.numel() > 0 and packs_for_onednn(block, dtype):
            return normalize_activate(block, packed_products(block, x, lengths), lengths, channel_mask, True)
        weight, bias = product_weights(block, x, lengths)
        with torch.autocast(x.device.type, enabled=False):
            y = window_products(x.to(dtype).contiguous(), weight.to(dtype), None if bias is None else bias.to(dtype),
                                k, s, lengths)
        return normalize_activate(block, y, lengths, channel_mask, True)
    per_row = folds_group_norm(block)
    if not (x.requires_grad and copies_windows(k, s, x.shape[-1], block.out_channels)):
        # the shared weight goes in its parameter layout, so its gradient needs no re-layout
        weight, bias = product_weights(block, x, lengths) if per_row else (block.conv.weight, block.conv.bias)
        with torch.autocast(x.device.type, enabled=False):
            y = WindowConv.apply(x.to(dtype).contiguous(), weight, bias, k, s, per_row, lengths)
        return normalize_activate(block, y, lengths, channel_mask)
    # an input gradient through copied windows (a waveform that requires grad): conv1d, channels-first view
    weight, bias = product_weights(block, x, lengths)
    if weight.dim() == 3:
        y = per_row_conv1d(x.transpose(1, 2), weight, bias, k, s).transpose(1, 2)
    else:
        y = F.conv1d(x.transpose(1, 2), block.conv.weight, block.conv.bias, stride=s).transpose(1, 2)
    return normalize_activate(block, y, lengths, channel_mask)


def _applies(req: Request) -> bool:
    return req.device.type == "cpu" and (req.dtype != torch.float32 or onednn.available(torch.float32))


def cpu_conv_features(extractor: nn.Module, wavs: torch.Tensor, host_lengths: Optional[List[int]],
                      masks: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """The CNN's features [B, N, C] of wavs [B, T] (see the module docstring)."""
    samples = None if host_lengths is None or all(n == wavs.shape[1] for n in host_lengths) else list(host_lengths)
    x = wavs.unsqueeze(-1)
    for block, mask in zip(extractor.blocks, masks):
        samples = None if samples is None else [max(conv_output_length(n, block.kernel, block.stride), 1)
                                                for n in samples]
        x = block_forward(block, x, samples, mask)
    return x


CPU_CONV_FEATURES = register(Kernel("conv_features/cpu-windows", "cpu", _applies, cpu_conv_features))
