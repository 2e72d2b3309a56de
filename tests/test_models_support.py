"""Helpers shared by the model tests: transformers reference models with every parameter randomised,
and writers of fairseq / unilm / s3prl shaped checkpoints built from the key tables of
specs/methods/00_teachers.md (written here independently of speechdistill's importer).

The few tests at the bottom check the helpers themselves.
"""
from __future__ import annotations

import sys
import types
from typing import Any, Dict, List, Tuple

import pytest
import torch

SMALL = dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=96,
             conv_dim=[32, 32, 32], conv_kernel=[10, 3, 2], conv_stride=[5, 2, 2],
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
SMALL_LARGE_STYLE = dict(SMALL, do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True)
SMALL_WAVLM = dict(SMALL, num_buckets=32, max_bucket_distance=40)


def batch(lengths: List[int], seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random waveforms of the given lengths, zero-padded: (wavs [B, max(lengths)], lengths [B])."""
    g = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wavs[i, :n] = torch.randn(n, generator=g)
    return wavs, torch.tensor(lengths)


def hf_model(kind: str, fast_init: bool = False, **config: Any) -> torch.nn.Module:
    """A transformers HubertModel / Wav2Vec2Model / WavLMModel in eval mode with all parameters random.

    ``fast_init`` skips transformers' initialisation and draws every parameter here (full-size
    models: their init is most of a test's time)."""
    from transformers import (HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model, WavLMConfig,
                              WavLMModel)
    classes = {"hubert": (HubertConfig, HubertModel), "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
               "wavlm": (WavLMConfig, WavLMModel)}
    config_class, model_class = classes[kind]
    if not fast_init:
        model = model_class(config_class(**config)).eval()
        perturb_(model)
        return model
    from transformers.initialization import no_init_weights
    with no_init_weights():
        model = model_class(config_class(**config)).eval()
    draw_(model)
    return model


@torch.no_grad()
def draw_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values for every parameter of an uninitialised transformers model."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    for name, p in params.items():
        if name.endswith("original1") or name.endswith("weight_v"):  # positional conv direction
            p.normal_(0.0, (4.0 / (p.shape[-1] * p.shape[0])) ** 0.5, generator=generator)
        elif name.endswith("original0") or name.endswith("weight_g"):
            continue  # set from the direction below
        elif name.endswith("bias"):
            p.normal_(0.0, 0.1, generator=generator)
        elif "norm" in name or "gru_rel_pos_const" in name:
            p.normal_(1.0, 0.1, generator=generator)
        elif "conv_layers" in name:  # CNN kernels: variance-preserving
            p.normal_(0.0, (2.0 / (p.shape[1] * p.shape[2])) ** 0.5, generator=generator)
        elif "rel_attn_embed" in name or "masked_spec_embed" in name:
            p.normal_(0.0, 1.0, generator=generator)
        else:
            p.normal_(0.0, 0.02, generator=generator)
    for name, p in params.items():
        if name.endswith("original0") or name.endswith("weight_g"):
            direction = params[name[:-1] + "1"] if name.endswith("original0") else params[name[:-1] + "v"]
            p.copy_(torch.linalg.vector_norm(direction, dim=(0, 1), keepdim=True)
                    * (1 + 0.1 * torch.randn(p.shape, generator=generator)))


@torch.no_grad()
def perturb_(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter away from its default init (LayerNorm/GroupNorm gains, biases, gates, ...);
    the weight matrices are already random."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias") or "norm" in name or "gru_rel_pos_const" in name:
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
        elif "rel_attn_embed" in name or "masked_spec_embed" in name:
            p.copy_(torch.randn(p.shape, generator=generator))
        elif "original0" in name or name.endswith("weight_g"):
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=generator))


def hf_hidden_states(model: torch.nn.Module, wav: torch.Tensor) -> List[torch.Tensor]:
    """transformers' hidden states for one unpadded utterance [T]; the last entry is
    ``last_hidden_state`` (after the final LayerNorm for pre-LN models)."""
    with torch.no_grad():
        out = model(wav[None], output_hidden_states=True)
    states = [h[0] for h in out.hidden_states]
    states[-1] = out.last_hidden_state[0]
    return states


def max_diff_per_utterance(ours_out: Any, model: torch.nn.Module, wavs: torch.Tensor,
                           lengths: torch.Tensor) -> List[float]:
    """Largest |ours - transformers| over all hidden states and valid frames, per utterance
    (transformers runs each utterance alone, unpadded)."""
    result = []
    for b in range(wavs.shape[0]):
        reference = hf_hidden_states(model, wavs[b, :int(lengths[b])])
        frames = int(ours_out.lengths[b])
        assert frames == reference[0].shape[0]
        assert len(ours_out.hidden_states) == len(reference)
        result.append(max(float((ours[b, :frames] - ref).abs().max())
                          for ours, ref in zip(ours_out.hidden_states, reference)))
    return result


