"""Export an encoder to a Hugging Face directory that ``transformers`` loads (without importing it).

Expressible: the structure of HubertModel (no relative position bias) or WavLMModel (with it):
any CNN (group/layer norm, with or without bias), post- or pre-LN layers, equal heads and FFN
width in every layer. Cyclic layer sharing is unrolled (weights repeated). A student without
a feature projection gets an identity projection (same function, D*D + D more parameters).
Not expressible, so refused: attention-map reuse, adapters, hard-concrete gates (prune first),
pruned per-layer shapes, a folded CNN output scale, WavLM without feature LayerNorm.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Union

import torch

from ..data.tables import replace_dir_atomically
from .config import EncoderConfig
from .encoder import Encoder


class ExportError(ValueError):
    """The model has a part Hugging Face's classes cannot express."""


def uniform_model_problems(c: EncoderConfig) -> List[str]:
    """What a checkpoint format with one plain layer type (same heads and FFN width everywhere, no gates,
    no adapters, no attention reuse) cannot hold: the Hugging Face and the s3prl distiller exports."""
    problems: List[str] = []
    if c.attention_reuse and any(c.attention_reuse):
        problems.append("attention-map reuse (layers without query/key projections)")
    if c.adapter_dim:
        problems.append("parallel adapters")
    if c.prune_conv or c.prune_heads or c.prune_ffn:
        problems.append("hard-concrete gates (call models.prune() first)")
    if c.layer_heads is not None and len(set(c.layer_heads)) > 1 or c.layer_ffn_sizes is not None and len(
            set(c.layer_ffn_sizes)) > 1:
        problems.append("different head counts or FFN widths per layer")
    if c.head_dim is not None and c.head_dim * c.heads_of(0) != c.hidden_size:
        problems.append(f"attention width {c.head_dim * c.heads_of(0)} != hidden_size {c.hidden_size}")
    if c.conv_output_scale:
        problems.append("a per-channel scale after the CNN (pruned CNN)")
    return problems


def _check_expressible(c: EncoderConfig) -> None:
    problems = uniform_model_problems(c)
    if c.relative_position_bias and not c.feature_layer_norm:
        problems.append("WavLM-style model without feature LayerNorm")
    if c.relative_position_bias and c.layer_head_indices is not None:
        problems.append("relative position bias with pruned heads")
    if problems:
        raise ExportError("cannot export to Hugging Face format: " + "; ".join(problems))


def hf_config(c: EncoderConfig) -> Dict[str, Any]:
    """config.json contents for HubertModel (no relative bias) or WavLMModel."""
    model_type = "wavlm" if c.relative_position_bias else "hubert"
    config: Dict[str, Any] = {
        "architectures": ["WavLMModel" if model_type == "wavlm" else "HubertModel"],
        "model_type": model_type,
        "conv_dim": [int(x[0]) for x in c.conv_layers],
        "conv_kernel": [int(x[1]) for x in c.conv_layers],
        "conv_stride": [int(x[2]) for x in c.conv_layers],
        "num_feat_extract_layers": len(c.conv_layers),
        "conv_bias": c.conv_bias,
        "feat_extract_norm": c.conv_norm,
        "feat_extract_activation": "gelu",
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.heads_of(0),
        "intermediate_size": c.ffn_of(0),
        "hidden_act": "gelu",
        "layer_norm_eps": c.layer_norm_eps,
        "do_stable_layer_norm": c.layer_norm_first,
        "num_conv_pos_embeddings": c.pos_conv_kernel,
        "num_conv_pos_embedding_groups": c.pos_conv_groups,
        "hidden_dropout": c.dropout,
        "attention_dropout": c.attention_dropout,
        "activation_dropout": c.activation_dropout,
        "feat_proj_dropout": c.dropout_input,
        "layerdrop": c.layerdrop,
        "mask_time_prob": 0.05 if c.mask_embedding else 0.0,
        "mask_feature_prob": 0.0,
        "apply_spec_augment": c.mask_embedding,
        "dtype": "float32",
    }
    if model_type == "hubert":
        config["feat_proj_layer_norm"] = c.feature_layer_norm
    else:
        config["num_buckets"] = c.num_buckets
        config["max_bucket_distance"] = c.max_distance
    return config


