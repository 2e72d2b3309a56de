"""Corruption of the student's input (RobustDistiller): the teacher sees the clean batch, the
student a noisy/reverberant copy made on the training device by :class:`speechdistill.augment.Augmenter`.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping

import torch

from ..augment import Augmenter, load_augment_config
from ..config import merge
from .config import CorruptionConfig


class StudentCorruption:
    """An augmentation preset applied to padded batches, with this rank's own seeded generator.

    Args:
        config: the ``corruption`` section (preset name or YAML file, data dirs, overrides).
        device: where batches live (the noise and RIR banks are loaded there once).
        seed: seed of the generator (a CPU ``torch.Generator``: the same draws on any device; its
            state is part of the task's checkpointed state).
    """

    def __init__(self, config: CorruptionConfig, device: torch.device, seed: int) -> None:
        overrides: Dict[str, Any] = copy.deepcopy(dict(config.overrides))
        if config.noise_data is not None:
            overrides = merge(overrides, {"noise": {"data_dir": config.noise_data}})
        if config.rir_data is not None:
            overrides = merge(overrides, {"reverb": {"data_dir": config.rir_data}})
        self.augment_config = load_augment_config(config.preset, overrides or None)
        self.augmenter = Augmenter.from_config(self.augment_config, device=device)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``wavs`` ``[B, T]`` clean (samples), ``lengths`` ``[B]`` -> corrupted ``[B, T]`` (zero in the padding)."""
        return self.augmenter(wavs, lengths, self.generator).noisy

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
