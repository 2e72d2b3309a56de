"""Distillation loss terms: feature distances, masking distillation, temporal Gram matrices,
speech-enhancement auxiliary loss, Lagrangian sparsity (and, in ``aam``, speaker AAM-softmax).

A method preset is a list of :class:`LossTerm`; :func:`evaluate_terms` turns student
predictions and teacher hidden states into the weighted total and named values for the logs.
"""
from .distill import (TERM_KINDS, LossTerm, check_terms, cosine_per_layer, evaluate_terms, student_keys_needed,
                      teacher_layers_needed)
from .enhancement import (ENHANCEMENT_LOSSES, enhancement_loss, multi_resolution_stft_loss, negative_si_sdr,
                          stft_num_frames, upsample_to_stft_frames)
from .frames import LossInputError, frame_mask
from .gram import gram_loss, gram_matrix
from .sparsity import LagrangianSparsity, lagrangian_sparsity_loss, target_sparsity

__all__ = [
    "TERM_KINDS", "LossTerm", "check_terms", "cosine_per_layer", "evaluate_terms", "student_keys_needed",
    "teacher_layers_needed", "ENHANCEMENT_LOSSES", "enhancement_loss", "multi_resolution_stft_loss",
    "negative_si_sdr", "stft_num_frames", "upsample_to_stft_frames", "LossInputError", "frame_mask", "gram_loss",
    "gram_matrix", "LagrangianSparsity", "lagrangian_sparsity_loss", "target_sparsity",
]
