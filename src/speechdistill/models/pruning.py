"""Structured pruning with hard-concrete gates (DPHuBERT, spec 03 §3, §4, §7).

* ``expected_num_params(model)``: the parameter count of the model as a differentiable function
  of the expected number of kept units per gate group (conv channels, heads, FFN units). With
  all units kept it equals the real count of the encoder's parameters (gates excluded).
* ``expected_sparsity(model, original)``: 1 - expected size / original size (the Lagrangian's ŝ).
* ``prune(model)``: a new dense ``Encoder`` without gates whose eval-mode output equals the gated
  model's eval-mode output: kept units are sliced out and the soft gate values are folded into
  the weights that consume them (next conv's input channels, ``out_proj`` / ``fc2`` columns, a
  per-channel scale after the CNN).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch import nn

from .components import FeedForward, SelfAttention
from .encoder import Encoder
from .feature_extractor import ConvBlock


def gate_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The ``log_alpha`` parameters (DPHuBERT trains them with their own learning rate)."""
    for name, parameter in model.named_parameters():
        if name.endswith("log_alpha"):
            yield parameter


def has_gates(model: Encoder) -> bool:
    return any(True for _ in gate_parameters(model))


def _count(module: Optional[nn.Module]) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def expected_num_params(model: Encoder) -> torch.Tensor:
    """Differentiable expected parameter count (scalar tensor); gate parameters are not counted."""
    c = model.config
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    previous = torch.ones((), device=device)  # the waveform has one channel
    for block in model.feature_extractor.blocks:
        out = block.gate.expected_l0() if block.gate is not None else torch.tensor(float(block.out_channels),
                                                                                    device=device)
        total = total + previous * out * block.kernel
        if block.conv.bias is not None:
            total = total + out
        if block.norm is not None:
            total = total + 2 * out
        previous = out
    if model.feature_norm is not None:
        total = total + 2 * previous
    if model.feature_projection is not None:
        total = total + previous * c.hidden_size + c.hidden_size
    constant = _count(model.pos_conv) + _count(model.encoder_norm) + _count(model.relative_position_embedding)
    if model.mask_embedding is not None:
        constant += model.mask_embedding.numel()
    d = c.hidden_size
    for layer in model.layers:
        constant += _count(layer.attention_norm) + _count(layer.final_norm) + _count(layer.adapter)
        attention: SelfAttention = layer.attention
        heads = (attention.head_gate.expected_l0() if attention.head_gate is not None
                 else torch.tensor(float(attention.num_heads), device=device))
        inner = heads * attention.head_dim
        projections = 1 if attention.reuse else 3
        total = total + projections * (d * inner + inner) + inner * d + d
        if attention.gate_proj is not None:
            constant += _count(attention.gate_proj)
            total = total + heads  # gate_scale has one value per head
        ffn = layer.feed_forward
        units = (ffn.unit_gate.expected_l0() if ffn.unit_gate is not None
                 else torch.tensor(float(ffn.fc1.out_features), device=device))
        total = total + d * units + units + units * d + d
    return total + constant


def expected_sparsity(model: Encoder, original_num_params: int) -> torch.Tensor:
    """ŝ = 1 - expected size / original size (differentiable)."""
    return 1.0 - expected_num_params(model) / float(original_num_params)


@torch.no_grad()
def _deterministic(gate: Optional[nn.Module], size: int, device: torch.device) -> torch.Tensor:
    if gate is None:
        return torch.ones(size, device=device)
    was_training = gate.training
    gate.eval()
    mask = gate().detach().clone()
    gate.train(was_training)
    return mask


