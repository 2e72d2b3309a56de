"""Model directories (ours) and imports of foreign teacher checkpoints.

``load_model(path)`` accepts
  * our model directory: ``config.yaml`` + ``model.safetensors`` (no pickle);
  * a Hugging Face directory: ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``
    (or their sharded index) of HubertModel, Wav2Vec2Model, WavLMModel and their *ForCTC /
    *ForPreTraining / *ForSequenceClassification wrappers (prefix ``hubert.`` etc.);
  * a fairseq ``.pt`` (HuBERT, wav2vec 2.0, also CTC fine-tuned; WavLM as unilm ships it,
    ``{"cfg", "model"}``) -- read without fairseq through ``unpickle.load_checkpoint``;
  * an s3prl converted checkpoint ``{"task_cfg", "model_cfg", "model_weight", ...}``.
The format is detected from the path; anything else is a ``ModelFormatError`` that says what
was found. Key maps are spec 00_teachers.md §2-§4; weight norm is accepted both as
``weight_g/weight_v`` and as ``parametrizations.weight.original0/1``.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import yaml

from ..config import ConfigError, to_dict
from .config import BASE_CONV_LAYERS, EncoderConfig
from .encoder import Encoder
from .unpickle import CheckpointUnpicklingError, load_checkpoint, plain

PathLike = Union[str, os.PathLike]
FORMAT_NAME = "speechdistill-encoder"
FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
HEADS_WEIGHTS_FILE = "heads.safetensors"


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


# ---------------------------------------------------------------------------------------------
# Key maps: foreign name -> our name
# ---------------------------------------------------------------------------------------------

Rule = Tuple["re.Pattern[str]", str]


def _rules(pairs: Sequence[Tuple[str, str]]) -> List[Rule]:
    return [(re.compile(pattern), target) for pattern, target in pairs]


_LAYER = r"encoder\.layers\.(\d+)\."
FAIRSEQ_RULES = _rules([
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
    (_LAYER + r"self_attn\.(q|k|v|out)_proj\.(weight|bias)$", r"layers.\1.attention.\2_proj.\3"),
    (_LAYER + r"self_attn\.grep_linear\.(weight|bias)$", r"layers.\1.attention.gate_proj.\2"),
    (_LAYER + r"self_attn\.grep_a$", r"layers.\1.attention.gate_scale"),
    (_LAYER + r"self_attn_layer_norm\.(weight|bias)$", r"layers.\1.attention_norm.\2"),
    (_LAYER + r"fc1\.(weight|bias)$", r"layers.\1.feed_forward.fc1.\2"),
    (_LAYER + r"fc2\.(weight|bias)$", r"layers.\1.feed_forward.fc2.\2"),
    (_LAYER + r"final_layer_norm\.(weight|bias)$", r"layers.\1.final_norm.\2"),
])
# Pretraining / fine-tuning heads that are not part of the encoder.
FAIRSEQ_IGNORED = re.compile(r"^(final_proj|label_embs_concat|quantizer|project_q|target_glu|input_quantizer|"
                             r"project_inp|w2v_encoder\.proj|decoder)(\.|$)")

HF_RULES = _rules([
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
    (_LAYER + r"attention\.(q|k|v|out)_proj\.(weight|bias)$", r"layers.\1.attention.\2_proj.\3"),
    (_LAYER + r"attention\.gru_rel_pos_linear\.(weight|bias)$", r"layers.\1.attention.gate_proj.\2"),
    (_LAYER + r"attention\.gru_rel_pos_const$", r"layers.\1.attention.gate_scale"),
    (_LAYER + r"layer_norm\.(weight|bias)$", r"layers.\1.attention_norm.\2"),
    (_LAYER + r"feed_forward\.intermediate_dense\.(weight|bias)$", r"layers.\1.feed_forward.fc1.\2"),
    (_LAYER + r"feed_forward\.output_dense\.(weight|bias)$", r"layers.\1.feed_forward.fc2.\2"),
    (_LAYER + r"final_layer_norm\.(weight|bias)$", r"layers.\1.final_norm.\2"),
])
HF_BASE_PREFIXES = ("hubert.", "wav2vec2.", "wavlm.")
HF_MODEL_TYPES = ("hubert", "wav2vec2", "wavlm")


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


# ---------------------------------------------------------------------------------------------
# fairseq / s3prl / unilm configs
# ---------------------------------------------------------------------------------------------

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


def _import_pickled(path: str) -> Tuple[Encoder, ImportReport]:
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


# ---------------------------------------------------------------------------------------------
# Hugging Face directories
# ---------------------------------------------------------------------------------------------

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


def _import_hf(directory: Path) -> Tuple[Encoder, ImportReport]:
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


# ---------------------------------------------------------------------------------------------
# Our format
# ---------------------------------------------------------------------------------------------

def read_model_config(directory: PathLike) -> Dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ModelFormatError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ModelFormatError(f"{path}: not a {FORMAT_NAME} config (missing 'format: {FORMAT_NAME}')")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFormatError(f"{path}: format_version {data.get('format_version')} is newer than this "
                               f"speechdistill ({FORMAT_VERSION}); upgrade speechdistill")
    return data


def _import_ours(directory: Path) -> Tuple[Encoder, ImportReport]:
    data = read_model_config(directory)
    try:
        config = EncoderConfig.from_dict(data.get("encoder") or {}, where=f"{directory / CONFIG_FILE}: encoder")
    except ConfigError as exc:
        raise ModelFormatError(str(exc)) from None
    model = encoder_with_weights(config, read_safetensors(directory / WEIGHTS_FILE), str(directory / WEIGHTS_FILE))
    source = data.get("source") or {}
    report = ImportReport(path=str(directory), format="ours",
                          architecture=str(source.get("architecture", "speechdistill")), config=config,
                          num_params=count_parameters(model))
    return model.eval(), report


def detect_format(path: PathLike) -> str:
    """'ours', 'huggingface' or 'checkpoint' (a pickled file: fairseq or s3prl, told apart on load)."""
    p = Path(path)
    if not p.exists():
        raise ModelFormatError(f"{p}: no such file or directory")
    if p.is_dir():
        names = sorted(x.name for x in p.iterdir())
        if CONFIG_FILE in names:
            if WEIGHTS_FILE not in names:
                raise ModelFormatError(f"{p}: has {CONFIG_FILE} but no {WEIGHTS_FILE}; the model directory is "
                                       "incomplete (re-run the stage that wrote it)")
            return "ours"
        if "config.json" in names:
            return "huggingface"
        raise ModelFormatError(f"{p}: a directory with neither {CONFIG_FILE} (our format) nor config.json "
                               f"(Hugging Face); it contains {names[:10]}")
    if p.suffix in (".safetensors", ".yaml", ".yml", ".json"):
        raise ModelFormatError(f"{p}: a lone {p.suffix} file is not a model; point to the directory that holds "
                               "the config and the weights together")
    return "checkpoint"


def import_model(path: PathLike) -> Tuple[Encoder, ImportReport]:
    """Load any supported model (see module docstring); returns the encoder in eval mode and a report."""
    fmt = detect_format(path)
    p = Path(path)
    if fmt == "ours":
        return _import_ours(p)
    if fmt == "huggingface":
        return _import_hf(p)
    return _import_pickled(str(p))


def load_model(path: PathLike) -> Encoder:
    """Our model directory, a Hugging Face directory, a fairseq .pt or an s3prl converted checkpoint
    -> ``Encoder`` (eval mode; call ``.train()`` to train it)."""
    return import_model(path)[0]


def write_directory_atomically(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary sibling directory, then move it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=str(out_dir.parent)))
    try:
        write(tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=str(out_dir.parent)))
            os.replace(out_dir, old / "previous")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model(model: Encoder, out_dir: PathLike, *, heads: Optional[torch.nn.Module] = None,
               source: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``config.yaml`` + ``model.safetensors`` (+ ``heads.safetensors`` when heads are given).

    The directory appears complete or not at all (written under a temporary name, then renamed).
    ``source`` is free-form provenance stored in config.yaml (e.g. the imported path and format).
    """
    from safetensors.torch import save_file

    if not isinstance(model, Encoder):
        raise TypeError(f"save_model expects an Encoder, got {type(model).__name__}")
    out = Path(out_dir)
    document: Dict[str, Any] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                "encoder": to_dict(model.config)}
    if source:
        document["source"] = dict(source)
    if heads is not None:
        from .heads import heads_config
        document["heads"] = heads_config(heads)

    def write(tmp: Path) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        if heads is not None:
            head_state = {k: v.detach().to("cpu").contiguous() for k, v in heads.state_dict().items()}
            save_file(head_state, str(tmp / HEADS_WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=None),
                                       encoding="utf-8")

    write_directory_atomically(out, write)
    return out


def load_heads(directory: PathLike) -> Optional[torch.nn.Module]:
    """The target-mapping heads saved next to a model (None when the directory has none)."""
    from .heads import build_heads

    data = read_model_config(directory)
    if not data.get("heads"):
        return None
    heads = build_heads(data["heads"], where=f"{Path(directory) / CONFIG_FILE}: heads")
    heads.load_state_dict(read_safetensors(Path(directory) / HEADS_WEIGHTS_FILE), strict=True)
    return heads
