"""Speaker classification heads for training embedding extractors.

AAM-softmax (additive angular margin, "ArcFace"): with θ_j the angle between the embedding
and class j's weight vector, the logits are s·cos θ_j for every class except the target y,
whose logit is s·cos(θ_y + m); cross-entropy follows. Defaults m = 0.2, s = 30
(specs/methods/06_os_kdft.md §2). Past θ_y + m = π, cos(θ_y + m) would start rising again, so
the target logit continues as s·(cos θ_y − m·sin m), a decreasing extension; with
``easy_margin`` the margin is applied only while cos θ_y > 0.

The plain softmax head (the 2024 OS-KDFT scripts) is a Linear layer and cross-entropy.
Both return the loss, the logits and the batch accuracy, and take optional per-class loss
weights ``[C]`` (the paper-era OS-KDFT code trains with a class-weighted cross-entropy).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class SpeakerLossOutput:
    """loss: scalar; logits: ``[B, C]`` (margin included for AAM); accuracy: fraction of the
    batch whose highest plain logit (no margin) is the label."""

    loss: torch.Tensor
    logits: torch.Tensor
    accuracy: torch.Tensor


def _check(embeddings: torch.Tensor, labels: torch.Tensor, embedding_size: int, num_classes: int) -> None:
    if embeddings.dim() != 2 or embeddings.shape[1] != embedding_size:
        raise ValueError(f"expected embeddings [batch, {embedding_size}], found shape {tuple(embeddings.shape)}")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"expected labels [{embeddings.shape[0]}], found shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"speaker labels must lie in 0..{num_classes - 1}, found {int(labels.min())}.."
                         f"{int(labels.max())}; the head was built for fewer speakers than the data has")


class AamSoftmax(nn.Module):
    def __init__(self, embedding_size: int, num_classes: int, margin: float = 0.2, scale: float = 30.0,
                 easy_margin: bool = False, class_weights: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"AAM margin must lie in [0, pi/2) radians, got {margin}")
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.margin, self.scale, self.easy_margin = margin, scale, easy_margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.xavier_normal_(self.weight, gain=1.0)
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float())
        self.cos_margin, self.sin_margin = math.cos(margin), math.sin(margin)
        self.threshold = math.cos(math.pi - margin)  # cos θ below this means θ + m > π
        self.fallback_offset = math.sin(math.pi - margin) * margin  # = m·sin m

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos θ ``[B, C]`` between embeddings ``[B, E]`` and every class weight."""
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1)).clamp(-1, 1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> SpeakerLossOutput:
        """embeddings: ``[B, E]``; labels: ``[B]`` class ids."""
        _check(embeddings, labels, self.embedding_size, self.num_classes)
        cosine = self.cosines(embeddings)
        target_cos = cosine.gather(1, labels[:, None])
        # Clamped away from zero so the gradient of the square root stays finite at |cos| = 1.
        target_sin = (1.0 - target_cos.square()).clamp(min=1e-12).sqrt()
        shifted = target_cos * self.cos_margin - target_sin * self.sin_margin  # cos(θ + m)
        if self.easy_margin:
            shifted = torch.where(target_cos > 0, shifted, target_cos)
        else:
            shifted = torch.where(target_cos > self.threshold, shifted, target_cos - self.fallback_offset)
        logits = self.scale * cosine.scatter(1, labels[:, None], shifted)
        loss = F.cross_entropy(logits, labels, weight=self.class_weights)
        accuracy = (cosine.argmax(dim=1) == labels).float().mean()
        return SpeakerLossOutput(loss=loss, logits=logits, accuracy=accuracy)


class SoftmaxSpeakerHead(nn.Module):
    """Linear(E → C) and cross-entropy."""

    def __init__(self, embedding_size: int, num_classes: int, class_weights: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.classifier = nn.Linear(embedding_size, num_classes)
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float())

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> SpeakerLossOutput:
        """embeddings: ``[B, E]``; labels: ``[B]`` class ids."""
        _check(embeddings, labels, self.embedding_size, self.num_classes)
        logits = self.classifier(embeddings.float())
        loss = F.cross_entropy(logits, labels, weight=self.class_weights)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return SpeakerLossOutput(loss=loss, logits=logits, accuracy=accuracy)

