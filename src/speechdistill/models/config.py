"""``EncoderConfig``: every structural choice of the one wav2vec2-family encoder, as plain data.

Teachers (HuBERT, wav2vec 2.0, WavLM; Base and Large) and all students are values of this
dataclass. It maps 1:1 onto ``config.yaml`` of a model directory through
``speechdistill.config.from_dict`` / ``to_dict`` (unknown keys are errors).

Shapes follow the usual names: ``conv_layers`` is a list of ``[channels, kernel, stride]``
(kernel and stride in samples for the first layer, in frames of the previous layer after);
``hidden_size`` is the transformer width D; ``num_heads * head_dim`` is the attention width.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Union

from ..config import ConfigError, from_dict, to_dict

BASE_CONV_LAYERS: List[List[int]] = [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2

LAYER_GRAD_SCALES = ("none", "released", "independent")
# ``layer_grad_scale`` was a bool in configs written before it named the variant. ``true`` selected the
# split of the unscaled layer output (1 - m_i to the target), so that is what a model saved with it was
# trained with, and what it resumes with.
LEGACY_LAYER_GRAD_SCALE = {True: "independent", False: "none"}
ADAPTER_RESIDUALS = ("none", "released")
ADAPTER_INITS = ("zero_up", "normal")


def _base_conv_layers() -> List[List[int]]:
    return [list(layer) for layer in BASE_CONV_LAYERS]


@dataclass
class EncoderConfig:
    """Structure of an encoder. Dropout values only act in ``train()`` mode."""

    # --- convolutional feature extractor -------------------------------------------------
    conv_layers: List[List[int]] = field(default_factory=_base_conv_layers)
    conv_norm: Literal["group", "layer"] = "group"  # group: GroupNorm(C, C) after conv 0 only
    conv_bias: bool = False
    feature_grad_mult: float = 1.0  # gradient scale into the CNN; 0 runs the CNN without gradient
    normalize_waveform: bool = False  # zero-mean/unit-variance per utterance (valid samples), Large models
    conv_output_scale: bool = False  # per-channel scale after the CNN (pruned models carry folded gates)

    # --- feature projection -------------------------------------------------------------------
    feature_layer_norm: bool = True  # LayerNorm over CNN channels (absent in DistilHuBERT)
    feature_projection: bool = True  # Linear(conv channels -> hidden_size); False needs equal sizes
    dropout_input: float = 0.0
    mask_embedding: bool = True  # learned vector that replaces masked frames

    # --- positional convolution -------------------------------------------------------------
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16

    # --- transformer ---------------------------------------------------------------------------
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    head_dim: Optional[int] = None  # default hidden_size // num_heads
    ffn_size: int = 3072
    layer_norm_first: bool = False  # pre-LN ("stable layer norm", Large models)
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    layerdrop: float = 0.0

    # --- WavLM gated relative position bias ---------------------------------------------------
    relative_position_bias: bool = False
    num_buckets: int = 320
    max_distance: int = 800

    # --- student structure ---------------------------------------------------------------------
    unique_layers: Optional[int] = None  # cyclic sharing: layer i runs unique layer i % unique_layers
    attention_reuse: List[bool] = field(default_factory=list)  # per layer: reuse previous layer's map
    reuse_mode: Literal["paper", "released"] = "paper"
    # ARMHuBERT's per-layer gradient split, m_i = (L - i) / (L - i + 1) for layer i (0-based): the main path
    # gets m_i; the distillation target gets m_i * (1 - m_i) ("released": taken from the already scaled main
    # path, as the released extract_features does) or 1 - m_i ("independent": from the unscaled output).
    # true / false (older configs) read as "independent" / "none".
    layer_grad_scale: Union[Literal["none", "released", "independent"], bool] = "none"

    # --- pruned shapes (written by ``prune``) ----------------------------------------------
    layer_heads: Optional[List[int]] = None  # heads kept per unique layer
    layer_head_indices: Optional[List[List[int]]] = None  # original head index of each kept head
    layer_ffn_sizes: Optional[List[int]] = None  # FFN units kept per unique layer

    # --- hard-concrete gates (DPHuBERT) ---------------------------------------------------------
    prune_conv: bool = False
    prune_heads: bool = False
    prune_ffn: bool = False

    # --- parallel adapters (OS-KDFT) ------------------------------------------------------------
    adapter_dim: int = 0  # 0 = no adapters
    adapter_scale: float = 1.0
    adapter_layer_norm: bool = False
    adapter_noise: bool = False
    # "released": the adapter returns its input plus the scaled up projection, as the paper-era code's
    # Adapter(add_residual=True) does, so the speaker branch is 2h + FFN + scale * up; "none": only the
    # scaled up projection (h + FFN + scale * up)
    adapter_residual: Literal["none", "released"] = "none"
    # "zero_up": down kaiming-uniform, up projection zero, biases zero (a fresh adapter adds nothing);
    # "normal": both projections N(0, 0.02^2), biases zero (transformers' init of the released models,
    # which runs after the adapters are built and replaces their own init)
    adapter_init: Literal["zero_up", "normal"] = "zero_up"

    def __post_init__(self) -> None:
        if isinstance(self.layer_grad_scale, bool):
            self.layer_grad_scale = LEGACY_LAYER_GRAD_SCALE[self.layer_grad_scale]
        self.validate()

    # ------------------------------------------------------------------------------------------
    @property
    def attention_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def num_unique_layers(self) -> int:
        return self.unique_layers if self.unique_layers is not None else self.num_layers

    @property
    def conv_channels(self) -> int:
        return int(self.conv_layers[-1][0])

    @property
    def stride(self) -> int:
        """Samples per output frame (320 for every published model: 20 ms at 16 kHz)."""
        total = 1
        for _, _, stride in self.conv_layers:
            total *= int(stride)
        return total

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame (400 for the Base CNN)."""
        field_size, jump = 1, 1
        for _, kernel, stride in self.conv_layers:
            field_size += (int(kernel) - 1) * jump
            jump *= int(stride)
        return field_size

    def heads_of(self, unique_layer: int) -> int:
        return self.layer_heads[unique_layer] if self.layer_heads is not None else self.num_heads

    def ffn_of(self, unique_layer: int) -> int:
        return self.layer_ffn_sizes[unique_layer] if self.layer_ffn_sizes is not None else self.ffn_size

    def head_indices_of(self, unique_layer: int) -> List[int]:
        if self.layer_head_indices is not None:
            return list(self.layer_head_indices[unique_layer])
        return list(range(self.heads_of(unique_layer)))

    def reuses_attention(self, layer: int) -> bool:
        return bool(self.attention_reuse) and bool(self.attention_reuse[layer])

    def unique_index(self, layer: int) -> int:
        """Index of the parameter set that virtual layer ``layer`` (0-based) runs."""
        return layer % self.num_unique_layers

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError naming the key when the structure is impossible."""
        def fail(key: str, problem: str) -> None:
            raise ConfigError(f"encoder config: '{key}' {problem}")

        if not self.conv_layers:
            fail("conv_layers", "is empty; give a list of [channels, kernel, stride]")
        for i, layer in enumerate(self.conv_layers):
            if len(layer) != 3 or any(int(v) < 1 for v in layer):
                fail("conv_layers", f"entry {i} is {layer}; each entry must be [channels, kernel, stride] "
                                    "with positive integers")
        if self.conv_norm not in ("group", "layer"):
            fail("conv_norm", f"is {self.conv_norm!r}; use 'group' or 'layer'")
        if self.num_layers < 0:
            fail("num_layers", "must be >= 0")
        if self.num_heads < 1:
            fail("num_heads", "must be >= 1")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            fail("num_heads", f"({self.num_heads}) does not divide hidden_size ({self.hidden_size}); "
                              "set head_dim explicitly or change one of them")
        if not self.feature_projection and self.conv_channels != self.hidden_size:
            fail("feature_projection", f"is false but the CNN gives {self.conv_channels} channels and "
                                       f"hidden_size is {self.hidden_size}; enable the projection or make "
                                       "them equal")
        if self.pos_conv_kernel < 1 or self.hidden_size % self.pos_conv_groups:
            fail("pos_conv_groups", f"({self.pos_conv_groups}) must divide hidden_size ({self.hidden_size})")
        if self.unique_layers is not None and not 1 <= self.unique_layers <= max(self.num_layers, 1):
            fail("unique_layers", f"is {self.unique_layers}; it must be between 1 and num_layers")
        if self.attention_reuse:
            if len(self.attention_reuse) != self.num_layers:
                fail("attention_reuse", f"has {len(self.attention_reuse)} entries; give one per layer "
                                        f"({self.num_layers})")
            if self.attention_reuse[0]:
                fail("attention_reuse", "marks layer 0 as reusing; the first layer has no map to reuse")
            if self.unique_layers is not None:
                fail("attention_reuse", "cannot be combined with unique_layers (cyclic sharing)")
            if self.prune_heads or self.layer_heads is not None:
                fail("attention_reuse", "cannot be combined with head pruning (maps would not line up)")
        if self.reuse_mode not in ("paper", "released"):
            fail("reuse_mode", f"is {self.reuse_mode!r}; use 'paper' or 'released'")
        if self.layer_grad_scale not in LAYER_GRAD_SCALES:
            fail("layer_grad_scale", f"is {self.layer_grad_scale!r}; use one of {', '.join(LAYER_GRAD_SCALES)}")
        n_unique = self.num_unique_layers
        for key in ("layer_heads", "layer_ffn_sizes", "layer_head_indices"):
            value = getattr(self, key)
            if value is not None and len(value) != n_unique:
                fail(key, f"has {len(value)} entries; give one per unique layer ({n_unique})")
        if self.layer_heads is not None and self.head_dim is None:
            fail("head_dim", "must be set when layer_heads is given (heads may be pruned away)")
        if self.layer_head_indices is not None:
            for i, indices in enumerate(self.layer_head_indices):
                if len(indices) != self.heads_of(i) or any(not 0 <= h < self.num_heads for h in indices):
                    fail("layer_head_indices", f"entry {i} ({indices}) must list {self.heads_of(i)} "
                                               f"distinct heads in [0, {self.num_heads})")
        if self.prune_conv and not self.feature_projection:
            fail("prune_conv", "needs feature_projection (pruning CNN channels would change hidden_size)")
        if self.adapter_dim < 0:
            fail("adapter_dim", "must be >= 0")
        if self.adapter_residual not in ADAPTER_RESIDUALS:
            fail("adapter_residual", f"is {self.adapter_residual!r}; use one of {', '.join(ADAPTER_RESIDUALS)}")
        if self.adapter_init not in ADAPTER_INITS:
            fail("adapter_init", f"is {self.adapter_init!r}; use one of {', '.join(ADAPTER_INITS)}")
        for key in ("dropout", "attention_dropout", "activation_dropout", "dropout_input", "layerdrop"):
            if not 0.0 <= getattr(self, key) < 1.0:
                fail(key, f"is {getattr(self, key)}; it must be in [0, 1)")

    # ------------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "EncoderConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "encoder config") -> "EncoderConfig":
        return from_dict(cls, data, where=where)


# ---------------------------------------------------------------------------------------------
# Named teacher architectures (factory functions, random weights when built on their own)
# ---------------------------------------------------------------------------------------------

def hubert_base() -> EncoderConfig:
    """HuBERT Base / DistilHuBERT teacher: 7x512 CNN (GroupNorm), 12 post-LN layers of 768."""
    return EncoderConfig()


def wav2vec2_base() -> EncoderConfig:
    """wav2vec 2.0 Base: same skeleton as HuBERT Base."""
    return EncoderConfig()


def wavlm_base() -> EncoderConfig:
    """WavLM Base / Base+: HuBERT Base skeleton plus gated relative position bias."""
    return EncoderConfig(relative_position_bias=True)


def _large(**extra: Any) -> EncoderConfig:
    return EncoderConfig(conv_norm="layer", conv_bias=True, hidden_size=1024, num_layers=24, num_heads=16,
                         ffn_size=4096, layer_norm_first=True, normalize_waveform=True, **extra)


def wav2vec2_large() -> EncoderConfig:
    """wav2vec 2.0 Large (LV-60 / XLSR-53 shape): layer-norm CNN with bias, 24 pre-LN layers of 1024."""
    return _large()


def hubert_large() -> EncoderConfig:
    """HuBERT Large: the wav2vec 2.0 Large shape."""
    return _large()


def wavlm_large() -> EncoderConfig:
    """WavLM Large: the Large shape plus gated relative position bias."""
    return _large(relative_position_bias=True)


ARCHITECTURES: Dict[str, Callable[[], EncoderConfig]] = {
    "hubert_base": hubert_base,
    "hubert_large": hubert_large,
    "wav2vec2_base": wav2vec2_base,
    "wav2vec2_large": wav2vec2_large,
    "wavlm_base": wavlm_base,
    "wavlm_base_plus": wavlm_base,
    "wavlm_large": wavlm_large,
}


def architecture(name: str) -> EncoderConfig:
    """Config of a named teacher architecture; ValueError listing the names when unknown."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture '{name}'; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]()
