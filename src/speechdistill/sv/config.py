"""``SvConfig``: every option of speaker-verification training, on top of the trainer's keys.

One YAML file holds trainer keys (``max_steps``, ``lr``, ``batch_seconds``, ...) and the keys
below side by side; nested sections (``ecapa``, ``fbank``, ``featurizer``) are overridden with dots
on the command line (``--ecapa.channels 256``).

A system is a choice along a few axes:

* ``upstream``: what turns waveforms into features -- ``student`` (an encoder built from a student
  preset, trained), ``frozen_teacher`` (the teacher's weighted-sum features, frozen) or ``fbank``
  (80-dim log-mel filterbanks);
* ``kd_terms``: distillation loss terms of a student against the frozen teacher, computed on a
  second pass of the student (the distillation branch); none = fine-tuning alone;
* ``adapters``: the student's parallel adapters run in the speaker branch only;
* ``group_lr_schedules``: per parameter group (``student``, ``adapters``, ``backend``), an epoch
  schedule of ``train.optim`` instead of the trainer's ``lr_schedule``;
* the back-end, the speaker loss and the input corruption.

``system`` names the compositions the recipe ships, as a shorthand that :meth:`SvConfig.__post_init__`
expands (``SYSTEMS``); keys set next to it must agree with it, and a config given by its axes alone
gets the name its axes match (or none):

* ``oskdft``: upstream student with adapters and distillation terms (the paper's when ``kd_terms``
  is not set): OS-KDFT (specs/methods/06_os_kdft.md), presets ``oskdft_paper`` and ``oskdft_2024``;
* ``fbank``: upstream fbank, the baseline;
* ``ssl_frozen``: upstream frozen_teacher, the usual SUPERB-style reference for a distilled student.

``lr_mode: oskdft_paper`` is the shorthand of the released code's per-epoch learning rates:
``cosine_restarts`` for the back-end and the adapters, ``ramp_decay`` for the student.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

from ..config import ConfigError
from ..downstream.ecapa import EcapaConfig, MeanStdBackendConfig
from ..downstream.featurizer import FeaturizerConfig
from ..downstream.frontend import FbankConfig
from ..train.config import TrainerConfig
from ..train.optim import EPOCH_SCHEDULES

# system -> the upstream it stands for (its other axes follow from the upstream's defaults)
SYSTEMS = {"oskdft": "student", "ssl_frozen": "frozen_teacher", "fbank": "fbank"}
LR_MODES = {"trainer": {}, "oskdft_paper": {"student": "ramp_decay", "adapters": "cosine_restarts",
                                            "backend": "cosine_restarts"}}


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's wording
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _section(factory: Any, help: str) -> Any:  # noqa: A002
    return field(default_factory=factory, metadata={"help": help})


def _paper_kd_terms() -> List[Dict[str, Any]]:
    return [{"name": "kd_mse", "kind": "mse", "layers": [[-1, -1]], "weight": 100.0, "linear_decay_epochs": 100}]


@dataclass
class SvConfig(TrainerConfig):
    """Options of :class:`speechdistill.sv.task.SvTask` (each field's help says what it does)."""

    system: Optional[Literal["oskdft", "ssl_frozen", "fbank"]] = _opt(
        None, "shorthand for the axes: oskdft = upstream student with adapters and kd_terms (the paper's when unset); "
              "ssl_frozen = upstream frozen_teacher; fbank = upstream fbank. null = the name the axes match (oskdft "
              "when upstream is null too)")
    upstream: Optional[Literal["student", "frozen_teacher", "fbank"]] = _opt(
        None, "the features: student (trained encoder from the student preset), frozen_teacher (the teacher's, "
              "frozen) or fbank (log-mel); null = from system")
    teacher: Optional[str] = _opt(None, "teacher model (our model dir, HF dir, fairseq or s3prl checkpoint); needed "
                                        "by upstream student and frozen_teacher")
    # --- student (upstream student) --------------------------------------------------------------
    student: str = _opt("oskdft", "student preset name (conf/students/) or YAML path")
    student_encoder: Dict[str, Any] = _opt({}, "EncoderConfig fields changed on top of the preset (e.g. "
                                               "{adapter_dim: 32})")
    student_init: Optional[Dict[str, Any]] = _opt(
        None, "what is copied from the teacher (TeacherInit fields, e.g. {feature_extractor: true, layers: [0, 1]}); "
              "{} copies nothing (a randomly initialised student of the same shape); null = the preset's choice")
    heads_target_layers: Optional[List[int]] = _opt(
        None, "teacher layers the preset's prediction heads predict (2024 preset: 4 8 12); null = the preset's; "
              "set it for a teacher of another depth")
    kd_terms: Optional[List[Dict[str, Any]]] = _opt(
        None, "distillation loss terms of the student (LossTerm fields), on a second pass without adapters; [] = "
              "none (fine-tuning alone); null = the paper's 100 x MSE of the last hidden states for a student. In "
              "'layers', a negative index counts from the end (-1 = last hidden state of the student / the "
              "teacher); 'layers: heads' pairs each prediction head h<t> with teacher layer t")
    adapters: Optional[bool] = _opt(
        None, "upstream student: the speaker branch runs the student's parallel adapters, the distillation branch "
              "runs without them; false builds the student without adapters (one network for both); null = true "
              "for a student")
    kd_input: Literal["same_crop", "separate"] = _opt(
        "same_crop", "same_crop: the distillation branch sees the speaker branch's crop (paper); separate: it "
                     "sees other utterances, from kd_data or the training set (the 2024 scripts' intent)")
    kd_data: Optional[str] = _opt(None, "kd_input separate: Kaldi data dir the distillation inputs come from "
                                        "(the 2024 scripts: LibriSpeech); null = the training set")
    kd_curriculum_epochs: Optional[float] = _opt(
        None, "kd_input separate with kd_data: an input comes from the training set instead of kd_data with "
              "probability min(1, epoch / this) (the 2024 scripts: the number of epochs); null = never")
    steps_per_epoch: Optional[int] = _opt(
        None, "updates per epoch for every epoch-based schedule (KD weight decay, kd curriculum, "
              "group_lr_schedules); null = the updates of one pass over train_data, from the batch sampler's first "
              "epoch")
    # --- features and back-end ------------------------------------------------------------
    featurizer: FeaturizerConfig = _section(
        lambda: FeaturizerConfig(mode="single", layer=-1),
        "which hidden states feed the back-end (the student's, or the frozen teacher's)")
    fbank: FbankConfig = _section(FbankConfig, "log-mel filterbank of upstream fbank")
    backend: Literal["ecapa", "mean_std"] = _opt("ecapa", "ECAPA-TDNN, or mean+std pooling and a linear layer "
                                                          "(the 2024 scripts)")
    ecapa: EcapaConfig = _section(EcapaConfig, "ECAPA-TDNN sizes")
    mean_std: MeanStdBackendConfig = _section(MeanStdBackendConfig, "mean+std linear back-end sizes")
    speaker_loss: Literal["aam", "softmax"] = _opt("aam", "AAM-softmax (paper) or softmax cross-entropy (2024)")
    aam_margin: float = _opt(0.2, "AAM-softmax margin (radians)")
    aam_scale: float = _opt(30.0, "AAM-softmax scale")
    class_weighted: bool = _opt(False, "weigh the speaker cross-entropy by inverse speaker frequency, "
                                       "N / (C * n_c) (the released code uses a class-weighted loss)")
    # --- input corruption -------------------------------------------------------------------
    augment: Optional[str] = _opt(None, "augmentation of the system's input (the teacher of a distillation "
                                        "branch always gets the clean crop): a speechdistill.augment preset "
                                        "(oskdft, default, "
                                        "robustdistiller) or a YAML file; null = none. Its noise/RIR data dirs "
                                        "(data/musan_*, data/rirs) are relative to the working directory")
    augment_overrides: Dict[str, Any] = _opt({}, "changes to the augmentation config, e.g. {reverb: {data_dir: "
                                                 "/x/rirs}, apply_prob: 0.8}")
    # --- optimisation -------------------------------------------------------------------------
    group_lr_schedules: Dict[str, str] = _opt(
        {}, f"parameter group (student, adapters, backend) -> epoch schedule ({', '.join(EPOCH_SCHEDULES)}; "
            "speechdistill.train.optim); a group not named follows the trainer's lr_schedule")
    lr_mode: Optional[Literal["trainer", "oskdft_paper"]] = _opt(
        None, "shorthand for group_lr_schedules: trainer = {} (the trainer's warmup/decay for every group); "
              "oskdft_paper = the released per-epoch rates {student: ramp_decay, adapters: cosine_restarts, "
              "backend: cosine_restarts}")
    student_lr_scale: float = _opt(1.0, "student encoder lr = lr x this")
    adapter_lr_scale: float = _opt(10.0, "adapter lr = lr x this (the released code: 10)")
    cosine_restart_epochs: int = _opt(100, "cosine_restarts and ramp_decay: period T_0 of the cosine restarts, in "
                                           "epochs")
    kd_lr_ramp_epochs: int = _opt(10, "ramp_decay: the lr rises as epoch / this before decaying")
    kd_lr_decay: float = _opt(0.93, "ramp_decay: per-epoch factor of the lr after the ramp")

    def __post_init__(self) -> None:
        """Expand the shorthands (``system``, ``lr_mode``) into the axes, check that the axes set next
        to them agree, and name the system the axes make (idempotent: a resolved config resolves to
        itself)."""
        system, upstream = self.system, self.upstream
        if system is not None and upstream is not None and SYSTEMS[system] != upstream:
            raise ConfigError(f"config: system '{system}' is upstream {SYSTEMS[system]}, but upstream is '{upstream}'; "
                              "drop one of them")
        self.upstream = upstream or (SYSTEMS[system] if system else "student")
        student = self.upstream == "student"
        if self.kd_terms is None:
            self.kd_terms = _paper_kd_terms() if student else []
        if self.adapters is None:
            self.adapters = student
        if not student and self.kd_terms:
            raise ConfigError(f"config.kd_terms: distillation trains a student, and upstream is '{self.upstream}' "
                              "(remove kd_terms, or set upstream: student)")
        if not student and self.adapters:
            raise ConfigError(f"config.adapters: only a student has adapters, and upstream is '{self.upstream}' "
                              "(remove adapters, or set upstream: student)")
        if system == "oskdft":
            if not self.kd_terms:
                raise ConfigError("config.kd_terms: system oskdft needs at least one distillation loss term (for a "
                                  "student without distillation drop system and set upstream: student)")
            if not self.adapters:
                raise ConfigError("config.adapters: system oskdft trains adapters (for a student without them drop "
                                  "system and set upstream: student)")
        if system is None and student:
            system = "oskdft" if self.kd_terms and self.adapters else None
        elif system is None:
            system = next(name for name, source in SYSTEMS.items() if source == self.upstream)
        self.system = system
        self._expand_lr_mode()

    def parameter_groups(self) -> List[str]:
        """Names of the optimizer groups this composition trains."""
        if self.upstream != "student":
            return ["backend"]
        return ["student", "adapters", "backend"] if self.adapters else ["student", "backend"]

    def _expand_lr_mode(self) -> None:
        groups = self.parameter_groups()
        if self.lr_mode is not None:
            expanded = {g: v for g, v in LR_MODES[self.lr_mode].items() if g in groups}
            if self.group_lr_schedules and self.group_lr_schedules != expanded:
                raise ConfigError(f"config: lr_mode '{self.lr_mode}' is group_lr_schedules {expanded}, but "
                                  f"group_lr_schedules is {self.group_lr_schedules}; drop one of them")
            self.group_lr_schedules = expanded
        for group, name in self.group_lr_schedules.items():
            if group not in groups:
                raise ConfigError(f"config.group_lr_schedules: no parameter group '{group}' in this system (groups: "
                                  f"{', '.join(groups)})")
            if name not in EPOCH_SCHEDULES:
                raise ConfigError(f"config.group_lr_schedules.{group}: '{name}' is not one of "
                                  f"{', '.join(EPOCH_SCHEDULES)}")

    def validate(self) -> None:
        super().validate()
        named = f"system '{self.system}'" if self.system else f"upstream '{self.upstream}'"
        if self.upstream != "fbank" and not self.teacher:
            raise ConfigError(f"config.teacher: {named} needs a teacher; pass --teacher PATH (our "
                              "model dir, a Hugging Face dir, or a fairseq/s3prl checkpoint; run.sh stage 2 "
                              "imports it to exp/teacher)")
        if self.upstream != "student" and self.student_init is not None:
            raise ConfigError(f"config.student_init only applies to upstream student, not '{self.upstream}' (remove "
                              "it)")
        if not self.kd_terms and self.kd_input == "separate":
            raise ConfigError(f"config.kd_input: 'separate' needs distillation terms (upstream student with "
                              f"kd_terms), and {named} has none")
        if not self.adapters and self.student_encoder.get("adapter_dim"):
            raise ConfigError(f"config.adapters is false but student_encoder sets adapter_dim "
                              f"{self.student_encoder['adapter_dim']}; drop one of them")
        if self.kd_data is not None and self.kd_input != "separate":
            raise ConfigError("config.kd_data is set but kd_input is 'same_crop'; set kd_input: separate (or drop "
                              "kd_data)")
        if self.kd_curriculum_epochs is not None and not self.kd_curriculum_epochs > 0:
            raise ConfigError(f"config.kd_curriculum_epochs: must be > 0, found {self.kd_curriculum_epochs}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"config.steps_per_epoch: must be >= 1, found {self.steps_per_epoch}")
        for name in ("aam_scale", "student_lr_scale", "adapter_lr_scale", "kd_lr_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"config.{name}: must be a positive number, found {value}")
        if self.cosine_restart_epochs < 1:
            raise ConfigError(f"config.cosine_restart_epochs: must be >= 1, found {self.cosine_restart_epochs}")
        if self.kd_lr_ramp_epochs < 2:
            raise ConfigError(f"config.kd_lr_ramp_epochs: must be >= 2 (the ramp lr is lr * epoch / this for the "
                              f"epochs before it), found {self.kd_lr_ramp_epochs}")
        if self.augment is not None:
            from ..augment import load_augment_config

            load_augment_config(self.augment, self.augment_overrides or None)
        elif self.augment_overrides:
            raise ConfigError("config.augment_overrides is set but augment is null; name a preset (augment: oskdft)")
