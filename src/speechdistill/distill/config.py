"""``DistillConfig``: a distillation method as a composition of a few axes (DESIGN.md).

One YAML file (``egs/librispeech/distill/conf/<method>.yaml``) holds the trainer keys of
:class:`speechdistill.train.TrainerConfig` and the keys below, side by side; every key can be
overridden on the command line as ``--key value`` (nested sections dotted: ``--masking.mask_prob 0.4``).

=====================  ======================================================================
axis                   keys
=====================  ======================================================================
teacher                ``teacher`` (model dir / HF dir / fairseq or s3prl checkpoint),
                       ``layer0_source``; target layers come from ``loss_terms``; masked
                       teacher pass when a ``mask_split_*`` term is present (``masking``)
student                ``student`` (preset of conf/students), ``student_encoder`` (EncoderConfig
                       changes, or the whole config without a preset), ``student_init`` (what is
                       copied from the teacher), ``student_from`` (continue from a model dir)
input corruption       ``corruption`` (augment preset on the student input; teacher stays clean)
target mapping         ``target_mapping`` (preset heads, prediction heads, per-layer projections
                       incl. shared groups ``"0.4,8,12"``, or none)
loss terms             ``loss_terms`` (list of :class:`speechdistill.losses.LossTerm`),
                       ``enhancement`` (RobustDistiller head and its λ)
structure              ``student_encoder`` (attention reuse, layer sharing), ``pruning``
                       (hard-concrete gates + Lagrangian sparsity)
schedule               trainer keys (``max_steps``, ``batch_seconds``, ``lr``, ...),
                       ``weight_decay_grouping``
=====================  ======================================================================

Student keys of loss terms (the first element of each ``layers`` pair):

* ``"head<t>"``: the prediction head that predicts teacher layer ``t`` (DistilHuBERT);
* an integer ``k``: student hidden state ``k`` (0 = transformer input, see ``layer0_source``),
  passed through its per-layer projection when the target mapping has one for layer ``k``,
  raw otherwise (DistilALHuBERT, STaRHuBERT).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from ..config import ConfigError, load_yaml
from ..losses import LossTerm, check_terms
from ..losses.enhancement import ENHANCEMENT_LOSSES
from ..train.config import TrainerConfig
from ..models.masking import MaskingConfig

HEAD_PREFIX = "head"


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - the word --help prints
    """A config field with its help text; mutable defaults are copied for every instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def head_key(teacher_layer: int) -> str:
    """Student key of the prediction head that predicts teacher layer ``teacher_layer``."""
    return f"{HEAD_PREFIX}{teacher_layer}"


def parse_layer_groups(text: str, where: str = "target_mapping.layer_groups") -> Tuple[List[int], List[int]]:
    """DPHuBERT's ``distill_layers`` string -> (layers, group id per layer).

    Groups are separated by ``.``, layers inside a group by ``,`` and share one Linear:
    ``"0.4,8,12"`` -> ``([0, 4, 8, 12], [0, 1, 1, 1])``.
    """
    layers: List[int] = []
    groups: List[int] = []
    for group_id, group in enumerate(str(text).split(".")):
        items = [item.strip() for item in group.split(",")]
        if not group.strip() or any(not item.isdigit() for item in items):
            raise ConfigError(f"{where}: '{text}' is not a list of layer groups; write layers separated by ',' "
                              "and groups by '.', e.g. \"0.4,8,12\"")
        for item in items:
            layer = int(item)
            if layer in layers:
                raise ConfigError(f"{where}: layer {layer} appears twice in '{text}'")
            layers.append(layer)
            groups.append(group_id)
    return layers, groups


@dataclass
class TargetMapping:
    """How student hidden states are mapped onto teacher layers.

    ``kind``: ``preset`` = the student preset's heads (none if it has none); ``prediction`` =
    DistilHuBERT heads on one student layer; ``projection`` = one Linear per student layer
    (student layer k -> teacher layer ``target_layers[i]``), possibly shared in groups;
    ``none`` = raw student layers (Gram terms, equal widths).
    """

    kind: Literal["preset", "prediction", "projection", "none"] = _opt(
        "preset", "preset heads, prediction, projection or none")
    source_layers: List[int] = _opt([], "student hidden states read (prediction: exactly one)")
    target_layers: List[int] = _opt([], "teacher hidden states predicted, one per head / projection")
    layer_groups: Optional[str] = _opt(None, "projection shorthand (DPHuBERT distill_layers): \"0.4,8,12\" = "
                                             "student layer k -> teacher layer k, layers in a '.'-group share a Linear")
    hidden_dim: Optional[int] = _opt(None, "inner width of prediction heads (default: student width)")
    init: Literal["default", "identity"] = _opt("default", "projection init: default or identity (weights I, bias 0)")

    def heads_fields(self) -> Optional[Dict[str, Any]]:
        """HeadsConfig fields (without in/out dims) or None for ``preset`` / ``none``."""
        if self.kind in ("preset", "none"):
            return None
        fields: Dict[str, Any] = {"kind": self.kind, "init": self.init}
        if self.hidden_dim is not None:
            fields["hidden_dim"] = self.hidden_dim
        if self.layer_groups is not None:
            if self.kind != "projection":
                raise ConfigError("target_mapping.layer_groups applies to kind 'projection' only")
            layers, groups = parse_layer_groups(self.layer_groups)
            fields.update(source_layers=layers, target_layers=layers, share_groups=groups)
            return fields
        if not self.target_layers:
            raise ConfigError(f"target_mapping: kind '{self.kind}' needs target_layers (teacher layers the heads "
                              "predict) or, for projections, layer_groups")
        fields.update(source_layers=list(self.source_layers), target_layers=list(self.target_layers))
        return fields


