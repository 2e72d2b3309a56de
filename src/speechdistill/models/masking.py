"""Span masking with fairseq ``compute_mask_indices`` semantics (HuBERT / wav2vec 2.0 pretraining,
ARMHuBERT / MaskHuBERT masked distillation).

Per utterance of ``n`` valid frames:

1. number of spans ``k = int(mask_prob * n / mask_length + u)``, ``u ~ U[0, 1)`` (probabilistic
   rounding), at least ``min_masks``; without per-row lengths one ``u`` serves the whole batch;
2. span lengths: ``static`` = ``mask_length``; ``uniform`` = integers in
   ``[mask_other, 2 * mask_length]``; ``normal`` = ``round(N(mask_length, mask_other))`` (>= 1);
   ``poisson`` = ``round(Poisson(mask_length))``; if all are 0 the first becomes
   ``min(mask_length, n - 1)``;
3. placement: with ``no_overlap`` the longest span first, each into a free interval chosen with
   probability proportional to its length, keeping ``min_space`` unmasked frames between spans;
   otherwise ``k`` distinct start frames in ``[0, n - min_len)`` (spans may overlap);
4. ``require_same_masks``: every row is then cut (random frames dropped) to the smallest
   masked-frame count in the batch, so all rows mask the same number of frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch

Selection = Literal["static", "uniform", "normal", "poisson"]


def _span_lengths(rng: np.random.Generator, selection: str, count: int, mask_length: int,
                  mask_other: float) -> np.ndarray:
    if selection == "static":
        lengths = np.full(count, mask_length, dtype=np.int64)
    elif selection == "uniform":
        lengths = rng.integers(int(mask_other), mask_length * 2 + 1, size=count)
    elif selection == "normal":
        lengths = np.maximum(1, np.round(rng.normal(mask_length, mask_other, size=count))).astype(np.int64)
    elif selection == "poisson":
        lengths = np.round(rng.poisson(mask_length, size=count)).astype(np.int64)
    else:
        raise ValueError(f"mask selection '{selection}' is unknown; use static, uniform, normal or poisson")
    return lengths.astype(np.int64)


def _place_without_overlap(rng: np.random.Generator, size: int, lengths: np.ndarray,
                           min_space: int) -> np.ndarray:
    """Spans placed longest first into free intervals; ``min_space`` free frames between spans."""
    masked: List[int] = []
    free: List[Tuple[int, int]] = [(0, size)]
    shortest = int(lengths.min())
    for length in sorted((int(v) for v in lengths), reverse=True):
        # An interval can take the span if it has room for it plus the spacing (and a start to draw).
        room = np.array([e - s if (e - s >= length + min_space and e - length > s) else 0 for s, e in free],
                        dtype=np.float64)
        if room.sum() == 0:
            break
        s, e = free.pop(int(rng.choice(len(free), p=room / room.sum())))
        start = int(rng.integers(s, e - length))
        masked.extend(range(start, start + length))
        if start - s - min_space >= shortest:
            free.append((s, start - min_space + 1))
        if e - start - length - min_space > shortest:
            free.append((start + length + min_space, e))
    return np.asarray(masked, dtype=np.int64)


def compute_mask_indices(shape: Tuple[int, int], lengths: Optional[Sequence[int]], mask_prob: float,
                         mask_length: int, *, selection: Selection = "static", mask_other: float = 0.0,
                         min_masks: int = 0, no_overlap: bool = False, min_space: int = 0,
                         require_same_masks: bool = True, mask_dropout: float = 0.0,
                         rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Boolean span mask [B, N] (True = masked frame).

    Args:
        shape: (B, N) — batch size and padded number of frames.
        lengths: valid frames per row (None: every row has N frames).
        mask_prob: expected fraction of frames that start a span, times ``mask_length``.
        mask_length: span length (static) or its mean (other selections).
        rng: numpy Generator; a fresh unseeded one when None.
    """
    batch, all_size = shape
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    rng = rng if rng is not None else np.random.default_rng()
    mask = np.zeros((batch, all_size), dtype=bool)
    shared_count = max(min_masks, int(mask_prob * all_size / float(mask_length) + rng.random()))
    row_indices: List[np.ndarray] = []
    for row in range(batch):
        if lengths is not None:
            size = int(lengths[row])
            count = max(min_masks, int(mask_prob * size / float(mask_length) + rng.random()))
        else:
            size, count = all_size, shared_count
        if size <= 0 or count <= 0:
            row_indices.append(np.zeros(0, dtype=np.int64))
            continue
        span = _span_lengths(rng, selection, count, mask_length, mask_other)
        if span.sum() == 0:
            span[0] = min(mask_length, size - 1)
        if no_overlap:
            indices = _place_without_overlap(rng, size, span, min_space)
        else:
            shortest = int(span.min())
            if size - shortest <= count:
                shortest = size - count - 1
            starts = rng.choice(size - shortest, count, replace=False)
            indices = (starts[:, None] + np.arange(int(span.max()))[None, :])
            indices = indices[np.arange(int(span.max()))[None, :] < span[:, None]]
        row_indices.append(np.unique(indices[(indices >= 0) & (indices < size)]))
    if not row_indices:
        return mask
    smallest = min(len(indices) for indices in row_indices)
    for row, indices in enumerate(row_indices):
        if require_same_masks and len(indices) > smallest:
            indices = rng.choice(indices, smallest, replace=False)
        if mask_dropout > 0 and len(indices):
            holes = int(np.rint(len(indices) * mask_dropout))
            indices = rng.choice(indices, len(indices) - holes, replace=False)
        mask[row, indices] = True
    return mask


