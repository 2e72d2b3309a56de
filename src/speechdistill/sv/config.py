"""``SvConfig``: every option of speaker-verification training, on top of the trainer's keys.

One YAML file holds trainer keys (``max_steps``, ``lr``, ``batch_seconds``, ...) and the keys
below side by side; nested sections (``ecapa``, ``fbank``, ``featurizer``) are overridden with dots
on the command line (``--ecapa.channels 256``).

Three systems share this config (``system``):

* ``oskdft``: a student copied from the teacher's first layers with parallel adapters, trained
  with a distillation loss (adapters off) and the speaker loss (adapters on) at the same time
  (specs/methods/06_os_kdft.md); presets ``oskdft_paper`` and ``oskdft_2024``.
* ``fbank``: the baseline, the back-end on 80-dim log-mel filterbanks.
* ``ssl_frozen``: the back-end on a weighted sum of the *frozen* teacher's hidden states ("the
  teacher's own features"), the usual SUPERB-style reference for a distilled student.
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

SYSTEMS = ("oskdft", "ssl_frozen", "fbank")


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

    system: Literal["oskdft", "ssl_frozen", "fbank"] = _opt(
        "oskdft", "oskdft: distilled student with adapters; fbank: back-end on log-mel fbank; ssl_frozen: back-end "
                  "on the frozen teacher's weighted-sum features")
    teacher: Optional[str] = _opt(None, "teacher model (our model dir, HF dir, fairseq or s3prl checkpoint); needed "
                                        "by oskdft and ssl_frozen")
    # --- student (oskdft) ------------------------------------------------------------------
    student: str = _opt("oskdft", "student preset name (conf/students/) or YAML path")
    student_encoder: Dict[str, Any] = _opt({}, "EncoderConfig fields changed on top of the preset (e.g. "
                                               "{adapter_dim: 32})")
    student_init: Optional[Dict[str, Any]] = _opt(
        None, "what is copied from the teacher (TeacherInit fields, e.g. {feature_extractor: true, layers: [0, 1]}); "
              "{} copies nothing (a randomly initialised student of the same shape); null = the preset's choice")
    heads_target_layers: Optional[List[int]] = _opt(
        None, "teacher layers the preset's prediction heads predict (2024 preset: 4 8 12); null = the preset's; "
              "set it for a teacher of another depth")
    kd_terms: List[Dict[str, Any]] = _opt(
        _paper_kd_terms(), "distillation loss terms (LossTerm fields). In 'layers', a negative index counts from "
                           "the end (-1 = last hidden state of the student / the teacher); 'layers: heads' pairs "
                           "each prediction head h<t> with teacher layer t")
    kd_input: Literal["same_crop", "separate"] = _opt(
        "same_crop", "same_crop: the distillation branch sees the speaker branch's crop (paper); separate: it "
                     "sees other utterances, from kd_data or the training set (the 2024 scripts' intent)")
    kd_data: Optional[str] = _opt(None, "kd_input separate: Kaldi data dir the distillation inputs come from "
                                        "(the 2024 scripts: LibriSpeech); null = the training set")
    kd_curriculum_epochs: Optional[float] = _opt(
        None, "kd_input separate with kd_data: an input comes from the training set instead of kd_data with "
              "probability min(1, epoch / this) (the 2024 scripts: the number of epochs); null = never")
    steps_per_epoch: Optional[int] = _opt(
        None, "updates per epoch for every epoch-based schedule (KD weight decay, kd curriculum, oskdft_paper "
              "lr); null = the updates of one pass over train_data, from the batch sampler's first epoch")
    # --- features and back-end ------------------------------------------------------------
    featurizer: FeaturizerConfig = _section(
        lambda: FeaturizerConfig(mode="single", layer=-1),
        "which hidden states feed the back-end (oskdft: the student's; ssl_frozen: the teacher's)")
    fbank: FbankConfig = _section(FbankConfig, "log-mel filterbank of the fbank system")
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
    augment: Optional[str] = _opt(None, "augmentation of the system's input (the teacher of oskdft always gets "
                                        "the clean crop): a speechdistill.augment preset (oskdft, default, "
                                        "robustdistiller) or a YAML file; null = none. Its noise/RIR data dirs "
                                        "(data/musan_*, data/rirs) are relative to the working directory")
    augment_overrides: Dict[str, Any] = _opt({}, "changes to the augmentation config, e.g. {reverb: {data_dir: "
                                                 "/x/rirs}, apply_prob: 0.8}")
    # --- optimisation -------------------------------------------------------------------------
    lr_mode: Literal["trainer", "oskdft_paper"] = _opt(
        "trainer", "trainer: the trainer's warmup/decay for every group; oskdft_paper: the released per-epoch "
                   "schedule (cosine restarts for back-end and adapters, kd_lr ramp for the student)")
    student_lr_scale: float = _opt(1.0, "student encoder lr = lr x this (oskdft)")
    adapter_lr_scale: float = _opt(10.0, "adapter lr = lr x this (the released code: 10)")
    cosine_restart_epochs: int = _opt(100, "oskdft_paper: period T_0 of the cosine restarts, in epochs")
    kd_lr_ramp_epochs: int = _opt(10, "oskdft_paper: the student lr rises as epoch / this before decaying")
    kd_lr_decay: float = _opt(0.93, "oskdft_paper: per-epoch factor of the student lr after the ramp")

    def validate(self) -> None:
        super().validate()
        if self.system in ("oskdft", "ssl_frozen") and not self.teacher:
            raise ConfigError(f"config.teacher: system '{self.system}' needs a teacher; pass --teacher PATH (our "
                              "model dir, a Hugging Face dir, or a fairseq/s3prl checkpoint; run.sh stage 2 "
                              "imports it to exp/teacher)")
        if self.system != "oskdft" and self.student_init is not None:
            raise ConfigError(f"config.student_init only applies to system oskdft, not '{self.system}' (remove it)")
        if self.system != "oskdft" and self.kd_input == "separate":
            raise ConfigError(f"config.kd_input: 'separate' only applies to system oskdft, not '{self.system}'")
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
        if self.system == "oskdft" and not self.kd_terms:
            raise ConfigError("config.kd_terms: system oskdft needs at least one distillation loss term")
