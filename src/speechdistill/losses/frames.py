"""Frame masks and the checks every loss term shares.

A batch of encoder outputs is padded to the longest utterance: ``[B, N, D]`` with ``N`` the
padded frame count. ``valid`` (``[B, N]`` bool) marks the frames that belong to an utterance;
every loss term in this package excludes the others unless asked to reproduce released code
that did not (``include_padding=True``).

Loss values are always computed in float32 with autocast switched off: reductions over
hundreds of thousands of frames, Gram matrices and log-sigmoids lose too much in bf16/fp16,
and the cost is negligible next to the encoders.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from ..config import ConfigError


class LossInputError(ValueError):
    """Tensors handed to a loss term do not fit together; the message names the term and shapes."""


def frame_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Valid-frame mask from per-utterance frame counts.

    Args:
        lengths: ``[B]`` integer, valid frames of each utterance (0 <= lengths <= num_frames).
        num_frames: ``N``, the padded frame count.
    Returns:
        ``[B, N]`` bool, ``True`` where frame ``n < lengths[b]``.
    """
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise LossInputError(f"frame_mask: lengths must be [B], found shape {tuple(lengths.shape)}")
    if bool((lengths > num_frames).any()) or bool((lengths < 0).any()):
        raise LossInputError(f"frame_mask: lengths {lengths.tolist()} outside [0, {num_frames}]")
    frames = torch.arange(num_frames, device=lengths.device)
    return frames[None, :] < lengths[:, None]


def resolve_valid(valid: Optional[torch.Tensor], batch: int, num_frames: int, *, include_padding: bool,
                  where: str) -> torch.Tensor:
    """The mask a term actually uses: ``valid`` itself, or all-True when padding is included.

    Raises LossInputError if ``valid`` has the wrong shape/dtype, or if it is missing while
    padding is to be excluded.
    """
    if valid is not None:
        if valid.dtype != torch.bool:
            raise LossInputError(f"{where}: valid must be a bool tensor, found {valid.dtype}")
        if tuple(valid.shape) != (batch, num_frames):
            raise LossInputError(f"{where}: valid has shape {tuple(valid.shape)}, expected [B, N] = "
                                 f"[{batch}, {num_frames}] like the features")
    if include_padding:
        device = valid.device if valid is not None else None
        return torch.ones(batch, num_frames, dtype=torch.bool, device=device)
    if valid is None:
        raise LossInputError(f"{where}: valid [B, N] is required unless include_padding=True")
    return valid


def check_same_shape(student: torch.Tensor, teacher: torch.Tensor, where: str) -> None:
    """Student prediction and teacher target must both be ``[B, N, D]`` with equal sizes."""
    if student.dim() != 3 or tuple(student.shape) != tuple(teacher.shape):
        raise LossInputError(f"{where}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                             "must both be [B, N, D] with equal sizes (a projection head maps the student "
                             "dimension onto the teacher's)")


@contextlib.contextmanager
def float32_math(device: torch.device) -> Iterator[None]:
    """Disable autocast for the enclosed loss arithmetic (inputs are cast to float32 by the caller)."""
    if device.type in ("cuda", "cpu", "xpu", "mps"):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


def check_choice(value: str, choices: tuple, key: str, where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: {key} {value!r} is not one of {list(choices)}")
