"""SUPERB downstream heads over featurized upstream states: utterance classifiers and a linear CTC head.

Both start with SUPERB's projector, a Linear from the upstream size D to ``projector_dim`` (256):

* :class:`UtteranceClassifier` (KS, IC, SID; s3prl ``UtteranceLevel`` with ``MeanPooling``):
  features ``[B, N, D]`` -> projector -> mean over each utterance's valid frames ``[B, P]`` ->
  Linear to the concatenated logits of one or more *slots* ``[B, sum(slot sizes)]``. Intent
  classification has three slots (action, object, location), the other tasks one.
* :class:`LinearCtc` (PR; s3prl ``ctc`` downstream with ``FrameLevel``): features -> projector ->
  Linear to the token inventory -> log-softmax ``[B, N, V]``; token 0 is the CTC blank.
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class ProbeHeadConfig:
    """``projector_dim``: width of the projector (SUPERB: 256 for every task); ``pooling``: how an
    utterance classifier summarises frames (SUPERB: ``mean``)."""

    projector_dim: int = 256
    pooling: str = "mean"


def _check_features(features: torch.Tensor, input_size: int) -> None:
    if features.dim() != 3 or features.shape[-1] != input_size:
        raise ValueError(f"expected features [batch, frame, {input_size}], found shape {tuple(features.shape)}")


def masked_mean(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the first ``lengths`` ``[B]`` frames of ``features`` ``[B, N, P]`` -> ``[B, P]``."""
    frames = features.shape[1]
    valid = (torch.arange(frames, device=features.device)[None, :] < lengths.to(features.device)[:, None])
    counts = valid.sum(dim=1, keepdim=True).clamp(min=1).to(features.dtype)
    return (features * valid[:, :, None].to(features.dtype)).sum(dim=1) / counts


class UtteranceClassifier(nn.Module):
    """Projector, mean pooling and one Linear to the logits of every slot (see the module docstring)."""

    def __init__(self, input_size: int, slot_sizes: Sequence[int], config: ProbeHeadConfig = None) -> None:
        super().__init__()
        self.config = config or ProbeHeadConfig()
        if self.config.pooling != "mean":
            raise ValueError(f"head pooling '{self.config.pooling}' is unknown; SUPERB's classifiers use 'mean'")
        if not slot_sizes or min(slot_sizes) < 1:
            raise ValueError(f"every slot needs at least one class, found slot sizes {list(slot_sizes)}")
        self.input_size = input_size
        self.slot_sizes: List[int] = [int(s) for s in slot_sizes]
        self.projector = nn.Linear(input_size, self.config.projector_dim)
        self.output = nn.Linear(self.config.projector_dim, sum(self.slot_sizes))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features ``[B, N, D]``, lengths ``[B]`` frames -> logits ``[B, sum(slot sizes)]``."""
        _check_features(features, self.input_size)
        return self.output(masked_mean(self.projector(features), lengths))

    def split(self, logits: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The logits ``[B, C_s]`` of each slot."""
        return torch.split(logits, self.slot_sizes, dim=-1)


class LinearCtc(nn.Module):
    """Projector and a Linear to ``vocab_size`` CTC tokens (0 = blank), log-softmax."""

    blank_id = 0

    def __init__(self, input_size: int, vocab_size: int, config: ProbeHeadConfig = None) -> None:
        super().__init__()
        self.config = config or ProbeHeadConfig()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must count the blank and at least one token, got {vocab_size}")
        self.input_size = input_size
        self.vocab_size = vocab_size
        self.projector = nn.Linear(input_size, self.config.projector_dim)
        self.output = nn.Linear(self.config.projector_dim, vocab_size)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """features ``[B, N, D]``, lengths ``[B]`` -> log-probabilities ``[B, N, V]`` and lengths ``[B]``."""
        _check_features(features, self.input_size)
        logits = self.output(self.projector(features))
        return F.log_softmax(logits.float(), dim=-1), lengths.clamp(min=1, max=features.shape[1])