def span_mask(frame_lengths: Union[torch.Tensor, Sequence[int]], num_frames: int, mask_prob: float,
              mask_length: int, *, selection: Selection = "static", mask_other: float = 0.0, min_masks: int = 0,
              no_overlap: bool = False, min_space: int = 0, require_same_masks: bool = True,
              rng: Optional[np.random.Generator] = None, device: Optional[torch.device] = None) -> torch.Tensor:
    """``compute_mask_indices`` for a batch described by frame lengths [B] (a tensor, or Python ints that
    need no read from a device); returns bool [B, N] on ``device`` (default: that of ``frame_lengths``; the
    sampling itself runs on the CPU with numpy)."""
    if isinstance(frame_lengths, torch.Tensor):
        device = frame_lengths.device if device is None else device
        lengths = frame_lengths.detach().cpu().tolist()
    else:
        lengths = [int(n) for n in frame_lengths]
    full = all(int(n) == num_frames for n in lengths)
    mask = compute_mask_indices((len(lengths), num_frames), None if full else lengths, mask_prob, mask_length,
                                selection=selection, mask_other=mask_other, min_masks=min_masks,
                                no_overlap=no_overlap, min_space=min_space,
                                require_same_masks=require_same_masks, rng=rng)
    return torch.from_numpy(mask).to(device if device is not None else "cpu", non_blocking=True)


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - the word --help prints
    return field(default=default, metadata={"help": help})


@dataclass
class MaskingConfig:
    """Span masking of the student input (and the masked teacher pass of masking distillation).

    Masks follow fairseq ``compute_mask_indices`` (:mod:`speechdistill.models.masking`); the same
    indices replace frames by the student's mask embedding and by the teacher's own in the masked
    teacher pass. ``mask_prob: 0`` turns masking off.
    """

    mask_prob: float = _opt(0.0, "fairseq mask_prob: spans = mask_prob * frames / mask_length, i.e. the masked "
                                 "fraction before overlaps; 0 = no masking")
    mask_length: int = _opt(10, "span length (static) or its mean")
    selection: Literal["static", "uniform", "normal", "poisson"] = _opt("static", "span-length distribution")
    mask_other: float = _opt(0.0, "selection parameter (uniform: lower bound of the span length)")
    no_overlap: bool = _opt(False, "place spans without overlap")
    min_space: int = _opt(0, "with no_overlap: unmasked frames kept between spans")
    min_masks: int = _opt(0, "minimum number of spans per utterance")
    require_same_masks: bool = _opt(True, "cut every row to the batch's smallest masked-frame count")

    @property
    def enabled(self) -> bool:
        return self.mask_prob > 0
