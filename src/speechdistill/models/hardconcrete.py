"""Hard-concrete gates (Louizos et al. 2018) as DPHuBERT uses them (spec 03 §3).

A gate group holds ``log_alpha`` for n units (conv channels, attention heads or FFN units).
Training draws a stretched, clipped concrete sample per forward pass (one mask shared by the
whole batch); eval uses a deterministic mask that zeroes the ``round(n - E[L0])`` units with
the smallest scores and keeps the *soft* values of the others (pruning folds them into the
next layer's weights, so the pruned model computes the masked model's output).
"""
from __future__ import annotations

import math

import torch
from torch import nn

TEMPERATURE = 2.0 / 3.0
STRETCH_LOW = -0.1
STRETCH_HIGH = 1.1
EPS = 1e-6
# DPHuBERT's "empirically validated" factor that sharpens the deterministic scores.
DETERMINISTIC_SHARPNESS = 0.8


class HardConcreteGate(nn.Module):
    """n gates with learnable ``log_alpha`` [n].

    Args:
        num_units: n.
        init_drop_prob: initial probability p of a unit being off; log_alpha starts around
            log(1 - p) - log(p) (DPHuBERT: 0.01 for channels/heads, 0.5 for FFN units).
    """

    def __init__(self, num_units: int, init_drop_prob: float = 0.01, init_std: float = 0.01) -> None:
        super().__init__()
        if num_units < 1:
            raise ValueError(f"a gate group needs at least one unit, got {num_units}")
        self.num_units = num_units
        self.log_alpha = nn.Parameter(torch.empty(num_units))
        self.init_mean = math.log(1.0 - init_drop_prob) - math.log(init_drop_prob)
        self.init_std = init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.log_alpha.normal_(self.init_mean, self.init_std)

    def expected_l0(self) -> torch.Tensor:
        """Expected number of non-zero gates, differentiable in log_alpha (scalar)."""
        shift = TEMPERATURE * math.log(-STRETCH_LOW / STRETCH_HIGH)
        return torch.sigmoid(self.log_alpha - shift).sum()

    def sample(self) -> torch.Tensor:
        """Stochastic mask [n] in [0, 1] with exact zeros and ones."""
        u = torch.empty_like(self.log_alpha).uniform_(EPS, 1.0 - EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / TEMPERATURE)
        return (s * (STRETCH_HIGH - STRETCH_LOW) + STRETCH_LOW).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        """Eval mask [n]: the round(n - E[L0]) lowest scores are 0, the others keep soft values."""
        with torch.no_grad():
            num_zeros = int(round(self.num_units - float(self.expected_l0())))
        soft = torch.sigmoid(self.log_alpha / TEMPERATURE * DETERMINISTIC_SHARPNESS)
        if num_zeros > 0:
            _, lowest = torch.topk(soft.detach(), k=num_zeros, largest=False)
            keep = torch.ones_like(soft)
            keep[lowest] = 0.0
            soft = soft * keep
        return soft

    def forward(self) -> torch.Tensor:
        """Mask [n]: sampled in train mode, deterministic in eval mode."""
        return self.sample() if self.training else self.deterministic()

    def extra_repr(self) -> str:
        return f"num_units={self.num_units}"
