"""SUPERB featurizer: a learnable softmax-weighted sum of an upstream's hidden states, or one layer.

The upstream (``speechdistill.load_model``) returns ``hidden_states``: a list of ``[B, N, D]``
tensors, index 0 the transformer input and index i the output of layer i (conventions §5.1).
The weighted sum keeps one scalar per selected hidden state, initialised to zero so the
softmax starts uniform, and returns Σ_l softmax(w)_l · h_l. With ``layer_norm`` every state
is normalised over its feature axis (no learnable scale or bias) before the sum; SUPERB's
default leaves that off.
"""
from __future__ import annotations

import dataclasses
from typing import List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class FeaturizerConfig:
    """``mode``: ``weighted_sum`` over ``layers`` (hidden-state indices, negative from the end;
    None = all), or ``single`` taking hidden state ``layer``. ``max_length_mismatch``: how many
    frames the selected states may differ by before it is treated as an upstream bug."""

    mode: Literal["weighted_sum", "single"] = "weighted_sum"
    layers: Optional[List[int]] = None
    layer: int = -1
    layer_norm: bool = False
    max_length_mismatch: int = 2


class Featurizer(nn.Module):
    """Combine ``num_hidden_states`` upstream states into one ``[B, N, D]`` feature sequence."""

    def __init__(self, num_hidden_states: int, config: Optional[FeaturizerConfig] = None) -> None:
        super().__init__()
        self.config = config or FeaturizerConfig()
        self.num_hidden_states = num_hidden_states
        if self.config.mode == "single":
            chosen = [self.config.layer]
        elif self.config.mode == "weighted_sum":
            chosen = list(range(num_hidden_states)) if self.config.layers is None else list(self.config.layers)
        else:
            raise ValueError(f"featurizer mode '{self.config.mode}' is not 'weighted_sum' or 'single'")
        resolved = []
        for index in chosen:
            if not -num_hidden_states <= index < num_hidden_states:
                raise ValueError(f"featurizer layer {index} is out of range for an upstream with {num_hidden_states} "
                                 f"hidden states (valid: 0..{num_hidden_states - 1} or negative from the end)")
            resolved.append(index % num_hidden_states)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"featurizer layers {chosen} select the same hidden state twice")
        if not resolved:
            raise ValueError("featurizer layers is an empty list; select at least one hidden state")
        self.selected_layers: List[int] = resolved
        if self.config.mode == "weighted_sum" and len(resolved) > 1:
            self.weights: Optional[nn.Parameter] = nn.Parameter(torch.zeros(len(resolved)))
        else:
            self.weights = None

    def layer_weights(self) -> torch.Tensor:
        """Normalised weight of each selected hidden state, ``[L]`` (detached, on CPU)."""
        if self.weights is None:
            return torch.ones(len(self.selected_layers))
        return torch.softmax(self.weights.detach().float(), dim=0).cpu()

    def forward(self, hidden_states: Sequence[Optional[torch.Tensor]], lengths: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """hidden_states: ``num_hidden_states`` tensors ``[B, N_l, D]`` (unselected ones may be
        None); lengths: ``[B]`` valid frames. Returns features ``[B, N, D]`` with
        N = min_l N_l, padded frames zeroed, and lengths ``[B]`` clipped to N."""
        if len(hidden_states) != self.num_hidden_states:
            raise ValueError(f"expected {self.num_hidden_states} hidden states, found {len(hidden_states)}; the "
                             "featurizer was built for a different upstream")
        selected = []
        for index in self.selected_layers:
            state = hidden_states[index]
            if state is None:
                raise ValueError(f"hidden state {index} is None; run the upstream with "
                                 f"output_layers={self.selected_layers}")
            if state.dim() != 3:
                raise ValueError(f"hidden state {index} must be [batch, frame, feature], found shape "
                                 f"{tuple(state.shape)}")
            selected.append(state)
        frames = [state.shape[1] for state in selected]
        if max(frames) - min(frames) > self.config.max_length_mismatch:
            raise ValueError(f"hidden states {self.selected_layers} have frame counts {frames}, differing by more "
                             f"than {self.config.max_length_mismatch}")
        shape = {tuple(state.shape[::2]) for state in selected}
        if len(shape) != 1:
            raise ValueError(f"hidden states disagree in batch size or feature size: "
                             f"{[tuple(s.shape) for s in selected]}")
        num_frames = min(frames)
        selected = [state[:, :num_frames] for state in selected]
        if self.config.layer_norm:
            selected = [F.layer_norm(state, state.shape[-1:]) for state in selected]
        if self.weights is None:
            features = selected[0]
        else:
            weights = torch.softmax(self.weights, dim=0).to(selected[0].dtype)
            features = torch.einsum("l,lbnd->bnd", weights, torch.stack(selected))
        lengths = lengths.to(features.device).clamp(max=num_frames)
        valid = torch.arange(num_frames, device=features.device)[None, :] < lengths[:, None]
        return features * valid[:, :, None].to(features.dtype), lengths