def hf_state_dict(model: Encoder) -> Dict[str, torch.Tensor]:
    """Our weights under HubertModel / WavLMModel names (shared layers unrolled)."""
    c = model.config
    ours = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    out: Dict[str, torch.Tensor] = {}
    for i, block in enumerate(model.feature_extractor.blocks):
        out[f"feature_extractor.conv_layers.{i}.conv.weight"] = ours[f"feature_extractor.blocks.{i}.conv.weight"]
        if block.conv.bias is not None:
            out[f"feature_extractor.conv_layers.{i}.conv.bias"] = ours[f"feature_extractor.blocks.{i}.conv.bias"]
        if block.norm is not None:
            for p in ("weight", "bias"):
                out[f"feature_extractor.conv_layers.{i}.layer_norm.{p}"] = ours[f"feature_extractor.blocks.{i}.norm.{p}"]
    if c.feature_layer_norm:
        for p in ("weight", "bias"):
            out[f"feature_projection.layer_norm.{p}"] = ours[f"feature_norm.{p}"]
    if c.feature_projection:
        for p in ("weight", "bias"):
            out[f"feature_projection.projection.{p}"] = ours[f"feature_projection.{p}"]
    else:  # HF always projects: identity of the same width
        out["feature_projection.projection.weight"] = torch.eye(c.hidden_size)
        out["feature_projection.projection.bias"] = torch.zeros(c.hidden_size)
    if c.mask_embedding:
        out["masked_spec_embed"] = ours["mask_embedding"]
    out["encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = ours["pos_conv.weight_g"]
    out["encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = ours["pos_conv.weight_v"]
    out["encoder.pos_conv_embed.conv.bias"] = ours["pos_conv.bias"]
    for p in ("weight", "bias"):
        out[f"encoder.layer_norm.{p}"] = ours[f"encoder_norm.{p}"]
    if c.relative_position_bias:
        out["encoder.layers.0.attention.rel_attn_embed.weight"] = ours["relative_position_embedding.weight"]
    names = {"attention.q_proj": "attention.q_proj", "attention.k_proj": "attention.k_proj",
             "attention.v_proj": "attention.v_proj", "attention.out_proj": "attention.out_proj",
             "attention_norm": "layer_norm", "feed_forward.fc1": "feed_forward.intermediate_dense",
             "feed_forward.fc2": "feed_forward.output_dense", "final_norm": "final_layer_norm",
             "attention.gate_proj": "attention.gru_rel_pos_linear"}
    for layer in range(c.num_layers):
        unique = c.unique_index(layer)
        for ours_name, hf_name in names.items():
            for p in ("weight", "bias"):
                key = f"layers.{unique}.{ours_name}.{p}"
                if key in ours:
                    out[f"encoder.layers.{layer}.{hf_name}.{p}"] = ours[key].clone()
        if c.relative_position_bias:
            out[f"encoder.layers.{layer}.attention.gru_rel_pos_const"] = \
                ours[f"layers.{unique}.attention.gate_scale"].view(1, -1, 1, 1).clone()
    return {k: v.contiguous() for k, v in out.items()}


def export_hf(model: Encoder, out_dir: Union[str, Path]) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json (atomic directory)."""
    from safetensors.torch import save_file

    _check_expressible(model.config)
    config = hf_config(model.config)
    state = hf_state_dict(model)
    preprocessor = {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
                    "padding_value": 0.0, "padding_side": "right", "do_normalize": model.config.normalize_waveform,
                    "return_attention_mask": model.config.conv_norm == "layer"}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n", encoding="utf-8")

    out = Path(out_dir)
    replace_dir_atomically(out, write)
    return out