@dataclass
class PruningConfig:
    """DPHuBERT structured pruning: hard-concrete gates of the student (``prune_conv``/``prune_heads``/
    ``prune_ffn`` in its encoder config) trained with a Lagrangian towards a target sparsity."""

    target_sparsity: Optional[float] = _opt(None, "final sparsity (1 - size / teacher size); null = no pruning")
    sparsity_warmup_steps: int = _opt(5000, "updates over which the target ramps linearly from 0")
    reg_lr: float = _opt(0.02, "lr of the gate logits; the Lagrange multipliers use -reg_lr (gradient ascent)")

    @property
    def enabled(self) -> bool:
        return self.target_sparsity is not None


@dataclass
class CorruptionConfig:
    """Corruption of the student input only (RobustDistiller); the teacher always sees clean audio.

    ``preset`` names an augmentation preset of :mod:`speechdistill.augment` (or an augment YAML
    file); noise and RIRs come from Kaldi data dirs (the recipe's stage 1 writes them), relative
    to the working directory.
    """

    preset: Optional[str] = _opt(None, "augmentation preset (robustdistiller, oskdft, default) or an augment "
                                       "YAML file, applied to the student input; null = clean input")
    noise_data: Optional[str] = _opt(None, "Kaldi data dir of noise recordings (default: the preset's, "
                                           "data/musan_noise)")
    rir_data: Optional[str] = _opt(None, "Kaldi data dir of room impulse responses (default: the preset's, data/rirs)")
    overrides: Dict[str, Any] = _opt({}, "AugmentConfig changes, e.g. {reverb: {normalize: none, align: none}} "
                                         "reproduces RobustDistiller's released convolution")

    @property
    def enabled(self) -> bool:
        return self.preset is not None


@dataclass
class EnhancementConfig:
    """RobustDistiller's enhancement head: a BiLSTM predicting a magnitude mask of the noisy STFT."""

    weight: float = _opt(0.0, "λ of the enhancement term (RobustDistiller: 2); 0 = no head")
    loss: Literal["l1", "l2", "mrstft", "si_snr"] = _opt("l1", "l1/l2 on masked magnitudes, or waveform "
                                                               "variants mrstft / si_snr (noisy-phase iSTFT)")
    input: Literal["last_hidden", "cnn"] = _opt("last_hidden", "what the head reads: the student's last hidden "
                                                               "state (paper) or its CNN output (released code)")
    lstm_layers: int = _opt(3, "BiLSTM layers")
    lstm_hidden: int = _opt(256, "BiLSTM units per direction")
    dropout: float = _opt(0.1, "dropout between LSTM layers and before the output Linear")
    include_padding: bool = _opt(False, "reproduce the released code's STFTs over padded rows")

    @property
    def enabled(self) -> bool:
        return self.weight != 0


