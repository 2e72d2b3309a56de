"""Kernels of the ``linear`` op: ``F.linear(x, *combine(parts))``, then an erf GELU when asked.

``parts`` are the parameters (e.g. the Q, K and V weights and biases) and ``combine`` makes the
``(weight [out, in], bias [out] or None)`` of one product from them (e.g. by concatenation), so that a
kernel can keep the combined, cast or packed weight of frozen parameters (:mod:`.cache`). Tried in
this order:

* ``linear/onednn-packed`` (backend ``onednn``): frozen, no autograd, CPU, float32 or bf16 where the CPU
  computes it: the weight kept packed for oneDNN's matmul, GELU fused into the product. The packed copy
  costs the weights' size again in memory (HuBERT Base's projections: 340 MB in float32).
* ``linear/onednn-dense`` (backend ``onednn``): CPU float32 products of at least ``onednn.MIN_MACS``
  (training, or inference of weights that may change): forward and backward on oneDNN's plain matmul.
* ``linear/frozen-cast`` (backend ``frozen``, any device): frozen parameters: the combined weight kept
  in the autocast dtype (autocast re-casts weights that do not require grad on every call).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn
from .cache import kept
from .registry import Kernel, Request, compute_dtype, register

Combine = Callable[[Sequence[torch.Tensor]], Tuple[torch.Tensor, Optional[torch.Tensor]]]


def _activate(y: torch.Tensor, gelu: bool) -> torch.Tensor:
    if not gelu:
        return y
    # in place when nothing needs the pre-activation (inference): no second large buffer
    return torch.ops.aten.gelu_(y) if not (torch.is_grad_enabled() and y.requires_grad) else F.gelu(y)


def _cast_to_compute(values: Tuple[torch.Tensor, Optional[torch.Tensor]], dtype: torch.dtype
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The weight and bias in ``dtype`` where autocast would cast them (float32 ones), as autocast does."""
    return tuple(v.to(dtype) if v is not None and v.dtype == torch.float32 and dtype != torch.float32 else v
                 for v in values)  # type: ignore[return-value]


def _packed_applies(req: Request) -> bool:
    return req.device.type == "cpu" and req.frozen and not req.grad and req.size > 0 and onednn.available(req.dtype)


def _packed(x: torch.Tensor, owner: nn.Module, slot: str, parts: Sequence[torch.Tensor], combine: Combine,
            gelu: bool) -> torch.Tensor:
    dtype = compute_dtype(x)
    rows = x.numel() // x.shape[-1]

    def derive(values: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        weight, bias = combine(values)
        return onednn.pack(weight.to(dtype), rows), None if bias is None else bias.to(dtype)

    weight, bias = kept(owner, slot + "/onednn", parts, derive)
    return onednn.packed_linear(x.to(dtype), weight, bias, gelu)


def _dense_applies(req: Request) -> bool:
    return (req.device.type == "cpu" and req.dtype == torch.float32 and req.size >= onednn.MIN_MACS
            and onednn.available(torch.float32))


def _dense(x: torch.Tensor, owner: nn.Module, slot: str, parts: Sequence[torch.Tensor], combine: Combine,
           gelu: bool) -> torch.Tensor:
    weight, bias = kept(owner, slot, parts, combine)
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32):
        y = F.linear(x, weight, bias)
    else:
        y = onednn.DenseLinear.apply(x, weight, bias)
    return _activate(y, gelu)


def _frozen_applies(req: Request) -> bool:
    return req.frozen and req.size > 0


def _frozen_cast(x: torch.Tensor, owner: nn.Module, slot: str, parts: Sequence[torch.Tensor], combine: Combine,
                 gelu: bool) -> torch.Tensor:
    dtype = compute_dtype(x)
    weight, bias = kept(owner, slot, parts, lambda values: _cast_to_compute(combine(values), dtype))
    return _activate(F.linear(x, weight, bias), gelu)


PACKED = register(Kernel("linear/onednn-packed", "onednn", _packed_applies, _packed))
DENSE = register(Kernel("linear/onednn-dense", "onednn", _dense_applies, _dense))
FROZEN_CAST = register(Kernel("linear/frozen-cast", "frozen", _frozen_applies, _frozen_cast))
