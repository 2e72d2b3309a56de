"""Gradient scaling that leaves the forward value untouched.

``GradMultiply`` is what fairseq calls ``feature_grad_mult`` (CNN gradients scaled by 0.1 in
HuBERT/DistilHuBERT) and what ARMHuBERT uses to split the gradient of each layer output
between the main path and the distillation target (``layer_grad_split``).
"""
from __future__ import annotations

from typing import Tuple

import torch


class _GradMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def grad_multiply(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``scale`` in backward."""
    if scale == 1.0 or not tensor.requires_grad:
        return tensor
    return _GradMultiply.apply(tensor, scale)


def layer_grad_split(hidden: torch.Tensor, layer: int, num_layers: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """ARMHuBERT's layer gradient scaling for the output of layer ``layer`` (0-based).

    With m = (L - i) / (L - i + 1), the tensor that continues into layer i+1 carries gradient
    scale m and the tensor handed to the distillation loss carries 1 - m; both equal ``hidden``.

    Returns:
        (main_path, target_path), each the same values as ``hidden`` [B, N, D].
    """
    keep = (num_layers - layer) / (num_layers - layer + 1)
    return grad_multiply(hidden, keep), grad_multiply(hidden, 1.0 - keep)
