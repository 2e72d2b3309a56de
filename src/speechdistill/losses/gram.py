"""STaR temporal Gram-matrix distillation (STaRHuBERT, specs/methods/07).

For a representation ``F_l`` of one utterance (``[N, d]``: N frames, d features):

* layer-wise Gram   ``G_l = F_l F_lᵀ``           (``[N, N]``, frame-by-frame similarity)
* intra-layer Gram  ``Ǧ_l = F_l F_{l+1}ᵀ``        (input vs output of the same layer)

The student matches the teacher's Grams, so teacher (768-d) and student (e.g. 432-d) need no
projection head: both Grams are ``N × N``.

Reductions (``loss="mse"``)
    Per Gram pair the squared differences are summed over the valid ``(i, j)`` entries (both
    frames inside the utterance) of every utterance and divided by ``Σ_b n_b²``; the layer
    reduction then averages (``"mean"``) or sums (``"sum"``) over Gram pairs. With
    ``include_padding=True`` every ``(i, j)`` of the padded ``N × N`` counts and the divisor is
    ``B·N²`` — with ``layer_reduction="mean"`` this is exactly the reimplementation's
    ``F.mse_loss`` over ``[B, L, N, N]``.

Reductions (``loss="kl"``)
    Rows of ``G/√d`` are softmax-normalised (padded columns excluded), and
    ``KL(teacher row ‖ student row)`` is summed over valid rows and divided by ``B`` — torch's
    ``KLDivLoss(reduction="batchmean")`` semantics. The reimplementation sums over layers
    (batchmean over ``[B, L, N, N]``), so ``layer_reduction="sum"`` reproduces it.

Normalisation (``normalization``; the paper's choice is UNVERIFIED, see the spec)
    ``"none"`` (default): plain ``F Fᵀ`` — what the only available implementation (the course-
    project reimplementation) does. Teacher and student Grams then differ in scale with the
    feature dimension and activation norms; the student learns to match it anyway.
    ``"dim"``: ``F_a F_bᵀ / √(d_a d_b)`` (= ``/d`` for a layer-wise Gram): removes the dimension
    dependence of the scale.
    ``"row"``: every frame vector is scaled to unit L2 norm before the product, so ``G_ij`` is
    the cosine similarity of frames i and j (in [-1, 1], free of activation scale).
    The KL mode always scales by ``1/√d`` (as the reimplementation) and takes no normalisation.

Memory
    A Gram of a 15 s utterance is 750×750 per layer and there are 13 + 12 of them per
    utterance. The batch is processed in chunks of ``chunk_size`` utterances, each chunk trimmed
    to its own longest utterance, and (when gradients are needed) each chunk is wrapped in
    activation checkpointing, so the backward pass keeps only the ``[c, n, d]`` inputs and
    recomputes the ``N × N`` products instead of storing them.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from .frames import LossInputError, check_choice, float32_math, resolve_valid

GRAM_NORMALIZATIONS = ("none", "dim", "row")
GRAM_LOSSES = ("mse", "kl")
_ROW_NORM_EPS = 1e-8


def gram_matrix(features_a: torch.Tensor, features_b: Optional[torch.Tensor] = None, *,
                normalization: str = "none") -> torch.Tensor:
    """Temporal Gram matrix of one or two representations.

    Args:
        features_a: ``[B, N, d_a]``.
        features_b: ``[B, N, d_b]`` for an intra-layer Gram; ``None`` for ``F_a F_aᵀ``.
        normalization: ``"none"``, ``"dim"`` or ``"row"`` (module docstring).
    Returns:
        ``[B, N, N]`` float32, ``G[b, i, j] = <a_bi, b_bj>`` after normalisation.
    """
    check_choice(normalization, GRAM_NORMALIZATIONS, "normalization", "gram_matrix")
    a = features_a.float()
    b = a if features_b is None else features_b.float()
    a, b = _normalise(a, normalization), _normalise(b, normalization)
    gram = torch.matmul(a, b.transpose(-1, -2))
    if normalization == "dim":
        gram = gram / math.sqrt(features_a.shape[-1] * (b.shape[-1]))
    return gram


def _normalise(features: torch.Tensor, normalization: str) -> torch.Tensor:
    if normalization == "row":
        return features / features.norm(dim=-1, keepdim=True).clamp_min(_ROW_NORM_EPS)
    return features


def _gram_pairs(num_layers: int, intra: bool) -> List[Tuple[int, int]]:
    """Index pairs (a, b) of the Grams F_a F_bᵀ to compare: (l, l) or (l, l+1)."""
    if intra:
        return [(index, index + 1) for index in range(num_layers - 1)]
    return [(index, index) for index in range(num_layers)]


def _chunk_sums(row_valid: torch.Tensor, pairs: Sequence[Tuple[int, int]], loss: str, normalization: str,
                num_student: int, *features: torch.Tensor) -> torch.Tensor:
    """Per-pair sums over one chunk of utterances.

    ``features`` = student layers then teacher layers, each ``[c, n, d]`` float32 with padded rows
    already zeroed. Returns ``[P]``: summed squared Gram differences (mse) or summed row KLs (kl).
    """
    student, teacher = features[:num_student], features[num_student:]
    sums = []
    for index_a, index_b in pairs:
        if loss == "mse":
            gram_student = gram_matrix(student[index_a], student[index_b], normalization=normalization)
            gram_teacher = gram_matrix(teacher[index_a], teacher[index_b], normalization=normalization)
            # Padded rows are zero in both Grams, so the padded entries contribute exactly 0.
            sums.append((gram_teacher - gram_student).pow(2).sum())
        else:
            column_pad = ~row_valid[:, None, :]
            log_student = _row_log_softmax(student[index_a], student[index_b], column_pad)
            log_teacher = _row_log_softmax(teacher[index_a], teacher[index_b], column_pad)
            row_kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)  # [c, n]
            sums.append(row_kl.masked_fill(~row_valid, 0.0).sum())
    return torch.stack(sums)


def _row_log_softmax(features_a: torch.Tensor, features_b: torch.Tensor, column_pad: torch.Tensor) -> torch.Tensor:
    scale = math.sqrt(math.sqrt(features_a.shape[-1] * features_b.shape[-1]))  # √d for equal dims
    logits = torch.matmul(features_a, features_b.transpose(-1, -2)) / scale
    logits = logits.masked_fill(column_pad, float("-inf"))
    # Zero the -inf entries after the softmax so that 0·(-inf) never appears in the KL sum.
    return torch.log_softmax(logits, dim=-1).masked_fill(column_pad, 0.0)


def gram_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], valid: Optional[torch.Tensor], *,
              intra: bool = False, loss: str = "mse", normalization: str = "none", include_padding: bool = False,
              layer_reduction: str = "mean", chunk_size: int = 8, checkpoint: bool = True) -> torch.Tensor:
    """STaR Gram-matrix loss between aligned lists of student and teacher representations.

    Args:
        student: L tensors ``[B, N, d_s]`` (student layers, in the order matched to ``teacher``).
        teacher: L tensors ``[B, N, d_t]``.
        valid: ``[B, N]`` bool valid frames (may be ``None`` only with ``include_padding=True``).
        intra: compare intra-layer Grams ``F_l F_{l+1}ᵀ`` (L-1 of them) instead of ``F_l F_lᵀ``.
        loss: ``"mse"`` or ``"kl"``; normalization: ``"none"``, ``"dim"``, ``"row"`` (mse only).
        include_padding: reproduce the reimplementation (padded frames in every Gram).
        layer_reduction: ``"mean"`` or ``"sum"`` over Gram pairs.
        chunk_size: utterances per chunk (bounds the ``N × N`` working memory).
        checkpoint: recompute each chunk's Grams in the backward pass instead of storing them.
    Returns:
        scalar float32 loss.
    """
    where = "gram_loss"
    check_choice(loss, GRAM_LOSSES, "loss", where)
    check_choice(normalization, GRAM_NORMALIZATIONS, "normalization", where)
    check_choice(layer_reduction, ("mean", "sum"), "layer_reduction", where)
    if loss == "kl" and normalization != "none":
        raise LossInputError(f"{where}: loss 'kl' already scales the Gram by 1/sqrt(d); "
                             f"use normalization 'none' (found {normalization!r})")
    if len(student) != len(teacher) or len(student) < (2 if intra else 1):
        raise LossInputError(f"{where}: need equally many student and teacher layers "
                             f"(at least {2 if intra else 1}); found {len(student)} and {len(teacher)}")
    if chunk_size < 1:
        raise LossInputError(f"{where}: chunk_size must be >= 1, found {chunk_size}")
    batch, num_frames = student[0].shape[:2]
    for position, tensor in enumerate(list(student) + list(teacher)):
        if tensor.dim() != 3 or tuple(tensor.shape[:2]) != (batch, num_frames):
            side = "student" if position < len(student) else "teacher"
            raise LossInputError(f"{where}: every representation must be [B, N, d] with B={batch}, N={num_frames}; "
                                 f"{side} layer {position % len(student)} has shape {tuple(tensor.shape)}")
    valid = resolve_valid(valid, batch, num_frames, include_padding=include_padding, where=where)
    lengths = valid.sum(dim=1)
    if not include_padding:
        if int(lengths.sum()) == 0:
            raise LossInputError(f"{where}: no valid frame in the batch")
        prefix = torch.arange(num_frames, device=valid.device)[None] < lengths[:, None]
        if not bool((valid == prefix).all()):
            raise LossInputError(f"{where}: valid must mark a prefix of each utterance (frames 0..n_b-1)")

    pairs = _gram_pairs(len(student), intra)
    device = student[0].device
    totals = torch.zeros(len(pairs), dtype=torch.float32, device=device)
    with float32_math(device):
        for start in range(0, batch, chunk_size):
            stop = min(start + chunk_size, batch)
            chunk_valid = valid[start:stop]
            # Trim the chunk to its own longest utterance; padding beyond it holds no valid entry.
            frames = num_frames if include_padding else max(int(lengths[start:stop].max()), 1)
            chunk_valid = chunk_valid[:, :frames]
            pad = ~chunk_valid[..., None]
            chunk = [tensor[start:stop, :frames].float().masked_fill(pad, 0.0) for tensor in student]
            chunk += [tensor[start:stop, :frames].float().masked_fill(pad, 0.0) for tensor in teacher]
            arguments = (chunk_valid, pairs, loss, normalization, len(student), *chunk)
            needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in chunk)
            if checkpoint and needs_grad:
                totals = totals + activation_checkpoint(_chunk_sums, *arguments, use_reentrant=False)
            else:
                totals = totals + _chunk_sums(*arguments)
        if loss == "mse":
            per_pair = totals / lengths.double().pow(2).sum().float()
        else:
            per_pair = totals / batch
    return per_pair.mean() if layer_reduction == "mean" else per_pair.sum()
