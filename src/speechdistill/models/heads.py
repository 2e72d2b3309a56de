"""Target-mapping heads: modules that map student hidden states onto teacher hidden states.

They belong to the distillation task, not to the encoder, so any student can take any of them:

* ``PredictionHeads`` (DistilHuBERT, RobustDistiller, OS-KDFT 2024): from one student layer,
  ``Linear(D_in, K * D_hid) -> GELU -> SplitLinear`` (K independent ``D_hid -> D_out`` maps),
  giving K predictions ``[B, K, N, D_out]`` of K teacher layers. (K separate
  Linear-GELU-Linear MLPs on the same input are the same function with the same parameters.)
* ``LayerProjections`` (ARMHuBERT/MaskHuBERT per-layer ``Linear(D_in, D_out)``; DPHuBERT's
  groups of layers that share one identity-initialised Linear).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence

import torch
from torch import nn

from .. import kernels
from ..config import from_dict, to_dict
from .components import project, project_layer


@dataclass
class HeadsConfig:
    """Heads of one kind.

    Attributes:
        kind: ``prediction`` (K heads from one student layer) or ``projection`` (one per layer).
        in_dim / out_dim: student width D_in, teacher width D_out.
        source_layers: student hidden-state indices read (prediction: exactly one).
        target_layers: teacher hidden-state indices predicted, one per head (for the task).
        hidden_dim: inner width of prediction heads (default ``in_dim``).
        share_groups: projection: group id per head; heads in a group share one Linear.
        init: ``default`` (PyTorch / DistilHuBERT init) or ``identity`` (weights = I, bias 0).
    """

    kind: Literal["prediction", "projection"] = "prediction"
    in_dim: int = 768
    out_dim: int = 768
    source_layers: List[int] = field(default_factory=list)
    target_layers: List[int] = field(default_factory=list)
    hidden_dim: Optional[int] = None
    share_groups: Optional[List[int]] = None
    init: Literal["default", "identity"] = "default"

    def __post_init__(self) -> None:
        if not self.target_layers:
            raise ValueError("heads: target_layers is empty; list the teacher layers the heads predict")
        if self.kind == "prediction" and len(self.source_layers) != 1:
            raise ValueError(f"heads: prediction heads read one student layer, got source_layers "
                             f"{self.source_layers}")
        if self.kind == "projection" and len(self.source_layers) != len(self.target_layers):
            raise ValueError(f"heads: {len(self.source_layers)} source_layers but {len(self.target_layers)} "
                             "target_layers; projections pair them one to one")
        if self.share_groups is not None and len(self.share_groups) != len(self.target_layers):
            raise ValueError("heads: share_groups needs one group id per head")


class SplitLinear(nn.Module):
    """K independent affine maps applied to the K chunks of the last dimension.

    [..., K * D_in] -> [..., K, D_out]; weights and biases uniform(+-D_in^-0.5) as in DistilHuBERT.
    """

    def __init__(self, num_splits: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = in_dim ** -0.5
        self.num_splits, self.in_dim, self.out_dim = num_splits, in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(num_splits, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_splits, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., K * D_in] -> [..., K, D_out]."""
        chunks = x.unflatten(-1, (self.num_splits, self.in_dim))
        size = x.numel() // x.shape[-1] * self.in_dim * self.out_dim
        if kernels.find("linear", x, (self.weight, self.bias), size) is not None:
            # a kernel for products of this size (on CPUs, where einsum's bmm runs on a slower float32
            # GEMM): one product per split
            return torch.stack([project(chunks[..., k, :], self, f"split{k}", (self.weight, self.bias),
                                        lambda parts, k=k: (parts[0][k].t(), parts[1][k]), self.in_dim, self.out_dim)
                                for k in range(self.num_splits)], dim=-2)
        return torch.einsum("...ki,kio->...ko", chunks, self.weight.to(chunks.dtype)) + self.bias.to(chunks.dtype)


class PredictionHeads(nn.Module):
    """DistilHuBERT heads: [B, N, D_in] (one student layer) -> [B, K, N, D_out]."""

    def __init__(self, config: HeadsConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_dim or config.in_dim
        k = len(config.target_layers)
        self.expand = nn.Linear(config.in_dim, hidden * k)
        self.split = SplitLinear(k, hidden, config.out_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [B, N, D_in] -> predictions [B, K, N, D_out] (K = len(target_layers))."""
        if hidden.dim() != 3 or hidden.shape[-1] != self.config.in_dim:
            raise ValueError(f"prediction heads expect [batch, frame, {self.config.in_dim}], got {list(hidden.shape)}")
        return self.split(project_layer(self.expand, hidden, gelu=True)).permute(0, 2, 1, 3)

    def from_hidden_states(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        return self(hidden_states[self.config.source_layers[0]])


class LayerProjections(nn.Module):
    """One Linear(D_in, D_out) per (student layer, teacher layer) pair, optionally shared in groups."""

    def __init__(self, config: HeadsConfig) -> None:
        super().__init__()
        self.config = config
        groups = config.share_groups if config.share_groups is not None else list(range(len(config.target_layers)))
        order = list(dict.fromkeys(groups))
        self.group_of_head = [order.index(g) for g in groups]
        self.projections = nn.ModuleList(nn.Linear(config.in_dim, config.out_dim) for _ in order)
        if config.init == "identity":
            if config.in_dim != config.out_dim:
                raise ValueError("heads: identity init needs in_dim == out_dim")
            for linear in self.projections:
                nn.init.eye_(linear.weight)
                nn.init.zeros_(linear.bias)

    def project(self, head: int, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, N, D_in] -> [B, N, D_out] through head ``head``'s Linear."""
        return project_layer(self.projections[self.group_of_head[head]], hidden)

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Student hidden states (indexed like EncoderOutput) -> one [B, N, D_out] per head."""
        return [self.project(i, hidden_states[layer]) for i, layer in enumerate(self.config.source_layers)]


def build_heads(config: Any, *, where: str = "heads") -> nn.Module:
    """PredictionHeads or LayerProjections from a HeadsConfig or its dict form."""
    if not isinstance(config, HeadsConfig):
        config = from_dict(HeadsConfig, dict(config), where=where)
    return PredictionHeads(config) if config.kind == "prediction" else LayerProjections(config)


def heads_config(heads: nn.Module) -> Dict[str, Any]:
    config = getattr(heads, "config", None)
    if not isinstance(config, HeadsConfig):
        raise TypeError(f"{type(heads).__name__} is not a heads module built by speechdistill.models.heads")
    return to_dict(config)
