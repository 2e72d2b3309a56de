"""oneDNN's matrix products on CPUs: packed weights for frozen layers, plain operands for trained ones.

MKL's float32 GEMM behind ``F.linear`` and ``torch.mm`` does not use AVX-512 on AMD processors; oneDNN's
matmul does: a HuBERT Base FFN product (199 x 768 x 3072) took 5.6-5.9 ms through MKL and 2.3-2.6 ms on
a packed weight, 2.5-2.9 ms on a plain one (AMD EPYC with AVX-512). In bf16 both libraries are close
(``aten::mm`` already runs on oneDNN). Nothing here keeps state: whether the ops exist is probed once.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Tuple

import torch

# Smallest product (M x K x N multiply-adds) worth oneDNN's plain matmul in training: each new shape
# costs it ~0.4 ms to create its kernel (training shapes change with every batch and utterance), which
# MKL's slower GEMM does not pay; at 2^26 the two break even even uncached, and the recipes' products
# are 10-25x larger.
MIN_MACS = 1 << 26


@functools.lru_cache(maxsize=None)
def _probe(dtype: torch.dtype) -> bool:
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:  # a build whose oneDNN lacks the op for this dtype raises here, once
        x = torch.ones(2, 4, dtype=dtype)
        weight = torch.ones(3, 4, dtype=dtype)
        packed = torch.ops.mkldnn._linear_pointwise(x, pack(weight, 2), None, "none", [], "")
        plain = torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
        return bool((packed.float() == 4).all()) and bool((plain.float() == 4).all())
    except RuntimeError:
        return False


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's packed and plain matmul run in ``dtype`` on this CPU with this torch build
    (float32 wherever torch has oneDNN; bf16 only where the CPU computes it natively)."""
    return dtype in (torch.float32, torch.bfloat16) and _probe(dtype)


def pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """A linear weight [out, in] packed for oneDNN's matmul on inputs of about ``rows`` rows (opaque)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor], gelu: bool = False
                  ) -> torch.Tensor:
    """``F.linear`` (then erf GELU) with a :func:`pack` weight; x [..., in] in the packed weight's dtype.
    No autograd."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "gelu" if gelu else "none", [],
                                              "none" if gelu else "")


def matmul_plain(a: torch.Tensor, b: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``a @ b`` (+ ``bias``) for 2-D float32 CPU operands of any strides, by oneDNN's matmul on the plain
    (not packed) operands. The caller checks :func:`available`."""
    if not (b.is_contiguous() or b.t().is_contiguous()):
        # oneDNN takes a weight with gaps between its rows (a window view, a column slice) only through
        # its reference kernel: 6.8 s instead of 3 ms for a 512 x 1999 x 512 product
        b = b.contiguous()
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), bias, "none", [], "")


def worth_it(a: torch.Tensor, macs: int) -> bool:
    """Whether a float32 product of ``macs`` multiply-adds with operand ``a`` goes to oneDNN's plain matmul."""
    return a.dtype == torch.float32 and a.device.type == "cpu" and macs >= MIN_MACS and available(torch.float32)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.mm(a, b)``; large float32 products through :func:`matmul_plain`."""
    return matmul_plain(a, b) if worth_it(a, a.shape[0] * a.shape[1] * b.shape[1]) else torch.mm(a, b)


def matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool = False) -> None:
    """``out = a @ b`` (``out += a @ b`` when ``accumulate``), ``out`` any 2-D view; large float32 products
    through :func:`matmul_plain`, whose result is then copied or added (oneDNN writes a new tensor; the
    extra pass over the output costs far less than MKL's slower float32 product)."""
    if worth_it(a, a.shape[0] * a.shape[1] * b.shape[1]):
        product = matmul_plain(a, b)
        out.add_(product) if accumulate else out.copy_(product)
    elif accumulate:
        out.addmm_(a, b)
    else:
        torch.mm(a, b, out=out)


class DenseLinear(torch.autograd.Function):
    """``F.linear`` in float32 with forward and backward through :func:`matmul_plain`:
    y = x W^T + b, dx = dy W, dW = dy^T x, db = sum(dy). For trainable layers, whose weights change
    every update (packing them would be paid on every call)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """x: [..., in] float32; weight: [out, in] (any layout a transpose makes contiguous); bias: [out] or
        None. Returns [..., out]."""
        rows = x.reshape(-1, x.shape[-1])
        if not rows.is_contiguous():
            rows = rows.contiguous()
        ctx.save_for_backward(rows, weight)
        ctx.has_bias, ctx.leading = bias is not None, x.shape[:-1]
        return matmul_plain(rows, weight.t(), bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        if not grad_rows.is_contiguous():
            grad_rows = grad_rows.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = matmul_plain(grad_rows, weight).view(*ctx.leading, weight.shape[1])
        if ctx.needs_input_grad[1]:
            grad_weight = matmul_plain(grad_rows.t(), rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias
