"""Imports of fairseq checkpoints (HuBERT, wav2vec 2.0, CTC fine-tuned; WavLM as unilm ships it) and of s3prl
converted checkpoints, read without fairseq (:mod:`.unpickle`). Key maps: spec 00_teachers.md §2-§3."""
from __future__ import annotations

import ast
import re
from typing import Any, List, Mapping, Tuple

import torch

from .config import EncoderConfig
from .encoder import Encoder
from .unpickle import CheckpointUnpicklingError, load_checkpoint, plain
from .weights import (LAYER_KEY, ImportReport, ModelFormatError, count_parameters, encoder_with_weights, map_state_dict,
                      rules)

FAIRSEQ_RULES = rules([
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.blocks.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)$", r"feature_extractor.blocks.\1.norm.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$", r"feature_extractor.blocks.\1.norm.\2"),
    (r"^layer_norm\.(weight|bias)$", r"feature_norm.\1"),
    (r"^post_extract_proj\.(weight|bias)$", r"feature_projection.\1"),
    (r"^mask_emb$", "mask_embedding"),
    (r"^encoder\.pos_conv\.0\.(weight_g|weight_v|bias)$", r"pos_conv.\1"),
    (r"^encoder\.pos_conv\.0\.parametrizations\.weight\.original0$", "pos_conv.weight_g"),
    (r"^encoder\.pos_conv\.0\.parametrizations\.weight\.original1$", "pos_conv.weight_v"),
    (r"^encoder\.pos_conv\.0\.weight$", "pos_conv.weight"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder_norm.\1"),
    (r"^encoder\.layers\.0\.self_attn\.relative_attention_bias\.weight$", "relative_position_embedding.weight"),
    (LAYER_KEY + r"self_attn\.(q|k|v|out)_proj\.(weight|bias)$", r"layers.\1.attention.\2_proj.\3"),
    (LAYER_KEY + r"self_attn\.grep_linear\.(weight|bias)$", r"layers.\1.attention.gate_proj.\2"),
    (LAYER_KEY + r"self_attn\.grep_a$", r"layers.\1.attention.gate_scale"),
    (LAYER_KEY + r"self_attn_layer_norm\.(weight|bias)$", r"layers.\1.attention_norm.\2"),
    (LAYER_KEY + r"fc1\.(weight|bias)$", r"layers.\1.feed_forward.fc1.\2"),
    (LAYER_KEY + r"fc2\.(weight|bias)$", r"layers.\1.feed_forward.fc2.\2"),
    (LAYER_KEY + r"final_layer_norm\.(weight|bias)$", r"layers.\1.final_norm.\2"),
])
# Pretraining / fine-tuning heads that are not part of the encoder.
FAIRSEQ_IGNORED = re.compile(r"^(final_proj|label_embs_concat|quantizer|project_q|target_glu|input_quantizer|"
                             r"project_inp|w2v_encoder\.proj|decoder)(\.|$)")


