"""Teacher targets: what a frozen teacher hands to the loss terms of the student it teaches.

Every task that distils (``distill.task``, and ``sv.task`` for a student with distillation terms)
takes its targets from here:

* loading: :func:`load_frozen_teacher` imports any teacher checkpoint frozen (no gradients), in
  eval mode, on the training device;
* the teacher pass: :func:`teacher_targets` runs the teacher under ``no_grad`` and the task's
  teacher autocast, computing layers only up to the deepest hidden state asked for; given
  ``mask_indices`` it also runs the masked pass (masking distillation), batched with the unmasked
  one;
* layer selection: only the asked hidden states are kept (the others are None); index 0 is the
  transformer input, or the projected CNN features with ``layer0_source: feature_projection`` (or
  ``feature_projection_before_dropout``)
  (:func:`hidden_states_with_layer0`, applied to the student in the same way);
* frame alignment: :func:`check_frames_line_up` refuses, before training, a student whose CNN
  makes other frame counts than the teacher's; :meth:`TeacherTargets.align` cuts student
  predictions padded further than the teacher's batch (a student pass over a larger batch) to
  the teacher's frames, and :meth:`TeacherTargets.valid` marks the frames the loss counts.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Collection, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import torch

from ..config import ConfigError
from .checkpoints import ImportReport, import_model
from .encoder import Encoder

Key = TypeVar("Key")
# Sample counts whose frame counts two CNNs must agree on to be aligned frame by frame: both sides of
# the stride boundaries of a 400-sample / 320-sample-stride CNN, a second, and a long crop.
_PROBE_SAMPLES = (400, 401, 719, 720, 16000, 16321, 250000)


def conv_frames(num_samples: int, conv_layers: Sequence[Sequence[int]]) -> int:
    """Frames a CNN makes of ``num_samples`` samples: floor((L - k) / s) + 1 layer by layer."""
    length = int(num_samples)
    for _, kernel, stride in conv_layers:
        length = (length - int(kernel)) // int(stride) + 1
    return length


def check_frames_line_up(student_conv: Sequence[Sequence[int]], teacher_conv: Sequence[Sequence[int]],
                         student_name: str = "student") -> None:
    """Raise :class:`ConfigError` unless both CNNs (``[[channels, kernel, stride], ...]``) make the
    same number of frames of any input, which frame-by-frame targets need."""
    student_frames = [conv_frames(n, student_conv) for n in _PROBE_SAMPLES]
    teacher_frames = [conv_frames(n, teacher_conv) for n in _PROBE_SAMPLES]
    if student_frames != teacher_frames:
        raise ConfigError(f"the {student_name}'s CNN {[list(c) for c in student_conv]} makes other frame counts than "
                          f"the teacher's {[list(c) for c in teacher_conv]} (e.g. {student_frames[-1]} vs "
                          f"{teacher_frames[-1]} for {_PROBE_SAMPLES[-1]} samples); give it the same total stride and "
                          "receptive field (a student preset with encoder_from_teacher: true has them)")


def hidden_states_with_layer0(output: Any, layer0_source: str) -> List[Optional[torch.Tensor]]:
    """An encoder output's hidden states, index 0 replaced by the feature-projection output when asked.

    Args:
        output: :class:`speechdistill.models.encoder.EncoderOutput`.
        layer0_source: ``transformer_input`` (keep), ``feature_projection`` (after ``dropout_input``) or
            ``feature_projection_before_dropout``.
    Returns:
        list of ``[B, N, D]`` (None where not computed).
    """
    hidden = list(output.hidden_states)
    if layer0_source == "feature_projection":
        hidden[0] = output.projected_features
    elif layer0_source == "feature_projection_before_dropout":
        hidden[0] = output.projection_output
    return hidden


def valid_frames(frame_lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``[B, N]`` bool, True on frames ``n < frame_lengths[b]`` (no host synchronisation)."""
    return torch.arange(num_frames, device=frame_lengths.device)[None, :] < frame_lengths[:, None]


