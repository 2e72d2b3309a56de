"""The trainable module of HuBERT pretraining and its masked-prediction loss.

HuBERT scores every frame against every unit: the last transformer layer is projected to
``final_dim`` (``final_proj``), and the logit of unit ``c`` is the cosine similarity between that
projection and the learned embedding ``e_c`` of the unit, divided by a temperature (0.1)::

    logits[b, n, c] = cos(W h[b, n] + v, e_c) / logit_temp

The loss is the cross-entropy of these logits against the frame's k-means unit, summed over the
masked frames (weight ``masked_weight``) and the unmasked frames (weight ``unmasked_weight``,
0 in HuBERT), divided by the number of frames of the parts whose weight is non-zero; plus
``feature_penalty_weight`` times the mean square of the CNN output. (fairseq's ``compute_nce``
puts the target unit first and masks its duplicate among the negatives with -inf; that is the
same softmax as a cross-entropy over all units with the unit as class.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..models.encoder import Encoder

COSINE_EPS = 1e-8


def cosine_logits(projected: torch.Tensor, label_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity of every frame with every unit embedding, over the temperature.

    Args:
        projected: ``[..., F]`` projected frames; label_embeddings: ``[K, F]``.
    Returns:
        ``[..., K]`` float32 logits.
    """
    frames = F.normalize(projected.float(), dim=-1, eps=COSINE_EPS)
    units = F.normalize(label_embeddings.float(), dim=-1, eps=COSINE_EPS)
    return torch.matmul(frames, units.t()) / temperature


@dataclass
class PredictionLoss:
    """What :func:`masked_prediction_loss` returns (scalars are 0-d tensors).

    Attributes:
        loss: the weighted cross-entropy over the frames it counts (``count``), without the
            feature penalty.
        count: number of frames ``loss`` averages over (masked and/or unmasked, by weight).
        ce_masked / ce_unmasked: mean cross-entropy (nats) on masked / unmasked valid frames.
        acc_masked / acc_unmasked: fraction of those frames whose arg-max unit is the target.
        num_masked / num_unmasked: frame counts (float tensors).
    """

    loss: torch.Tensor
    count: torch.Tensor
    ce_masked: torch.Tensor
    ce_unmasked: torch.Tensor
    acc_masked: torch.Tensor
    acc_unmasked: torch.Tensor
    num_masked: torch.Tensor
    num_unmasked: torch.Tensor


def masked_prediction_loss(logits: torch.Tensor, targets: torch.Tensor, mask_indices: Optional[torch.Tensor],
                           valid: torch.Tensor, *, masked_weight: float = 1.0,
                           unmasked_weight: float = 0.0) -> PredictionLoss:
    """HuBERT's prediction loss.

    Args:
        logits: ``[B, N, K]`` (float32) unit logits per frame.
        targets: ``[B, N]`` int64 unit of every frame (any value on invalid frames).
        mask_indices: ``[B, N]`` bool, True on masked frames (None: nothing masked).
        valid: ``[B, N]`` bool, True on frames inside the utterance.
        masked_weight / unmasked_weight: weights of the two cross-entropy sums.
    Returns:
        :class:`PredictionLoss`; ``loss = (w_m Σ_masked CE + w_u Σ_unmasked CE) / count`` with
        ``count = [w_m > 0] N_masked + [w_u > 0] N_unmasked``.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2] or valid.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [B, N, K] with targets and valid [B, N]; got {list(logits.shape)}, "
                         f"{list(targets.shape)}, {list(valid.shape)}")
    masked = torch.zeros_like(valid) if mask_indices is None else (mask_indices & valid)
    unmasked = valid & ~masked
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    ce = F.cross_entropy(logits.float().transpose(1, 2), safe_targets, reduction="none")  # [B, N]
    correct = (logits.argmax(dim=-1) == safe_targets).float()
    masked_f, unmasked_f = masked.float(), unmasked.float()
    num_masked, num_unmasked = masked_f.sum(), unmasked_f.sum()
    ce_masked_sum, ce_unmasked_sum = (ce * masked_f).sum(), (ce * unmasked_f).sum()
    count = num_masked * float(masked_weight > 0) + num_unmasked * float(unmasked_weight > 0)
    weighted = masked_weight * ce_masked_sum + unmasked_weight * ce_unmasked_sum
    # A batch without counted frames contributes zero (and a zero gradient), not NaN.
    loss = weighted / count.clamp_min(1.0)
    return PredictionLoss(
        loss=loss, count=count,
        ce_masked=ce_masked_sum / num_masked.clamp_min(1.0), ce_unmasked=ce_unmasked_sum / num_unmasked.clamp_min(1.0),
        acc_masked=(correct * masked_f).sum() / num_masked.clamp_min(1.0),
        acc_unmasked=(correct * unmasked_f).sum() / num_unmasked.clamp_min(1.0),
        num_masked=num_masked, num_unmasked=num_unmasked)


def feature_penalty(conv_features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """Mean square of the CNN output over valid frames and all channels (HuBERT's ``features_pen``).

    Args:
        conv_features: ``[B, N, C]``; frame_lengths: ``[B]``.
    Returns:
        0-d float32 tensor.
    """
    valid = torch.arange(conv_features.shape[1], device=conv_features.device)[None, :] < frame_lengths[:, None]
    squares = conv_features.float().pow(2).mean(dim=-1)
    return (squares * valid).sum() / valid.sum().clamp_min(1)


class HubertPretrainModel(nn.Module):
    """Encoder + HuBERT's prediction heads (``final_proj`` and the unit embeddings).

    Args:
        encoder: the encoder being pretrained (kept as ``self.encoder``, exported alone).
        num_classes: number of k-means units K.
        final_dim: width F of the projection and of the unit embeddings.
        logit_temp: temperature of the cosine logits.
    """

    def __init__(self, encoder: Encoder, num_classes: int, final_dim: int, logit_temp: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.final_proj = nn.Linear(encoder.config.hidden_size, final_dim)
        # fairseq initialises the unit embeddings uniformly in [0, 1).
        self.label_embeddings = nn.Parameter(torch.empty(num_classes, final_dim).uniform_())
        self.logit_temp = logit_temp

    @property
    def num_classes(self) -> int:
        return self.label_embeddings.shape[0]

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor, *,
                mask_indices: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """Encode and score every frame against every unit.

        Args:
            wavs: ``[B, T]`` float32 waveforms at 16 kHz (samples), zero-padded.
            lengths: ``[B]`` valid samples.
            mask_indices: ``[B, N]`` bool frames replaced by the mask embedding.
        Returns:
            dict with ``logits`` ``[B, N, K]`` float32, ``frame_lengths`` ``[B]``, ``valid``
            ``[B, N]`` bool and ``feature_penalty`` (0-d).
        """
        output = self.encoder(wavs, lengths, mask_indices=mask_indices)
        last = output.last_hidden_state
        logits = cosine_logits(self.final_proj(last), self.label_embeddings, self.logit_temp)
        frames = last.shape[1]
        valid = torch.arange(frames, device=last.device)[None, :] < output.lengths[:, None]
        return {"logits": logits, "frame_lengths": output.lengths, "valid": valid,
                "feature_penalty": feature_penalty(output.conv_features, output.lengths)}
