"""Export a DistilHuBERT-family student as the checkpoint s3prl's ``distiller_local`` upstream loads.

The checkpoint is a ``torch.save`` dict of plain values: ``Config`` (``{"distiller": {...}}``, the fields of
s3prl's ``DistillerConfig``) and ``Distiller`` (the state dict of its ``DistillerModel``). s3prl returns, for
a model of L layers, ``hidden_states`` = [the CNN features after the feature projection (before the
positional convolution), the output of each layer 1..L, then one prediction per head target layer].
Against :class:`~.encoder.EncoderOutput`: entry 0 is our ``projected_features``, entries 1..L are our
``hidden_states[1..L]``, the rest are our :class:`~.heads.PredictionHeads` outputs. A student without
heads is written in s3prl's "self-hidden" form, whose predictions repeat entries 0..L.

What s3prl's distiller can hold: a CNN without biases of 320 samples stride (GroupNorm in its first layer, or
LayerNorm in every layer), an optional projection to the model width, post-LN layers of one shape (cyclic sharing is unrolled),
DistilHuBERT's prediction heads on the last layer, LayerNorm eps 1e-5, no waveform normalisation. Everything
else (attention reuse, adapters, relative position bias, a feature LayerNorm, pre-LN layers, per-layer
projection heads, pruned shapes) is refused, naming the ONNX and Hugging Face routes.

s3prl's distiller does not exclude padding from the CNN's GroupNorm statistics, so its hidden states of a
padded batch differ from those of each utterance alone; ours do not (an utterance alone gives the same
values in both).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..data.tables import atomic_output, writable_output_file
from .config import EncoderConfig
from .encoder import Encoder
from .export_hf import uniform_model_problems
from .heads import LayerProjections, PredictionHeads

PathLike = Union[str, os.PathLike]
S3PRL_EPS = 1e-5  # every LayerNorm and GroupNorm of s3prl's distiller uses torch's default eps
S3PRL_FRAME_STRIDE = 320  # samples per frame, as the distiller upstream reports it to s3prl
OTHER_ROUTES = ("export it with `python -m speechdistill.bin.export_onnx` (onnxruntime, any student), or with "
                "`python -m speechdistill.bin.export_hf` where transformers can express it, or load our model "
                "directory in Python with speechdistill.load_model")


class S3prlExportError(ValueError):
    """The student has a part s3prl's distiller cannot express."""


def s3prl_problems(c: EncoderConfig, heads: Optional[nn.Module]) -> List[str]:
    """Why s3prl's ``DistillerModel`` cannot hold this student (empty: it can)."""
    problems = uniform_model_problems(c)
    if c.relative_position_bias:
        problems.append("WavLM's gated relative position bias")
    if c.feature_layer_norm:
        problems.append("a LayerNorm on the CNN features (the distiller projects them directly)")
    if c.layer_norm_first:
        problems.append("pre-LN layers (s3prl returns their outputs before the final LayerNorm)")
    if c.normalize_waveform:
        problems.append("per-utterance waveform normalisation")
    if c.conv_bias:
        problems.append("CNN biases")
    if c.conv_norm not in ("group", "layer"):
        problems.append(f"a CNN with conv_norm {c.conv_norm!r} (the distiller has 'group' or 'layer')")
    if c.feature_projection and c.conv_channels == c.hidden_size:
        problems.append("a feature projection between equal widths (the distiller has none there)")
    stride = math.prod(int(layer[2]) for layer in c.conv_layers)
    if stride != S3PRL_FRAME_STRIDE:
        problems.append(f"a CNN stride of {stride} samples (the distiller upstream reports {S3PRL_FRAME_STRIDE}, "
                        "so s3prl would give wrong frame lengths)")
    if c.layer_norm_eps != S3PRL_EPS:
        problems.append(f"LayerNorm eps {c.layer_norm_eps:g} (the distiller's are {S3PRL_EPS:g})")
    if isinstance(heads, LayerProjections):
        problems.append("per-layer projection heads (the distiller predicts from its last layer only; "
                        "--no-heads writes the encoder alone)")
    elif isinstance(heads, PredictionHeads):
        if list(heads.config.source_layers) != [c.num_layers]:
            problems.append(f"prediction heads on layer {heads.config.source_layers} (the distiller's read the "
                            f"last layer, {c.num_layers})")
    return problems


def distiller_config(c: EncoderConfig, heads: Optional[PredictionHeads]) -> Dict[str, Any]:
    """The ``distiller`` section of the checkpoint's ``Config`` (field names of s3prl's DistillerConfig)."""
    config: Dict[str, Any] = {
        "extractor_mode": "default" if c.conv_norm == "group" else "layer_norm",
        "extractor_conv_feature_layers": str([tuple(int(v) for v in layer) for layer in c.conv_layers]),
        "extractor_dropout": 0.0,
        "feature_grad_mult": float(c.feature_grad_mult),
        "conv_pos": c.pos_conv_kernel,
        "conv_pos_groups": c.pos_conv_groups,
        "encoder_layers": c.num_layers,
        "encoder_embed_dim": c.hidden_size,
        "encoder_ffn_embed_dim": c.ffn_of(0),
        "encoder_attention_heads": c.heads_of(0),
        "activation_fn": "gelu",
        "layer_norm_first": False,
        "attention_type": "original",
        "dropout": c.dropout,
        "attention_dropout": c.attention_dropout,
        "activation_dropout": c.activation_dropout,
        "encoder_layerdrop": c.layerdrop,
    }
    if heads is not None:
        hc = heads.config
        config.update({"final_dim": hc.out_dim, "out_layer_type": "expand-last", "task_emb_type": "expand-last",
                       "out_layer_inter_dim": hc.hidden_dim or hc.in_dim, "n_tasks": len(hc.target_layers),
                       "pred_layer_id": [int(t) for t in hc.target_layers]})
    else:  # predictions = [entry 0, layer 1, ..., layer L]: the form that needs no output layer
        config.update({"final_dim": c.hidden_size, "out_layer_type": "self-hidden", "task_emb_type": "self-hidden",
                       "n_tasks": c.num_layers + 1, "pred_layer_id": list(range(c.num_layers + 1))})
    return config