def parse_conv_layers(text: str, source: str = "conv_feature_layers") -> List[List[int]]:
    """Evaluate fairseq's ``"[(512, 10, 5)] + [(512, 3, 2)] * 4 + ..."`` without ``eval``."""
    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [evaluate(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = evaluate(node.left), evaluate(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(ast.dump(node))

    try:
        layers = evaluate(ast.parse(str(text), mode="eval"))
        result = [[int(v) for v in layer] for layer in layers]
        if not result or any(len(layer) != 3 for layer in result):
            raise ValueError("entries must be (channels, kernel, stride)")
        return result
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ModelFormatError(f"{source}: cannot read the CNN description {text!r} ({exc})") from None


def config_from_fairseq(model_cfg: Mapping[str, Any], weights: Mapping[str, torch.Tensor], *, normalize: bool,
                        source: str, notes: List[str]) -> EncoderConfig:
    """EncoderConfig from a fairseq/s3prl/unilm model config (missing keys take fairseq defaults)."""
    def get(key: str, default: Any) -> Any:
        value = model_cfg.get(key, default)
        return default if value is None else value

    activation = get("activation_fn", "gelu")
    if activation != "gelu":
        raise ModelFormatError(f"{source}: activation_fn '{activation}' is not supported (only gelu)")
    if int(get("pos_conv_depth", 1)) != 1:
        raise ModelFormatError(f"{source}: pos_conv_depth {model_cfg.get('pos_conv_depth')} (data2vec-style "
                               "positional convolution stack) is not supported")
    if get("layer_type", "transformer") != "transformer":
        raise ModelFormatError(f"{source}: layer_type '{model_cfg.get('layer_type')}' is not supported")
    mode = get("extractor_mode", "default")
    if mode not in ("default", "layer_norm"):
        raise ModelFormatError(f"{source}: extractor_mode '{mode}' is not supported (default or layer_norm)")
    relative = bool(get("relative_position_embedding", False))
    if relative and not bool(get("gru_rel_pos", False)):
        raise ModelFormatError(f"{source}: relative position embedding without gating (gru_rel_pos false) "
                               "is not supported")
    if relative and "max_distance" not in model_cfg:
        notes.append("config has no max_distance; used the WavLM code default 1280")
    conv_text = get("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2")
    conv_layers = parse_conv_layers(conv_text, f"{source}: conv_feature_layers") if isinstance(conv_text, str) \
        else [[int(v) for v in layer] for layer in conv_text]
    hidden = int(get("encoder_embed_dim", 768))
    return EncoderConfig(
        conv_layers=conv_layers,
        conv_norm="group" if mode == "default" else "layer",
        conv_bias=bool(get("conv_bias", False)),
        feature_grad_mult=float(get("feature_grad_mult", 1.0)),
        normalize_waveform=bool(normalize),
        feature_layer_norm="layer_norm.weight" in weights,
        feature_projection="post_extract_proj.weight" in weights,
        dropout_input=float(get("dropout_input", 0.0)),
        mask_embedding="mask_emb" in weights,
        pos_conv_kernel=int(get("conv_pos", 128)),
        pos_conv_groups=int(get("conv_pos_groups", 16)),
        hidden_size=hidden,
        num_layers=int(get("encoder_layers", 12)),
        num_heads=int(get("encoder_attention_heads", 12)),
        ffn_size=int(get("encoder_ffn_embed_dim", 3072)),
        layer_norm_first=bool(get("layer_norm_first", False)),
        dropout=float(get("dropout", 0.1)),
        attention_dropout=float(get("attention_dropout", 0.1)),
        activation_dropout=float(get("activation_dropout", 0.0)),
        layerdrop=0.0,  # never drop teacher layers
        relative_position_bias=relative,
        num_buckets=int(get("num_buckets", 320)),
        max_distance=int(get("max_distance", 1280)),
    )


def _fairseq_architecture(model_cfg: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> str:
    if model_cfg.get("relative_position_embedding") or any("grep_linear" in k for k in weights):
        return "wavlm"
    name = str(model_cfg.get("_name") or model_cfg.get("arch") or "")
    if "hubert" in name or "label_embs_concat" in weights:
        return "hubert"
    if "wav2vec" in name or any(k.startswith("quantizer.") for k in weights):
        return "wav2vec2"
    return "wav2vec2-family"


def _import_fairseq_like(path: str, weights: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any],
                         normalize: bool, fmt: str) -> Tuple[Encoder, ImportReport]:
    notes: List[str] = []
    prefix = "w2v_encoder.w2v_model."
    if any(k.startswith(prefix) for k in weights):  # CTC fine-tuned: the encoder sits under this prefix
        weights = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in weights.items()}
        notes.append("fine-tuned checkpoint: encoder taken from w2v_encoder.w2v_model, CTC projection ignored")
    config = config_from_fairseq(model_cfg, weights, normalize=normalize, source=path, notes=notes)
    state, ignored = map_state_dict(weights, FAIRSEQ_RULES, FAIRSEQ_IGNORED, path)
    model = encoder_with_weights(config, state, path)
    report = ImportReport(path=path, format=fmt, architecture=_fairseq_architecture(model_cfg, weights),
                          config=config, num_params=count_parameters(model), ignored_keys=ignored, notes=notes)
    return model.eval(), report


def import_pickled(path: str) -> Tuple[Encoder, ImportReport]:
    try:
        data = load_checkpoint(path)
    except CheckpointUnpicklingError as exc:
        raise ModelFormatError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 -- any failure here means "not a PyTorch checkpoint"
        with open(path, "rb") as handle:
            head = handle.read(16)
        raise ModelFormatError(f"{path}: not a PyTorch checkpoint we can read ({type(exc).__name__}: {exc}; "
                               f"first bytes {head!r}). Expected a fairseq .pt, an s3prl converted "
                               "checkpoint, a Hugging Face directory or our model directory") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: the checkpoint holds a {type(data).__name__}, not a dict; expected a "
                               "fairseq/s3prl checkpoint dict")
    keys = sorted(str(k) for k in data)
    if "model_weight" in data and "model_cfg" in data:
        model_cfg = plain(data["model_cfg"]) or {}
        task_cfg = plain(data.get("task_cfg")) or {}
        return _import_fairseq_like(path, data["model_weight"], model_cfg,
                                    bool(task_cfg.get("normalize", False)), "s3prl")
    if "model" in data and ("cfg" in data or "args" in data):
        cfg = plain(data.get("cfg")) if data.get("cfg") is not None else plain(data.get("args"))
        cfg = cfg or {}
        if "model" in cfg and isinstance(cfg["model"], dict):  # fairseq >= 0.10: {"model": ..., "task": ...}
            model_cfg = dict(cfg["model"])
            task_cfg = cfg.get("task") or {}
            w2v_args = model_cfg.get("w2v_args")
            if isinstance(w2v_args, dict) and isinstance(w2v_args.get("model"), dict):
                model_cfg = dict(w2v_args["model"])
                task_cfg = w2v_args.get("task") or task_cfg
            normalize = bool((task_cfg or {}).get("normalize", model_cfg.get("normalize", False)))
        else:  # unilm WavLM (flat model config) or argparse-era fairseq (flat args)
            model_cfg = cfg
            normalize = bool(cfg.get("normalize", False))
        weights = data["model"]
        if not isinstance(weights, dict):
            raise ModelFormatError(f"{path}: 'model' holds a {type(weights).__name__}, expected a state dict")
        return _import_fairseq_like(path, weights, model_cfg, normalize, "fairseq")
    hint = ""
    if "state_dict" in data and "config" in data:
        hint = " (this looks like a torchaudio-style checkpoint, e.g. DPHuBERT's; convert it to Hugging Face format)"
    elif any(k in data for k in ("Distiller", "Upstream_Config")):
        hint = " (this looks like an s3prl distiller training checkpoint, which holds a student, not a teacher)"
    elif all(isinstance(v, torch.Tensor) for v in data.values()):
        hint = " (a bare state dict: its architecture is unknown; save it with a config as a Hugging Face directory)"
    raise ModelFormatError(f"{path}: unrecognised checkpoint with top-level keys {keys[:12]}{hint}. Expected a "
                           "fairseq checkpoint {'cfg' or 'args', 'model'}, an s3prl converted checkpoint "
                           "{'model_cfg', 'model_weight', 'task_cfg'}, a Hugging Face directory or our model "
                           "directory")
