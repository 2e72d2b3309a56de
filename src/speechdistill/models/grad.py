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


def layer_grad_split(hidden: torch.Tensor, layer: int, num_layers: int, mode: str = "released"
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """ARMHuBERT's layer gradient scaling for the output of layer ``layer`` (0-based) of ``num_layers``.

    With m = (L - i) / (L - i + 1), the tensor that continues into layer i+1 carries gradient scale m.
    The tensor handed to the distillation loss carries m * (1 - m) in ``released`` mode: the released
    ``extract_features`` reassigns the main path first (x = GradMultiply(x, m)) and then takes the
    target from that scaled x (GradMultiply(x, 1 - m)); 0.25 instead of 0.5 at the last layer. In
    ``independent`` mode it carries 1 - m, taken from the unscaled output.

    Returns:
        (main_path, target_path), each the same values as ``hidden`` [B, N, D].
    """
    keep = (num_layers - layer) / (num_layers - layer + 1)
    main = grad_multiply(hidden, keep)
    if mode == "released":
        return main, grad_multiply(main, 1.0 - keep)
    if mode == "independent":
        return main, grad_multiply(hidden, 1.0 - keep)
    raise ValueError(f"layer_grad_split: mode must be 'released' or 'independent', got {mode!r}")
