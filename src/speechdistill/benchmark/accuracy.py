"""How far a reduced-precision teacher forward may drift from the fp32 one.

The teacher's hidden states are the distillation targets, so a bf16 teacher is acceptable when
every hidden state stays close to its fp32 value. "Close" is measured per hidden state i over
the valid frames as the relative error ``||h_i^bf16 - h_i^fp32||_F / ||h_i^fp32||_F`` and the
smallest per-frame cosine similarity. The README states the tolerances below, the benchmark
reports the measured values in every run, and ``tests/test_bf16_tolerance.py`` checks them on
a HuBERT Base-shaped teacher.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

# bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2 %); a 12-layer post-LN teacher
# accumulates it to about 1 %. These bounds leave room for other inputs and weights.
BF16_MAX_RELATIVE_ERROR = 0.03
BF16_MIN_FRAME_COSINE = 0.999


@dataclass
class DriftReport:
    """Per hidden state: relative Frobenius error and minimum per-frame cosine."""

    relative_errors: List[float] = field(default_factory=list)
    min_cosines: List[float] = field(default_factory=list)

    @property
    def max_relative_error(self) -> float:
        return max(self.relative_errors)

    @property
    def min_cosine(self) -> float:
        return min(self.min_cosines)

    def within(self, max_relative_error: float = BF16_MAX_RELATIVE_ERROR,
               min_cosine: float = BF16_MIN_FRAME_COSINE) -> bool:
        return self.max_relative_error <= max_relative_error and self.min_cosine >= min_cosine


def hidden_state_drift(reference: Sequence[Optional[torch.Tensor]], other: Sequence[Optional[torch.Tensor]],
                       frame_lengths: Optional[torch.Tensor] = None) -> DriftReport:
    """Compare two lists of hidden states ([B, N, D] each, None entries skipped) over valid frames.

    Args:
        reference: fp32 hidden states; other: the same states from the reduced-precision run.
        frame_lengths: [B] valid frames per utterance (None: all frames are valid).
    """
    if len(reference) != len(other):
        raise ValueError(f"cannot compare {len(reference)} hidden states with {len(other)}")
    report = DriftReport()
    for ref, test in zip(reference, other):
        if ref is None or test is None:
            continue
        ref = ref.float()
        test = test.float()
        if frame_lengths is not None:
            valid = torch.arange(ref.shape[1], device=ref.device)[None, :] < frame_lengths.to(ref.device)[:, None]
            ref, test = ref[valid], test[valid]
        else:
            ref, test = ref.reshape(-1, ref.shape[-1]), test.reshape(-1, test.shape[-1])
        error = torch.linalg.vector_norm(test - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-12)
        report.relative_errors.append(float(error))
        report.min_cosines.append(float(F.cosine_similarity(test, ref, dim=-1, eps=1e-12).min()))
    if not report.relative_errors:
        raise ValueError("no hidden state to compare")
    return report
