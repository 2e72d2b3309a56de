"""The ``positional_conv`` op on CPUs: the weight-normalised grouped convolution of
:class:`speechdistill.models.components.PositionalConv` (k taps, "same" length, GELU).

* Frozen inference: through FFTs. Per frequency a group is a small matrix product, about 30x fewer
  multiplications than the direct form (k = 128, 16 groups); spectra of the kernel are kept for the
  last :data:`SPECTRUM_SIZES` FFT sizes (batches of different lengths alternate, and a spectrum costs
  more than the convolution it serves).
* Otherwise (training, or weights that may change): the kernel from the fused weight norm
  (:class:`TapWeightNorm`), then in bf16/fp16 window products per group (:class:`GroupedConvByWindows`,
  2x faster than oneDNN's grouped conv there) and in float32 oneDNN's conv with the input gradient as a
  forward conv (:class:`GroupedConvInputGradByConv`).

Call: ``run(module, x [B, N, D]) -> [B, N, D]`` in the compute dtype.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.ops import fast_fft_size
from .cache import kept
from .conv import sum_over_frames
from .registry import Kernel, Request, compute_dtype, register

# FFT sizes whose kernel spectrum a frozen model keeps (HuBERT Base: 0.3 MB per FFT bin, ~130 MB for 15 s).
SPECTRUM_SIZES = 4


def _kernel_spectrum(module: nn.Module, size: int) -> torch.Tensor:
    """rfft of the reversed kernel zero-padded to ``size``: [F, groups, C_in, C_out] complex.

    Output t = sum_j w[j] x[t + j - pad] is sample t + k - 1 - pad of the linear convolution of x with
    h[i] = w[k - 1 - i]; ``size`` >= frames + k - 1 keeps that range free of wrap-around."""
    (spectra,) = kept(module, "spectra", (module.weight_v, module.weight_g), lambda parts: (OrderedDict(),))
    if size in spectra:
        spectra.move_to_end(size)
        return spectra[size]
    weight = module.weight().float()  # [D_out, C_in, k]
    d_out, c_in, _ = weight.shape
    groups = module.groups
    spectrum = torch.fft.rfft(weight.flip(-1), n=size, dim=-1)  # [D_out, C_in, F]
    spectrum = spectrum.view(groups, d_out // groups, c_in, -1).permute(3, 0, 2, 1).contiguous()
    while len(spectra) >= SPECTRUM_SIZES:
        spectra.popitem(last=False)
    spectra[size] = spectrum
    return spectrum


def _fft_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    batch, frames, channels = x.shape
    kernel, groups = module.kernel, module.groups
    size = fast_fft_size(frames + kernel)
    spectrum = _kernel_spectrum(module, size)  # [F, G, C_in, C_out]
    with torch.autocast(x.device.type, enabled=False):
        signal = torch.fft.rfft(x.float(), n=size, dim=1)  # [B, F, D]
        signal = signal.view(batch, -1, groups, channels // groups).permute(1, 2, 0, 3)
        mixed = torch.matmul(signal, spectrum)  # [F, G, B, C_out]
        mixed = mixed.permute(2, 0, 1, 3).reshape(batch, -1, channels)
        offset = kernel - 1 - kernel // 2
        y = torch.fft.irfft(mixed, n=size, dim=1)[:, offset:offset + frames] + module.bias.float()
        return F.gelu(y).to(compute_dtype(x))


class TapWeightNorm(torch.autograd.Function):
    """``v * (g / ||v||)`` with the norm over all dims but the last (the kernel tap), written once in
    the compute dtype, with a hand-written backward.

    Autograd's version of the same expression (norm, divide, broadcast multiply, then autocast's cast)
    allocates about seven temporaries of the kernel's size per update in forward and backward; for
    DistilHuBERT's positional conv (4.7 M weights, 19 MB in float32) that cost more than the convolution
    itself on a CPU, where each fresh large buffer is paid again in page faults. Here the only full-size
    buffers are the output and the gradient of v; the reductions and products run over row blocks of
    about 1 MiB, whose temporaries stay in cache (forward + backward of that kernel: 8 vs 22-30 ms).
    With s = g / n per tap and d = sum(grad * v): grad_g = d / n and grad_v = s * grad - (s * d / n^2) * v.
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
        # (a sum of squares is 5x faster than linalg.vector_norm over dim 0 for [36864, 128], and a [1, k]
        # operand broadcasts 5x faster than a [k] one)
        norm = torch.zeros(1, taps, dtype=v.dtype, device=v.device)
        for (block,) in TapWeightNorm._blocks(rows):
            norm.add_((block * block).sum(0, keepdim=True))
        norm.sqrt_()  # [1, k]
        scale = g.reshape(1, taps) / norm
        weight = torch.empty(rows.shape, dtype=dtype, device=v.device)
        for block, out in TapWeightNorm._blocks(rows, weight):
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
        for grad_block, block in TapWeightNorm._blocks(grad_rows, rows):
            dot.add_((grad_block.to(v.dtype) * block).sum(0, keepdim=True))
        grad_g = (dot / norm).reshape(ctx.g_shape) if ctx.needs_input_grad[1] else None
        grad_v = None
        if ctx.needs_input_grad[0]:
            grad_v = torch.empty_like(rows)
            shrink = scale * dot / (norm * norm)
            for grad_block, block, out in TapWeightNorm._blocks(grad_rows, rows, grad_v):
                torch.mul(grad_block, scale, out=out).addcmul_(block, shrink, value=-1.0)
            grad_v = grad_v.view(v.shape)
        return grad_v, grad_g, None


