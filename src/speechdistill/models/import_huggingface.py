"""Imports of Hugging Face directories: HubertModel, Wav2Vec2Model, WavLMModel and their *ForCTC /
*ForPreTraining / *ForSequenceClassification wrappers (prefix ``hubert.`` etc.), sharded or not. Key map:
spec 00_teachers.md §4."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch

from .config import BASE_CONV_LAYERS, EncoderConfig
from .encoder import Encoder
from .weights import (LAYER_KEY, ImportReport, ModelFormatError, count_parameters, encoder_with_weights, map_state_dict,
                      read_safetensors, rules)

HF_RULES = rules([
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)$", r"feature_extractor.blocks.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)$", r"feature_extractor.blocks.\1.norm.\2"),
    (r"^feature_projection\.layer_norm\.(weight|bias)$", r"feature_norm.\1"),
    (r"^feature_projection\.projection\.(weight|bias)$", r"feature_projection.\1"),
    (r"^masked_spec_embed$", "mask_embedding"),
    (r"^encoder\.pos_conv_embed\.conv\.(weight_g|weight_v|bias)$", r"pos_conv.\1"),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", "pos_conv.weight_g"),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", "pos_conv.weight_v"),
    (r"^encoder\.pos_conv_embed\.conv\.weight$", "pos_conv.weight"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder_norm.\1"),
    (r"^encoder\.layers\.0\.attention\.rel_attn_embed\.weight$", "relative_position_embedding.weight"),
    (LAYER_KEY + r"attention\.(q|k|v|out)_proj\.(weight|bias)$", r"layers.\1.attention.\2_proj.\3"),
    (LAYER_KEY + r"attention\.gru_rel_pos_linear\.(weight|bias)$", r"layers.\1.attention.gate_proj.\2"),
    (LAYER_KEY + r"attention\.gru_rel_pos_const$", r"layers.\1.attention.gate_scale"),
    (LAYER_KEY + r"layer_norm\.(weight|bias)$", r"layers.\1.attention_norm.\2"),
    (LAYER_KEY + r"feed_forward\.intermediate_dense\.(weight|bias)$", r"layers.\1.feed_forward.fc1.\2"),
    (LAYER_KEY + r"feed_forward\.output_dense\.(weight|bias)$", r"layers.\1.feed_forward.fc2.\2"),
    (LAYER_KEY + r"final_layer_norm\.(weight|bias)$", r"layers.\1.final_norm.\2"),
])
HF_BASE_PREFIXES = ("hubert.", "wav2vec2.", "wavlm.")
HF_MODEL_TYPES = ("hubert", "wav2vec2", "wavlm")


def _read_hf_weights(directory: Path) -> Dict[str, torch.Tensor]:
    for index_name, loader in (("model.safetensors.index.json", "safetensors"),
                               ("pytorch_model.bin.index.json", "bin")):
        index_path = directory / index_name
        if index_path.is_file():
            shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
            weights: Dict[str, torch.Tensor] = {}
            for shard in shards:
                shard_path = directory / shard
                weights.update(read_safetensors(shard_path) if loader == "safetensors"
                               else torch.load(shard_path, map_location="cpu", weights_only=True))
            return weights
    if (directory / "model.safetensors").is_file():
        return read_safetensors(directory / "model.safetensors")
    if (directory / "pytorch_model.bin").is_file():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ModelFormatError(f"{directory}: Hugging Face directory without weights; expected model.safetensors or "
                           "pytorch_model.bin (or a sharded index) next to config.json")


def config_from_hf(cfg: Mapping[str, Any], weights: Mapping[str, torch.Tensor], *, normalize: bool,
                   source: str) -> EncoderConfig:
    model_type = cfg.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ModelFormatError(f"{source}: model_type '{model_type}' is not a wav2vec2-family encoder we import "
                               f"({', '.join(HF_MODEL_TYPES)})")
    for key, bad in (("conv_pos_batch_norm", True), ("add_adapter", True)):
        if cfg.get(key) == bad:
            raise ModelFormatError(f"{source}: {key}={bad} is not supported")
    if cfg.get("adapter_attn_dim"):
        raise ModelFormatError(f"{source}: adapter_attn_dim (attention adapters) is not supported")
    for key in ("hidden_act", "feat_extract_activation"):
        if cfg.get(key, "gelu") != "gelu":
            raise ModelFormatError(f"{source}: {key} '{cfg.get(key)}' is not supported (only gelu)")
    conv_dim = cfg.get("conv_dim", [row[0] for row in BASE_CONV_LAYERS])
    conv_kernel = cfg.get("conv_kernel", [row[1] for row in BASE_CONV_LAYERS])
    conv_stride = cfg.get("conv_stride", [row[2] for row in BASE_CONV_LAYERS])
    if not len(conv_dim) == len(conv_kernel) == len(conv_stride):
        raise ModelFormatError(f"{source}: conv_dim, conv_kernel and conv_stride have different lengths")
    feature_ln = cfg.get("feat_proj_layer_norm", True) if model_type == "hubert" else True
    return EncoderConfig(
        conv_layers=[[int(d), int(k), int(s)] for d, k, s in zip(conv_dim, conv_kernel, conv_stride)],
        conv_norm=cfg.get("feat_extract_norm", "group"),
        conv_bias=bool(cfg.get("conv_bias", False)),
        normalize_waveform=normalize,
        feature_layer_norm=bool(feature_ln),
        feature_projection=True,
        dropout_input=float(cfg.get("feat_proj_dropout", 0.0)),
        mask_embedding="masked_spec_embed" in weights,
        pos_conv_kernel=int(cfg.get("num_conv_pos_embeddings", 128)),
        pos_conv_groups=int(cfg.get("num_conv_pos_embedding_groups", 16)),
        hidden_size=int(cfg.get("hidden_size", 768)),
        num_layers=int(cfg.get("num_hidden_layers", 12)),
        num_heads=int(cfg.get("num_attention_heads", 12)),
        ffn_size=int(cfg.get("intermediate_size", 3072)),
        layer_norm_first=bool(cfg.get("do_stable_layer_norm", False)),
        layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
        dropout=float(cfg.get("hidden_dropout", 0.1)),
        attention_dropout=float(cfg.get("attention_dropout", 0.1)),
        activation_dropout=float(cfg.get("activation_dropout", 0.1)),
        layerdrop=0.0,
        relative_position_bias=model_type == "wavlm",
        num_buckets=int(cfg.get("num_buckets", 320)),
        max_distance=int(cfg.get("max_bucket_distance", 800)),
    )


def import_hf(directory: Path) -> Tuple[Encoder, ImportReport]:
    source = str(directory)
    try:
        cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{directory / 'config.json'}: not valid JSON ({exc})") from None
    raw = _read_hf_weights(directory)
    base: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    for key, value in raw.items():
        for prefix in HF_BASE_PREFIXES:
            if key.startswith(prefix):
                base[key[len(prefix):]] = value
                break
        else:
            base[key] = value
    prefixed = any(k.startswith(HF_BASE_PREFIXES) for k in raw)
    if prefixed:  # a task wrapper: everything outside the base model is a head
        ignored = [k for k in raw if not k.startswith(HF_BASE_PREFIXES)]
        base = {k: v for k, v in base.items() if k not in ignored}
    normalize = False
    notes: List[str] = []
    preprocessor = directory / "preprocessor_config.json"
    if preprocessor.is_file():
        normalize = bool(json.loads(preprocessor.read_text(encoding="utf-8")).get("do_normalize", False))
        if normalize:
            notes.append("preprocessor_config.json has do_normalize: waveforms are normalised per utterance")
    config = config_from_hf(cfg, base, normalize=normalize, source=source)
    state, skipped = map_state_dict(base, HF_RULES, re.compile(r"^(quantizer|project_hid|project_q|lm_head|"
                                                               r"projector|classifier|layer_weights)(\.|$)"),
                                    source)
    model = encoder_with_weights(config, state, source)
    report = ImportReport(path=source, format="huggingface", architecture=str(cfg["model_type"]), config=config,
                          num_params=count_parameters(model), ignored_keys=ignored + skipped, notes=notes)
    return model.eval(), report