# ---------------------------------------------------------------------------------------------
# Hugging Face -> fairseq names (spec 00 §2 and §4 tables, reversed)
# ---------------------------------------------------------------------------------------------

def fairseq_state(hf_state: Dict[str, torch.Tensor], *, layer_norm_cnn: bool,
                  parametrized_weight_norm: bool = False) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        k = key
        if k.startswith("feature_extractor.conv_layers."):
            parts = k.split(".")  # feature_extractor conv_layers i conv|layer_norm weight|bias
            i, module, param = parts[2], parts[3], parts[4]
            if module == "conv":
                k = f"feature_extractor.conv_layers.{i}.0.{param}"
            else:
                k = f"feature_extractor.conv_layers.{i}.2.1.{param}" if layer_norm_cnn else \
                    f"feature_extractor.conv_layers.{i}.2.{param}"
        elif k.startswith("feature_projection.layer_norm."):
            k = k.replace("feature_projection.layer_norm.", "layer_norm.")
        elif k.startswith("feature_projection.projection."):
            k = k.replace("feature_projection.projection.", "post_extract_proj.")
        elif k == "masked_spec_embed":
            k = "mask_emb"
        elif k.startswith("encoder.pos_conv_embed.conv."):
            rest = k[len("encoder.pos_conv_embed.conv."):]
            if not parametrized_weight_norm:
                rest = {"parametrizations.weight.original0": "weight_g",
                        "parametrizations.weight.original1": "weight_v"}.get(rest, rest)
            k = "encoder.pos_conv.0." + rest
        elif k.startswith("encoder.layers."):
            k = (k.replace(".attention.rel_attn_embed.", ".self_attn.relative_attention_bias.")
                 .replace(".attention.gru_rel_pos_linear.", ".self_attn.grep_linear.")
                 .replace(".attention.gru_rel_pos_const", ".self_attn.grep_a")
                 .replace(".attention.", ".self_attn.")
                 .replace(".layer_norm.", ".self_attn_layer_norm.")
                 .replace(".feed_forward.intermediate_dense.", ".fc1.")
                 .replace(".feed_forward.output_dense.", ".fc2."))
        out[k] = value.clone()
    return out


def fairseq_model_cfg(hf_config: Any, *, wavlm: bool = False) -> Dict[str, Any]:
    layers = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in zip(hf_config.conv_dim, hf_config.conv_kernel,
                                                                  hf_config.conv_stride))
    cfg = {
        "_name": "wavlm" if wavlm else "hubert",
        "extractor_mode": "layer_norm" if hf_config.feat_extract_norm == "layer" else "default",
        "conv_feature_layers": layers,
        "conv_bias": hf_config.conv_bias,
        "encoder_layers": hf_config.num_hidden_layers,
        "encoder_embed_dim": hf_config.hidden_size,
        "encoder_ffn_embed_dim": hf_config.intermediate_size,
        "encoder_attention_heads": hf_config.num_attention_heads,
        "activation_fn": "gelu",
        "layer_norm_first": hf_config.do_stable_layer_norm,
        "conv_pos": hf_config.num_conv_pos_embeddings,
        "conv_pos_groups": hf_config.num_conv_pos_embedding_groups,
        "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.05,
        "dropout_input": 0.1, "feature_grad_mult": 0.1, "mask_prob": 0.8, "mask_length": 10,
    }
    if wavlm:
        cfg.update(relative_position_embedding=True, num_buckets=hf_config.num_buckets,
                   max_distance=hf_config.max_bucket_distance, gru_rel_pos=True)
    return cfg


# ---------------------------------------------------------------------------------------------
# omegaconf / fairseq look-alikes, so a checkpoint can reference their classes by name
# ---------------------------------------------------------------------------------------------