@torch.no_grad()
def prune(model: Encoder) -> Encoder:
    """Dense pruned copy of a gated model (eval-mode masks); the input model is not changed.

    Raises:
        ValueError: the model has no gates, or a CNN layer would keep no channel.
    """
    if not has_gates(model):
        raise ValueError("prune() needs a model with hard-concrete gates (prune_conv / prune_heads / prune_ffn)")
    c = model.config
    device = next(model.parameters()).device
    source = model.state_dict()
    out: Dict[str, torch.Tensor] = {}

    # --- CNN: slice kept channels, fold each layer's soft mask into the next layer's input ---
    conv_layers: List[List[int]] = []
    previous_keep: Optional[torch.Tensor] = None
    previous_mask: Optional[torch.Tensor] = None
    blocks: List[ConvBlock] = list(model.feature_extractor.blocks)
    for i, block in enumerate(blocks):
        prefix = f"feature_extractor.blocks.{i}."
        mask = _deterministic(block.gate, block.out_channels, device)
        keep = mask.nonzero().flatten()
        if keep.numel() == 0:
            raise ValueError(f"CNN layer {i} keeps no channel at these gate values; the model cannot be pruned")
        weight = source[prefix + "conv.weight"][keep]
        if previous_keep is not None:
            weight = weight[:, previous_keep] * previous_mask[previous_keep].view(1, -1, 1)
        out[prefix + "conv.weight"] = weight
        if block.conv.bias is not None:
            out[prefix + "conv.bias"] = source[prefix + "conv.bias"][keep]
        if block.norm is not None:
            out[prefix + "norm.weight"] = source[prefix + "norm.weight"][keep]
            out[prefix + "norm.bias"] = source[prefix + "norm.bias"][keep]
        conv_layers.append([int(keep.numel()), block.kernel, block.stride])
        previous_keep, previous_mask = keep, mask
    conv_pruned = c.prune_conv
    if conv_pruned:
        out["feature_extractor.output_scale"] = previous_mask[previous_keep].clone()
    elif c.conv_output_scale:
        out["feature_extractor.output_scale"] = source["feature_extractor.output_scale"]
    if model.feature_norm is not None:
        out["feature_norm.weight"] = source["feature_norm.weight"][previous_keep]
        out["feature_norm.bias"] = source["feature_norm.bias"][previous_keep]
    if model.feature_projection is not None:
        out["feature_projection.weight"] = source["feature_projection.weight"][:, previous_keep]
        out["feature_projection.bias"] = source["feature_projection.bias"]

    # --- parts without gates are copied as they are ---
    for key, value in source.items():
        if key.startswith(("pos_conv.", "encoder_norm.", "relative_position_embedding.")) or key == "mask_embedding":
            out[key] = value

    # --- transformer layers: heads and FFN units ---
    hd = c.attention_head_dim
    layer_heads: List[int] = []
    layer_head_indices: List[List[int]] = []
    layer_ffn: List[int] = []
    for i, layer in enumerate(model.layers):
        prefix = f"layers.{i}."
        attention: SelfAttention = layer.attention
        head_mask = _deterministic(attention.head_gate, attention.num_heads, device)
        kept_heads = head_mask.nonzero().flatten()
        rows = (kept_heads[:, None] * hd + torch.arange(hd, device=device)[None, :]).flatten()
        for name in ("q_proj", "k_proj", "v_proj"):
            if getattr(attention, name) is not None:
                out[prefix + f"attention.{name}.weight"] = source[prefix + f"attention.{name}.weight"][rows]
                out[prefix + f"attention.{name}.bias"] = source[prefix + f"attention.{name}.bias"][rows]
        column_scale = head_mask[kept_heads].repeat_interleave(hd)
        out[prefix + "attention.out_proj.weight"] = source[prefix + "attention.out_proj.weight"][:, rows] * column_scale
        out[prefix + "attention.out_proj.bias"] = source[prefix + "attention.out_proj.bias"]
        if attention.gate_proj is not None:
            out[prefix + "attention.gate_proj.weight"] = source[prefix + "attention.gate_proj.weight"]
            out[prefix + "attention.gate_proj.bias"] = source[prefix + "attention.gate_proj.bias"]
            out[prefix + "attention.gate_scale"] = source[prefix + "attention.gate_scale"][kept_heads]
        original = attention.head_indices
        layer_heads.append(int(kept_heads.numel()))
        layer_head_indices.append([original[h] for h in kept_heads.tolist()])

        ffn = layer.feed_forward
        unit_mask = _deterministic(ffn.unit_gate, ffn.fc1.out_features, device)
        kept_units = unit_mask.nonzero().flatten()
        out[prefix + "feed_forward.fc1.weight"] = source[prefix + "feed_forward.fc1.weight"][kept_units]
        out[prefix + "feed_forward.fc1.bias"] = source[prefix + "feed_forward.fc1.bias"][kept_units]
        out[prefix + "feed_forward.fc2.weight"] = (source[prefix + "feed_forward.fc2.weight"][:, kept_units]
                                                   * unit_mask[kept_units])
        out[prefix + "feed_forward.fc2.bias"] = source[prefix + "feed_forward.fc2.bias"]
        layer_ffn.append(int(kept_units.numel()))
        for key, value in source.items():
            if key.startswith((prefix + "attention_norm.", prefix + "final_norm.", prefix + "adapter.")):
                out[key] = value

    config = c.replace(conv_layers=conv_layers, conv_output_scale=conv_pruned or c.conv_output_scale,
                       head_dim=hd, layer_heads=layer_heads,
                       layer_head_indices=layer_head_indices if c.relative_position_bias else None,
                       layer_ffn_sizes=layer_ffn, prune_conv=False, prune_heads=False, prune_ffn=False)
    pruned = Encoder(config).to(device)
    missing = set(pruned.state_dict()) - set(out)
    if missing:
        raise RuntimeError(f"pruning left weights unset: {sorted(missing)[:6]}")
    pruned.load_state_dict(out, strict=True)
    pruned.train(model.training)
    return pruned