@dataclass
class DistillConfig(TrainerConfig):
    """Trainer keys plus the composition of one distillation method (module docstring)."""

    # teacher
    teacher: str = _opt("", "teacher model: our model dir (exp/teacher), HF dir, fairseq or s3prl checkpoint")
    layer0_source: Literal["transformer_input", "feature_projection"] = _opt(
        "transformer_input", "what hidden state 0 is, for teacher and student alike: the transformer input (after "
                             "positional conv; HF convention) or the feature-projection output before it "
                             "(DPHuBERT's torchaudio x0, STaR's reimplementation)")
    # student
    student: Optional[str] = _opt(None, "student preset (conf/students/<name>.yaml) or YAML path")
    student_encoder: Dict[str, Any] = _opt({}, "EncoderConfig changes applied to the preset's encoder (or the whole "
                                               "encoder config when student is null)")
    student_init: Optional[Dict[str, Any]] = _opt(None, "what is copied from the teacher (TeacherInit fields); "
                                                        "null = the preset's choice")
    student_from: Optional[str] = _opt(None, "start from this model dir instead of building the student "
                                             "(DPHuBERT stage 2: the pruned student); its heads are carried over")
    # input corruption
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig, metadata={"help": "student-input corruption"})
    # target mapping, loss
    target_mapping: TargetMapping = field(default_factory=TargetMapping, metadata={"help": "target mapping"})
    loss_terms: List[LossTerm] = _opt([], "weighted loss terms (speechdistill.losses.LossTerm fields)")
    enhancement: EnhancementConfig = field(default_factory=EnhancementConfig, metadata={"help": "enhancement head"})
    masking: MaskingConfig = field(default_factory=MaskingConfig, metadata={"help": "span masking"})
    # structure
    pruning: PruningConfig = field(default_factory=PruningConfig, metadata={"help": "hard-concrete pruning"})
    # schedule
    weight_decay_grouping: Literal["none", "s3prl"] = _opt(
        "none", "none: weight_decay on every parameter; s3prl: weight_decay on all but biases (s3prl's grouping, "
                "which leaves LayerNorm weights decayed because of their names)")
    # recipe
    next_stage: Optional[str] = _opt(None, "config of a stage that continues from this run's student (DPHuBERT: "
                                           "distill+prune, then final distillation); run.sh runs it")

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise ConfigError("config.teacher: no teacher given; pass --teacher DIR (the recipe's exp/teacher, a "
                              "Hugging Face directory, a fairseq or s3prl checkpoint)")
        if not self.loss_terms:
            raise ConfigError("config.loss_terms: the method lists no loss term; add at least one "
                              "(e.g. {name: l1, kind: l1, layers: [[head4, 4]]})")
        check_terms(self.loss_terms)
        if self.student is None and self.student_from is None and not self.student_encoder:
            raise ConfigError("config.student: no student; name a preset (--student distilhubert), give the whole "
                              "encoder config in student_encoder, or continue from a model dir (--student_from DIR)")
        if self.student_from is not None and (self.student_encoder or self.student_init):
            raise ConfigError("config.student_from: the student is loaded as it is; student_encoder and "
                              "student_init cannot change it (remove them)")
        self.target_mapping.heads_fields()  # raises on an inconsistent mapping
        splits = [t.name for t in self.loss_terms if t.kind.startswith("mask_split")]
        if splits and not self.masking.enabled:
            raise ConfigError(f"loss terms {splits} split frames by the mask but masking.mask_prob is 0; set "
                              "masking.mask_prob (ARMHuBERT: 0.8) or use an unsplit kind")
        m = self.masking
        if not 0.0 <= m.mask_prob <= 1.0:
            raise ConfigError(f"config.masking.mask_prob: must lie in [0, 1], found {m.mask_prob}")
        if m.mask_length < 1 or m.min_space < 0 or m.min_masks < 0:
            raise ConfigError("config.masking: mask_length must be >= 1, min_space and min_masks >= 0")
        p = self.pruning
        if p.enabled:
            if not 0.0 <= p.target_sparsity < 1.0:
                raise ConfigError(f"config.pruning.target_sparsity: must lie in [0, 1), found {p.target_sparsity}")
            if p.sparsity_warmup_steps < 0 or not p.reg_lr > 0:
                raise ConfigError("config.pruning: sparsity_warmup_steps must be >= 0 and reg_lr > 0")
        e = self.enhancement
        if e.enabled:
            if not math.isfinite(e.weight) or e.weight < 0:
                raise ConfigError(f"config.enhancement.weight: must be a finite number >= 0, found {e.weight}")
            if e.loss not in ENHANCEMENT_LOSSES:
                raise ConfigError(f"config.enhancement.loss: '{e.loss}' is not one of {list(ENHANCEMENT_LOSSES)}")
            if e.lstm_layers < 1 or e.lstm_hidden < 1 or not 0.0 <= e.dropout < 1.0:
                raise ConfigError("config.enhancement: lstm_layers and lstm_hidden must be >= 1, dropout in [0, 1)")
        c = self.corruption
        if not c.enabled and (c.noise_data or c.rir_data or c.overrides):
            raise ConfigError("config.corruption: noise_data/rir_data/overrides are set but corruption.preset is "
                              "null; name an augmentation preset (robustdistiller) or drop them")


def config_chain(path: Union[str, Path]) -> List[Path]:
    """``path`` and every config its ``next_stage`` keys lead to, in order (each next to ``path``).

    Raises:
        ConfigError: a config that does not exist, or a chain that comes back to a config it passed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: method config not found; pick one of conf/*.yaml (e.g. conf/distilhubert.yaml)")
    chain = [path]
    while True:
        following = (load_yaml(chain[-1]) or {}).get("next_stage")
        if not following:
            return chain
        current = path.parent / following
        if not current.is_file():
            raise ConfigError(f"{chain[-1]}: next_stage {following} not found next to it ({current}). Fix: put "
                              f"{following} beside it or correct next_stage")
        if current in chain:
            raise ConfigError(f"{chain[-1]}: next_stage {following} leads back to a config of the chain "
                              f"({' -> '.join(map(str, chain))})")
        chain.append(current)