class GroupedConvInputGradByConv(torch.autograd.Function):
    """``conv1d(x, weight, bias, padding, groups)`` (stride 1) whose input gradient is computed as a forward
    convolution of the output gradient with the taps reversed and in/out channels swapped per group.

    For the positional conv (k = 128, 16 groups, a few hundred frames) oneDNN's backward-data pass is
    2.3x slower than its forward pass of the same size (12.6 vs 5.4 ms for HuBERT Base's shape, 2 x 65
    frames, bf16); the weight gradient still comes from oneDNN's backward-weights pass.
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
    """(first frame, window matrix) blocks of one group's padded input [B, C, T + k - 1]: row (b, t) of a
    block's [B * t_block, C * k] matrix holds padded[b, :, t:t + k] in (channel, tap) order, the order of a
    conv weight row, copied into ``buffer`` (a few MB, so the copy stays in cache)."""
    batch, channels, length = padded.shape
    step = max(1, buffer.shape[0] // batch)
    for start in range(0, frames, step):
        count = min(step, frames - start)
        windows = padded.as_strided((batch, count, channels, kernel), (channels * length, 1, length, 1),
                                    padded.storage_offset() + start)
        block = buffer[:batch * count]
        block.view(batch, count, channels, kernel).copy_(windows)
        yield start, block


class GroupedConvByWindows(torch.autograd.Function):
    """The positional conv (stride 1, k taps, "same" output length) in bf16/fp16 as matrix products over
    copied windows, one group and a block of frames at a time, with a hand-written backward.

    oneDNN's grouped conv with DistilHuBERT's shape (768 channels, 16 groups, k = 128, 2 x 130 frames,
    bf16) runs at ~250 GFLOP/s forward and slower still for the weight gradient (10 and 17-20 ms); a window
    matrix of one group ([frames, C_in * k], a few MB, copied in cache) times the group's [C_out, C_in * k]
    weight takes 4.5 ms for the forward and 8.4 for the weight gradient. The weight is used in its
    parameter layout (rows in (channel, tap) order, the windows' order); the input gradient is the same
    product over windows of the padded output gradient, reversed in time, with in/out channels swapped.
    Weight-gradient products are summed over blocks in float32.
    """

    BLOCK_ELEMENTS = 1 << 21  # 4 MB of bf16 windows per block

    @staticmethod
    def _buffer(like: torch.Tensor, batch: int, width: int) -> torch.Tensor:
        """Scratch for one block of window rows (at least one frame of every utterance)."""
        return like.new_empty(max(batch, GroupedConvByWindows.BLOCK_ELEMENTS // width), width)

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
        buffer = GroupedConvByWindows._buffer(x, batch, in_group * kernel)
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
            buffer = GroupedConvByWindows._buffer(x, batch, in_group * kernel)
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
            # v = T - 1 - u holds exactly those frames in tap order, so the weight needs no tap flip (a slow
            # copy), only its (out, tap) rows; the result comes out reversed in time.
            padded = _group_major_padded(grad, groups, kernel - 1 - left, left).flip(-1)
            rows_weight = weight.view(groups, out_group, in_group, kernel).transpose(2, 3).reshape(
                groups, out_group * kernel, in_group)
            out = x.new_empty(groups, batch, frames, in_group)
            buffer = GroupedConvByWindows._buffer(x, batch, out_group * kernel)
            for group in range(groups):
                for start, block in _window_blocks(padded[group], frames, kernel, buffer):
                    count = block.shape[0] // batch
                    out[group, :, start:start + count] = torch.mm(block, rows_weight[group]).view(batch, count,
                                                                                                  in_group)
            grad_x = out.flip(2).permute(1, 2, 0, 3).reshape(batch, frames, channels)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = sum_over_frames(grad, torch.promote_types(grad.dtype, torch.float32)).sum(0).to(grad.dtype)
        return grad_x, grad_weight, grad_bias, None


def _applies(req: Request) -> bool:
    return req.device.type == "cpu"


def cpu_positional_conv(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The positional embedding [B, N, D] of x [B, N, D] (see the module docstring for the paths)."""
    parts = (module.weight_v, module.weight_g, module.bias)
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in parts))
    if not grad and not any(p.requires_grad for p in parts):
        return _fft_forward(module, x)
    dtype = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        weight = TapWeightNorm.apply(module.weight_v, module.weight_g, dtype)
        if dtype != torch.float32:
            return F.gelu(GroupedConvByWindows.apply(x.to(dtype).contiguous(), weight, module.bias.to(dtype),
                                                     module.groups))
        y = GroupedConvInputGradByConv.apply(x.transpose(1, 2).to(dtype), weight, module.bias.to(dtype),
                                             module.kernel // 2, module.groups)
    if module.kernel % 2 == 0:
        y = y[:, :, :-1]
    return F.gelu(y).transpose(1, 2)


CPU_POSITIONAL_CONV = register(Kernel("positional_conv/cpu", "cpu", _applies, cpu_positional_conv))
