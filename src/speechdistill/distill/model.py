"""The trainable module of a distillation run: student encoder, target-mapping heads, optional
enhancement head and Lagrange multipliers. The frozen teacher is *not* inside it (it stays in the
task, so DDP never wraps it and checkpoints never hold it).

Everything that has trainable parameters runs inside :meth:`DistillModel.forward`, which is
what DDP needs to synchronise gradients.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from ..losses import LagrangianSparsity
from ..models.encoder import Encoder
from ..models.heads import LayerProjections, PredictionHeads
from ..models.pruning import expected_sparsity
from ..models.teacher_targets import hidden_states_with_layer0, valid_frames
from .config import head_key
from .enhancement import EnhancementHead

StudentKey = Union[int, str]


class DistillModel(nn.Module):
    """Student + heads (+ enhancement head, + Lagrangian) as one module.

    Args:
        student: the student encoder.
        heads: ``PredictionHeads`` / ``LayerProjections`` or None.
        student_keys: the keys loss terms and validation read (``"head<t>"`` or layer indices).
        layer0_source: what hidden state 0 is (see :class:`speechdistill.distill.DistillConfig`).
        enhancement: optional enhancement head and what it reads (``last_hidden`` / ``cnn``).
        lagrangian: optional Lagrangian sparsity regulariser (needs gates in ``student``).
        original_num_params: parameter count the sparsity is relative to (the teacher's).
    """

    def __init__(self, student: Encoder, heads: Optional[nn.Module], student_keys: Sequence[StudentKey], *,
                 layer0_source: str = "transformer_input", enhancement: Optional[EnhancementHead] = None,
                 enhancement_input: str = "last_hidden", lagrangian: Optional[LagrangianSparsity] = None,
                 original_num_params: Optional[int] = None) -> None:
        super().__init__()
        self.student = student
        self.heads = heads
        self.enhancement = enhancement
        self.lagrangian = lagrangian
        self.layer0_source = layer0_source
        self.enhancement_input = enhancement_input
        self.original_num_params = original_num_params
        self.student_keys = list(student_keys)
        self.projected_layers: Dict[int, int] = {}
        if isinstance(heads, LayerProjections):
            for index, layer in enumerate(heads.config.source_layers):
                if layer in self.projected_layers:
                    raise ValueError(f"target mapping projects student layer {layer} twice; give each student layer "
                                     "one projection")
                self.projected_layers[int(layer)] = index
        if lagrangian is not None and original_num_params is None:
            raise ValueError("a Lagrangian sparsity regulariser needs original_num_params (the teacher's size)")

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor, *, mask_indices: Optional[torch.Tensor] = None,
                step: int = 0, host_lengths: Optional[Sequence[int]] = None) -> Dict[str, Any]:
        """Student pass.

        Args:
            wavs: ``[B, T]`` student input waveforms (samples, 16 kHz), zero-padded.
            lengths: ``[B]`` valid samples.
            mask_indices: ``[B, N]`` bool frames replaced by the student's mask embedding.
            step: updates done so far (the sparsity target ramps with it).
            host_lengths: ``lengths`` as Python ints, when known (the encoder then reads nothing back).
        Returns:
            dict with ``predictions`` (student key -> ``[B, N, D]``), ``valid`` (``[B, N]`` bool),
            ``frame_lengths`` (``[B]``), ``hidden_states`` (list, index 0 per ``layer0_source``),
            ``enhancement_mask`` (``[B, S, 257]`` or None), ``regularizer`` (scalar or None) and
            ``regularizer_terms`` (dict of detached scalars for the logs).
        """
        output = self.student(wavs, lengths, mask_indices=mask_indices, host_lengths=host_lengths)
        hidden = hidden_states_with_layer0(output, self.layer0_source)
        num_frames = hidden[-1].shape[1]
        predictions: Dict[StudentKey, torch.Tensor] = {}
        if isinstance(self.heads, PredictionHeads):
            stacked = self.heads(hidden[self.heads.config.source_layers[0]])  # [B, K, N, D]
            for index, layer in enumerate(self.heads.config.target_layers):
                predictions[head_key(layer)] = stacked[:, index]
        for key in self.student_keys:
            if isinstance(key, str):
                continue
            if key in self.projected_layers:
                predictions[key] = self.heads.project(self.projected_layers[key], hidden[key])
            else:
                predictions[key] = hidden[key]
        result: Dict[str, Any] = {
            "predictions": predictions,
            "valid": valid_frames(output.lengths, num_frames),
            "frame_lengths": output.lengths,
            "hidden_states": hidden,
            "enhancement_mask": None,
            "regularizer": None,
            "regularizer_terms": {},
        }
        if self.enhancement is not None:
            features = output.conv_features if self.enhancement_input == "cnn" else output.hidden_states[-1]
            result["enhancement_mask"] = self.enhancement(features, output.lengths, lengths, wavs.shape[1])
        if self.lagrangian is not None:
            sparsity = expected_sparsity(self.student, self.original_num_params)
            result["regularizer"], result["regularizer_terms"] = self.lagrangian(sparsity, step)
        return result
