"""DPHuBERT's Lagrangian sparsity regulariser (specs/methods/03 §4).

The pruned student's expected size comes from the hard-concrete gates' L0 expectations (the
model computes it); its expected sparsity is ``ŝ = 1 − expected_params / teacher_params``.
With the target ramped linearly, ``t(step) = target · min(1, step / warmup_steps)``, the
regulariser is

    L_reg = λ1 · (ŝ − t) + λ2 · (ŝ − t)²

with λ1, λ2 scalar parameters initialised to 0. The student minimises the total loss; the
multipliers must *maximise* it (a min–max game that drives ŝ to t). DPHuBERT does this by
putting [λ1, λ2] in an AdamW group with a negative learning rate (−0.02, following the same
LR schedule as the other groups); the trainer owns that choice — this module only provides
the term and the parameters (:meth:`LagrangianSparsity.multipliers`).

``step`` is the number of optimiser updates already taken (Lightning's ``global_step``): the
first update sees t = 0.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..config import ConfigError
from .frames import LossInputError


def target_sparsity(step: int, final_target: float, warmup_steps: int) -> float:
    """``final_target · min(1, step / warmup_steps)``; ``warmup_steps == 0`` means no ramp."""
    if step < 0:
        raise LossInputError(f"target_sparsity: step must be >= 0, found {step}")
    if warmup_steps <= 0:
        return float(final_target)
    return float(final_target) * min(1.0, step / warmup_steps)


def lagrangian_sparsity_loss(expected_sparsity: torch.Tensor, target: float, lambda1: torch.Tensor,
                             lambda2: torch.Tensor) -> torch.Tensor:
    """``λ1 (ŝ − t) + λ2 (ŝ − t)²`` for a scalar expected sparsity ``ŝ`` (differentiable in ŝ and λ)."""
    if expected_sparsity.dim() != 0:
        raise LossInputError(f"lagrangian_sparsity_loss: expected sparsity must be a scalar tensor, "
                             f"found shape {tuple(expected_sparsity.shape)}")
    gap = expected_sparsity.float() - float(target)
    return lambda1 * gap + lambda2 * gap * gap


class LagrangianSparsity(nn.Module):
    """Holds λ1, λ2 and evaluates the regulariser at a training step.

    Args:
        target: final sparsity in [0, 1) (DPHuBERT: 0.75).
        warmup_steps: steps over which the target ramps up linearly from 0 (DPHuBERT: 5000).
    """

    def __init__(self, target: float = 0.75, warmup_steps: int = 5000):
        super().__init__()
        if not (0.0 <= target < 1.0) or not math.isfinite(target):
            raise ConfigError(f"sparsity target {target!r} must be in [0, 1)")
        if warmup_steps < 0:
            raise ConfigError(f"sparsity warmup_steps {warmup_steps!r} must be >= 0")
        self.target = float(target)
        self.warmup_steps = int(warmup_steps)
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))

    def multipliers(self) -> List[nn.Parameter]:
        """[λ1, λ2]: the parameters to be updated by gradient *ascent*."""
        return [self.lambda1, self.lambda2]

    def forward(self, expected_sparsity: torch.Tensor, step: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Regulariser at ``step`` (updates taken so far).

        Args:
            expected_sparsity: scalar tensor ŝ from the model (differentiable in the gate logits).
        Returns:
            ``(loss, values)``; values (detached) ``reg``, ``sparsity_expected``, ``sparsity_target``,
            ``lambda1``, ``lambda2`` for the logs.
        """
        current_target = target_sparsity(step, self.target, self.warmup_steps)
        loss = lagrangian_sparsity_loss(expected_sparsity, current_target, self.lambda1, self.lambda2)
        values = {
            "reg": loss.detach(),
            "sparsity_expected": expected_sparsity.detach().float(),
            "sparsity_target": torch.tensor(current_target),
            "lambda1": self.lambda1.detach().clone(),
            "lambda2": self.lambda2.detach().clone(),
        }
        return loss, values
