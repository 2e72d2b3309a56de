"""What every model import shares: the error and report types, key maps from foreign names to ours, and
building an :class:`~.encoder.Encoder` from a mapped state dict with every key accounted for."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import torch

from .config import EncoderConfig
from .encoder import Encoder

PathLike = Union[str, os.PathLike]


class ModelFormatError(ValueError):
    """A path that is not a model we can load; the message says what was found and what is expected."""


@dataclass
class ImportReport:
    """What an import found: format, architecture, parameter count and skipped keys."""

    path: str
    format: str  # ours | huggingface | fairseq | s3prl
    architecture: str  # hubert | wav2vec2 | wavlm | speechdistill
    config: EncoderConfig
    num_params: int = 0
    ignored_keys: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def summary(self) -> Dict[str, Any]:
        c = self.config
        return {
            "path": self.path,
            "format": self.format,
            "architecture": self.architecture,
            "shape": describe_shape(c),
            "params": self.num_params,
            "ignored_keys": _compress_keys(self.ignored_keys),
            "notes": self.notes,
        }


def describe_shape(c: EncoderConfig) -> str:
    order = "pre-LN" if c.layer_norm_first else "post-LN"
    cnn = f"{len(c.conv_layers)}-layer CNN ({c.conv_norm} norm{', conv bias' if c.conv_bias else ''})"
    extra = ", gated relative position bias" if c.relative_position_bias else ""
    return (f"{cnn}, {c.num_layers} {order} layers of {c.hidden_size} "
            f"(FFN {c.ffn_size}, {c.num_heads} heads){extra}")


def _compress_keys(keys: Sequence[str]) -> List[str]:
    """Group keys by their first component (``final_proj.weight, final_proj.bias`` -> ``final_proj.*``)."""
    groups: Dict[str, int] = {}
    for key in keys:
        head = key.split(".")[0]
        groups[head] = groups.get(head, 0) + 1
    return [f"{head}.*" if n > 1 or head not in keys else head for head, n in sorted(groups.items())]


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


Rule = Tuple["re.Pattern[str]", str]
# The per-layer key prefix both checkpoint families share (the layer index is the first group).
LAYER_KEY = r"encoder\.layers\.(\d+)\."


def rules(pairs: Sequence[Tuple[str, str]]) -> List[Rule]:
    return [(re.compile(pattern), target) for pattern, target in pairs]


def map_state_dict(weights: Mapping[str, torch.Tensor], rules: Sequence[Rule], ignored: "re.Pattern[str]",
                   source: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename foreign keys to ours. Returns (our state dict, ignored keys).

    Raises ModelFormatError listing keys that match no rule (an architecture we do not know).
    """
    out: Dict[str, torch.Tensor] = {}
    skipped: List[str] = []
    unknown: List[str] = []
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            continue
        for pattern, target in rules:
            if pattern.match(key):
                out[pattern.sub(target, key)] = value
                break
        else:
            (skipped if ignored.match(key) else unknown).append(key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise ModelFormatError(f"{source}: {len(unknown)} weight(s) belong to no part of a wav2vec2-family encoder "
                               f"we know: {shown}")
    # Shapes that differ between conventions.
    for key in list(out):
        if key.endswith("attention.gate_scale"):
            out[key] = out[key].reshape(-1)
    if "pos_conv.weight" in out:  # a checkpoint saved without weight norm
        weight = out.pop("pos_conv.weight")
        out["pos_conv.weight_v"] = weight
        out["pos_conv.weight_g"] = torch.linalg.vector_norm(weight, dim=(0, 1), keepdim=True)
    return out, skipped


def encoder_with_weights(config: EncoderConfig, state: Mapping[str, torch.Tensor], source: str) -> Encoder:
    """An Encoder holding exactly ``state`` (float tensors as float32), built without running the
    random initialisation that the weights would overwrite. Messages name the key and both shapes."""
    with torch.device("meta"):
        skeleton = Encoder(config)
    own = skeleton.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weight(s): {', '.join(missing[:6])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} weight(s): {', '.join(unexpected[:6])}")
        raise ModelFormatError(f"{source}: weights do not match the architecture its config describes; "
                               + "; ".join(parts))
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ModelFormatError(f"{source}: weight '{key}' has shape {list(value.shape)}, the config implies "
                                   f"{list(own[key].shape)}")
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    skeleton.load_state_dict(tensors, strict=True, assign=True)
    return skeleton


def read_safetensors(path: PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a missing, truncated or foreign file is a
    :class:`ModelFormatError` naming it (safetensors' own error names no file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: weights file not found. Fix: check the model directory (export or copy it "
                               "again)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelFormatError(f"{path}: cannot read the weights ({' '.join(str(exc).split())[:200]}; "
                               f"{path.stat().st_size:,} bytes): the file is truncated or not a safetensors file. "
                               "Fix: copy or export the model again (an interrupted copy leaves a short file)") from None