# Our names -> the distiller's, for the parts outside the layers (CNN norms are added per mode below).
TOP_LEVEL = [(r"^feature_extractor\.blocks\.(\d+)\.conv\.weight$", r"feature_extractor.conv_layers.\1.0.weight"),
             (r"^feature_projection\.(weight|bias)$", r"post_extract_proj.\1"),
             (r"^pos_conv\.(weight_g|weight_v|bias)$", r"encoder.pos_conv.0.\1"),
             (r"^encoder_norm\.(weight|bias)$", r"encoder.layer_norm.\1")]
LAYER_PARTS = [(r"^attention\.(q|k|v|out)_proj\.(weight|bias)$", r"self_attn.\1_proj.\2"),
               (r"^attention_norm\.(weight|bias)$", r"self_attn_layer_norm.\1"),
               (r"^feed_forward\.(fc1|fc2)\.(weight|bias)$", r"\1.\2"),
               (r"^final_norm\.(weight|bias)$", r"final_layer_norm.\1")]
NOT_EXPORTED = re.compile(r"^mask_embedding$")  # (training only: the distiller has no masked input)


def _rename(key: str, rules: List[Tuple[str, str]]) -> Optional[str]:
    for pattern, target in rules:
        if re.match(pattern, key):
            return re.sub(pattern, target, key)
    return None


def distiller_state_dict(encoder: Encoder, heads: Optional[PredictionHeads]) -> Dict[str, torch.Tensor]:
    """Our weights under the names of s3prl's DistillerModel (shared layers unrolled); every weight of ours
    is placed or listed in NOT_EXPORTED, otherwise ValueError."""
    c = encoder.config
    norm_target = (r"feature_extractor.conv_layers.\1.2.\2" if c.conv_norm == "group"
                   else r"feature_extractor.conv_layers.\1.2.1.\2")
    rules = TOP_LEVEL + [(r"^feature_extractor\.blocks\.(\d+)\.norm\.(weight|bias)$", norm_target)]
    ours = {k: v.detach().cpu().float().clone() for k, v in encoder.state_dict().items()}
    out: Dict[str, torch.Tensor] = {}
    placed = set()
    for key, value in ours.items():
        target = _rename(key, rules)
        if target is not None:
            out[target] = value
            placed.add(key)
    for layer in range(c.num_layers):
        prefix = f"layers.{c.unique_index(layer)}."
        for key, value in ours.items():
            target = _rename(key[len(prefix):], LAYER_PARTS) if key.startswith(prefix) else None
            if target is not None:
                out[f"encoder.layers.{layer}.{target}"] = value.clone()
                placed.add(key)
    left = [k for k in ours if k not in placed and not NOT_EXPORTED.match(k)]
    if left:
        raise ValueError(f"s3prl export: no place for {left} in the distiller's state dict")
    if heads is not None:
        hs = {k: v.detach().cpu().float().clone() for k, v in heads.state_dict().items()}
        out["output_layer.0.weight"], out["output_layer.0.bias"] = hs["expand.weight"], hs["expand.bias"]
        weight, bias = hs["split.weight"], hs["split.bias"]  # [K, D_in, D_out], [K, D_out]
        if weight.shape[0] == 1:  # the distiller's SplitLinear of one split is an nn.Linear
            out["output_layer.2.layer.weight"] = weight[0].t()
            out["output_layer.2.layer.bias"] = bias[0]
        else:
            out["output_layer.2.weight"] = weight
            out["output_layer.2.bias"] = bias.reshape(1, 1, *bias.shape)
    return {k: v.contiguous() for k, v in out.items()}


def export_s3prl(encoder: Encoder, out: PathLike, *, heads: Optional[nn.Module] = None) -> Dict[str, Any]:
    """Write ``out`` (a ``torch.save`` checkpoint for s3prl's ``distiller_local``) atomically; returns its
    ``Config``. Raises :class:`S3prlExportError` (naming every obstacle) for a student s3prl cannot express."""
    problems = s3prl_problems(encoder.config, heads)
    if problems:
        raise S3prlExportError("s3prl's distiller cannot express this model: " + "; ".join(problems) + ". "
                               + OTHER_ROUTES)
    writable_output_file(out, "student.ckpt")
    config = {"distiller": distiller_config(encoder.config, heads)}
    checkpoint = {"Config": config, "Distiller": distiller_state_dict(encoder, heads)}
    with atomic_output(out) as staged:
        torch.save(checkpoint, str(staged))
    return config