GATE_ON = 20.0  # log_alpha that keeps a unit (deterministic value 1.0 in float32)
GATE_OFF = -20.0  # log_alpha that removes a unit


def gate_groups(model: Encoder) -> List[nn.Module]:
    """Every HardConcreteGate of the model (CNN channels, heads, FFN units)."""
    from .hardconcrete import HardConcreteGate
    return [m for m in model.modules() if isinstance(m, HardConcreteGate)]


@torch.no_grad()
def set_uniform_keep_fraction(model: Encoder, fraction: float, *, ffn_fraction: Optional[float] = None,
                              seed: int = 0) -> None:
    """Switch gates hard on/off so every group keeps round(fraction * n) units (FFN groups:
    ``ffn_fraction`` when given; CNN layers keep at least one), chosen at random with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    conv_gates = {id(m.gate) for m in model.modules() if isinstance(m, ConvBlock) and m.gate is not None}
    ffn_gates = {id(m.unit_gate) for m in model.modules() if isinstance(m, FeedForward) and m.unit_gate is not None}
    for gate in gate_groups(model):
        n = gate.num_units
        share = ffn_fraction if (ffn_fraction is not None and id(gate) in ffn_gates) else fraction
        keep = int(round(share * n))
        if id(gate) in conv_gates:
            keep = max(keep, 1)
        order = torch.randperm(n, generator=generator)
        values = torch.full((n,), GATE_OFF)
        values[order[:keep]] = GATE_ON
        gate.log_alpha.copy_(values.to(gate.log_alpha.device))


def _bisect(reach: Callable[[float], float], target: float) -> float:
    """Fraction in [0, 1] whose sparsity (decreasing in the fraction) is closest to ``target``."""
    low, high = 0.0, 1.0
    best = (float("inf"), 0.0)
    for _ in range(40):
        middle = (low + high) / 2
        sparsity = reach(middle)
        best = min(best, (abs(sparsity - target), middle))
        if sparsity > target:
            low = middle
        else:
            high = middle
    return best[1]


@torch.no_grad()
def set_uniform_sparsity(model: Encoder, target_sparsity: float, original_num_params: int, *,
                         seed: int = 0) -> float:
    """Hard gates that keep about the same fraction of every group, with expected sparsity as close
    to ``target_sparsity`` as the unit counts allow. Returns the expected sparsity reached.

    One fraction is chosen for all groups, then the FFN fraction alone is refined (an FFN unit is
    the finest step; a head is ~200k parameters). A stand-in for a trained DPHuBERT mask: it lets
    size, MACs and speed of a pruned model be measured, and tests check pruning against it.
    """
    def with_fraction(fraction: float) -> float:
        set_uniform_keep_fraction(model, fraction, seed=seed)
        return float(expected_sparsity(model, original_num_params))

    fraction = _bisect(with_fraction, target_sparsity)

    def with_ffn_fraction(ffn_fraction: float) -> float:
        set_uniform_keep_fraction(model, fraction, ffn_fraction=ffn_fraction, seed=seed)
        return float(expected_sparsity(model, original_num_params))

    ffn_fraction = _bisect(with_ffn_fraction, target_sparsity)
    set_uniform_keep_fraction(model, fraction, ffn_fraction=ffn_fraction, seed=seed)
    return float(expected_sparsity(model, original_num_params))