def fake_omegaconf_classes() -> Tuple[Dict[str, types.ModuleType], Any]:
    """Modules ``omegaconf.{dictconfig,listconfig,nodes,base}`` and ``fairseq.dataclass.constants``
    with classes that pickle like omegaconf's (state with ``_content`` / ``_val`` / ``_parent``)
    and like an Enum (``Class(value)``). Returns (modules by name, to_config function)."""
    modules = {name: types.ModuleType(name) for name in
               ("omegaconf", "omegaconf.dictconfig", "omegaconf.listconfig", "omegaconf.nodes", "omegaconf.base",
                "fairseq", "fairseq.dataclass", "fairseq.dataclass.constants")}

    def place(cls: type, module: str) -> type:
        cls.__module__ = module
        cls.__qualname__ = cls.__name__
        setattr(modules[module], cls.__name__, cls)
        return cls

    class ContainerMetadata:
        def __init__(self, key: Any = None):
            self.ref_type = Any
            self.object_type = dict
            self.key = key
            self.optional = True
            self.flags: Dict[str, bool] = {}

    class Metadata(ContainerMetadata):
        pass

    class ChoiceEnum:
        def __init__(self, value: str):
            self.value = value

        def __reduce__(self):
            return (type(self), (self.value,))

    class AnyNode:
        def __init__(self, value: Any, parent: Any):
            self.__dict__.update(_val=value, _metadata=Metadata(), _parent=parent)

        def __getstate__(self):
            return dict(self.__dict__)

    class DictConfig:
        def __init__(self, content: Dict[str, Any], parent: Any = None):
            self.__dict__.update(_metadata=ContainerMetadata(), _parent=parent, _flags_cache=None,
                                 _content={k: wrap(v, self) for k, v in content.items()})

        def __getstate__(self):
            return dict(self.__dict__)

    class ListConfig:
        def __init__(self, content: List[Any], parent: Any = None):
            self.__dict__.update(_metadata=ContainerMetadata(), _parent=parent,
                                 _content=[wrap(v, self) for v in content])

        def __getstate__(self):
            return dict(self.__dict__)

    place(ContainerMetadata, "omegaconf.base")
    place(Metadata, "omegaconf.base")
    place(AnyNode, "omegaconf.nodes")
    place(DictConfig, "omegaconf.dictconfig")
    place(ListConfig, "omegaconf.listconfig")
    place(ChoiceEnum, "fairseq.dataclass.constants")

    def wrap(value: Any, parent: Any) -> Any:
        if isinstance(value, dict):
            return DictConfig(value, parent)
        if isinstance(value, list):
            return ListConfig(value, parent)
        if isinstance(value, str) and value in ("default", "layer_norm", "static", "uniform"):
            return AnyNode(ChoiceEnum(value), parent)  # fairseq stores choices as enum members
        return AnyNode(value, parent)

    return modules, lambda content: DictConfig(content)


def save_with_fake_omegaconf(path: str, make_checkpoint: Any) -> None:
    """torch.save the dict ``make_checkpoint(to_config)`` while the look-alike modules are importable,
    then remove them again (the loader under test must not need them)."""
    modules, to_config = fake_omegaconf_classes()
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        torch.save(make_checkpoint(to_config), path)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


# ---------------------------------------------------------------------------------------------
# Checks of the helpers themselves
# ---------------------------------------------------------------------------------------------

def test_fairseq_names_follow_the_spec_tables():
    model = hf_model("wavlm", **SMALL_WAVLM)
    names = set(fairseq_state(model.state_dict(), layer_norm_cnn=False))
    for expected in ("feature_extractor.conv_layers.0.0.weight", "feature_extractor.conv_layers.0.2.weight",
                     "layer_norm.weight", "post_extract_proj.weight", "mask_emb", "encoder.pos_conv.0.weight_g",
                     "encoder.pos_conv.0.weight_v", "encoder.layers.0.self_attn.relative_attention_bias.weight",
                     "encoder.layers.2.self_attn.grep_linear.weight", "encoder.layers.2.self_attn.grep_a",
                     "encoder.layers.1.self_attn_layer_norm.bias", "encoder.layers.1.fc1.weight",
                     "encoder.layers.1.final_layer_norm.weight", "encoder.layer_norm.weight"):
        assert expected in names, expected


def test_checkpoint_with_fake_omegaconf_cannot_be_read_by_plain_torch_load(tmp_path):
    path = str(tmp_path / "x.pt")
    save_with_fake_omegaconf(path, lambda to_config: {"cfg": to_config({"model": {"a": 1}}), "model": {}})
    assert "omegaconf.dictconfig" not in sys.modules or not hasattr(sys.modules["omegaconf.dictconfig"], "__file__")
    import importlib.util
    import pickle
    if importlib.util.find_spec("omegaconf") is not None:
        pytest.skip("a real omegaconf is installed: plain torch.load can read the checkpoint")
    with pytest.raises((ModuleNotFoundError, AttributeError, pickle.UnpicklingError)):
        torch.load(path, weights_only=False)