def load_frozen_teacher(source: str, device: torch.device) -> Tuple[Encoder, ImportReport]:
    """Any teacher checkpoint (our model dir, Hugging Face dir, fairseq or s3prl checkpoint) as a
    frozen encoder in eval mode on ``device``, with its import report."""
    teacher, report = import_model(source)
    teacher.eval().requires_grad_(False)
    return teacher.to(device), report


@dataclass
class TeacherTargets:
    """The teacher's side of a distillation step.

    hidden: hidden states indexed like ``EncoderOutput.hidden_states``, ``[B, N, D]`` at the asked
        indices, None elsewhere.
    frame_lengths: ``[B]`` valid frames of each utterance.
    masked: the same hidden states of the masked pass, or None without one.
    """

    hidden: List[Optional[torch.Tensor]]
    frame_lengths: torch.Tensor
    masked: Optional[List[Optional[torch.Tensor]]] = None

    @property
    def num_frames(self) -> int:
        """``N``, the teacher's padded frame count."""
        return next(h for h in self.hidden if h is not None).shape[1]

    def valid(self) -> torch.Tensor:
        """``[B, N]`` bool: the teacher's valid frames."""
        return valid_frames(self.frame_lengths, self.num_frames)

    def align(self, predictions: Mapping[Key, torch.Tensor]) -> Dict[Key, torch.Tensor]:
        """Student predictions (key -> ``[B, N_s, D]``, ``N_s >= N``) cut to the teacher's ``N`` frames.

        A student that ran over a batch padded further than the teacher's has more frames; with
        CNNs that line up (:func:`check_frames_line_up`) its first ``N`` are the teacher's frames.
        """
        frames = self.num_frames
        aligned = {}
        for key, value in predictions.items():
            if value.shape[1] < frames:
                raise ConfigError(f"student state {key!r} has {value.shape[1]} frames, the teacher {frames}; their "
                                  "CNNs differ")
            aligned[key] = value[:, :frames]
        return aligned


@torch.no_grad()
def teacher_targets(teacher: Encoder, wavs: torch.Tensor, lengths: torch.Tensor, layers: Collection[int], *,
                    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                    layer0_source: str = "transformer_input", mask_indices: Optional[torch.Tensor] = None,
                    host_lengths: Optional[Sequence[int]] = None) -> TeacherTargets:
    """The hidden states ``layers`` of the frozen ``teacher`` for a clean batch.

    Args:
        teacher: the frozen encoder (:func:`load_frozen_teacher`).
        wavs: ``[B, T]`` clean waveforms (samples, 16 kHz); lengths: ``[B]`` valid samples.
        layers: hidden-state indices to keep (0 = the layer-0 source, i = output of layer i).
        autocast: returns the context the teacher runs in (the task's ``teacher_autocast``).
        layer0_source: ``transformer_input``, ``feature_projection`` or ``feature_projection_before_dropout``
            (what index 0 is; see :func:`hidden_states_with_layer0`).
        mask_indices: ``[B, N]`` bool; when given the masked pass runs too, batched with the
            unmasked one (``[2B, T]``), and fills :attr:`TeacherTargets.masked`.
        host_lengths: ``lengths`` as Python ints, when known (the teacher then reads nothing back).
    """
    wanted = set(layers)

    def keep(hidden: List[Optional[torch.Tensor]]) -> List[Optional[torch.Tensor]]:
        return [h if i in wanted else None for i, h in enumerate(hidden)]

    with autocast():
        if mask_indices is not None:
            batch = wavs.shape[0]
            both = teacher(torch.cat([wavs, wavs]), torch.cat([lengths, lengths]),
                           host_lengths=None if host_lengths is None else list(host_lengths) * 2,
                           mask_indices=torch.cat([mask_indices, torch.zeros_like(mask_indices)]),
                           output_layers=wanted)
            hidden = hidden_states_with_layer0(both, layer0_source)
            masked = [h[:batch] if h is not None else None for h in hidden]
            clean = [h[batch:] if h is not None else None for h in hidden]
            return TeacherTargets(keep(clean), both.lengths[batch:], keep(masked))
        out = teacher(wavs, lengths, host_lengths=host_lengths, output_layers=wanted)
        return TeacherTargets(keep(hidden_states_with_layer0(out, layer0_source)), out.lengths)
