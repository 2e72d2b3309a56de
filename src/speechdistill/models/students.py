"""Student presets (``conf/students/*.yaml``), built by name, and initialisation from a teacher.

A preset is data: the encoder structure (or changes to the teacher's structure), what is
copied from the teacher, and the target-mapping heads its paper trains with. ``build_student``
turns it into modules; ``init_from_teacher`` copies weights with a strict shape check and
reports what was copied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..config import ConfigError, check_fields, from_dict, load_yaml, merge, to_dict
from .config import EncoderConfig, architecture
from .encoder import Encoder
from .heads import build_heads

REPO_ROOT = Path(__file__).resolve().parents[3]
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def preset_directories() -> List[Path]:
    """Where presets are looked up: the repository's ``conf/students`` (then a packaged copy)."""
    return [REPO_ROOT / "conf" / "students", PACKAGE_ROOT / "conf" / "students"]


@dataclass
class TeacherInit:
    """Which student weights come from the teacher.

    ``layers[i]`` is the teacher layer (0-based) copied into student layer i (unique layers
    when layers are shared). ``all`` copies every student weight from the teacher weight of the
    same name (a full-size copy, DPHuBERT).
    """

    all: bool = False
    feature_extractor: bool = False
    feature_norm: bool = False
    feature_projection: bool = False
    mask_embedding: bool = False
    pos_conv: bool = False
    encoder_norm: bool = False
    relative_position: bool = False
    layers: List[int] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.all or self.feature_extractor or self.feature_norm or self.feature_projection
                    or self.mask_embedding or self.pos_conv or self.encoder_norm or self.relative_position
                    or self.layers)


@dataclass
class StudentPreset:
    """One ``conf/students/<name>.yaml``."""

    name: str
    description: str = ""
    reference: str = ""
    teacher_architecture: str = "hubert_base"  # used when no teacher is given
    encoder_from_teacher: bool = False  # encoder = teacher's structure changed by ``encoder``
    encoder: Dict[str, Any] = field(default_factory=dict)
    init_from_teacher: TeacherInit = field(default_factory=TeacherInit)
    heads: Optional[Dict[str, Any]] = None  # HeadsConfig fields; in_dim/out_dim default to student/teacher width
    params_include_heads: bool = False  # the published parameter count includes the heads
    published_params: Optional[int] = None
    published_params_text: str = ""
    published_macs: str = ""  # as published (SUPERB profiling set), for the README table
    target_sparsity: Optional[float] = None  # pruned presets: the sparsity the published size is at
    source_file: str = ""


@dataclass
class InitReport:
    """Result of ``init_from_teacher``."""

    copied: List[Tuple[str, str, Tuple[int, ...]]] = field(default_factory=list)  # (student, teacher, shape)
    left_at_init: List[str] = field(default_factory=list)
    teacher_unused: int = 0

    def summary(self) -> str:
        params = sum(int(torch.Size(shape).numel()) for _, _, shape in self.copied)
        groups: Dict[str, int] = {}
        for student_key, _, _ in self.copied:
            head = ".".join(student_key.split(".")[:2]) if student_key.startswith("layers.") else student_key.split(".")[0]
            groups[head] = groups.get(head, 0) + 1
        kept = ", ".join(sorted(groups))
        return (f"copied {len(self.copied)} tensors ({params:,} values) from the teacher: {kept}; "
                f"{len(self.left_at_init)} student tensors keep their initialisation; "
                f"{self.teacher_unused} teacher tensors unused")


@dataclass
class Student:
    """A built student: encoder, optional heads, the preset it came from, the init report."""

    encoder: Encoder
    heads: Optional[nn.Module]
    preset: StudentPreset
    init_report: Optional[InitReport] = None

    def num_params(self) -> int:
        """Parameters counted as the paper counts them (heads included when they are)."""
        total = sum(p.numel() for n, p in self.encoder.named_parameters() if not n.endswith("log_alpha"))
        if self.heads is not None and self.preset.params_include_heads:
            total += sum(p.numel() for p in self.heads.parameters())
        return total


def list_presets() -> List[str]:
    names = set()
    for directory in preset_directories():
        if directory.is_dir():
            names.update(p.stem for p in directory.glob("*.yaml"))
    return sorted(names)


def preset_path(name_or_path: Union[str, Path]) -> Path:
    """Path of a preset given by name (``distilhubert``) or as a YAML path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"{path}: student preset file not found")
        return path
    for directory in preset_directories():
        candidate = directory / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"unknown student preset '{text}'; known presets: {', '.join(list_presets())} "
                      "(or give a path to a YAML file)")


def load_preset(name_or_path: Union[str, Path]) -> StudentPreset:
    path = preset_path(name_or_path)
    preset = from_dict(StudentPreset, load_yaml(path), where=str(path))
    preset.source_file = str(path)
    return preset


def student_config(preset: StudentPreset, teacher_config: Optional[EncoderConfig] = None,
                   overrides: Optional[Mapping[str, Any]] = None) -> EncoderConfig:
    """The student's EncoderConfig (teacher structure + changes, or the preset's own)."""
    where = f"{preset.source_file or preset.name}: encoder"
    base: Dict[str, Any] = {}
    if preset.encoder_from_teacher:
        teacher_config = teacher_config or architecture(preset.teacher_architecture)
        base = to_dict(teacher_config)
    data = merge(base, preset.encoder)
    if overrides:
        # a bad key or value of the config's student_encoder is the config's, not the preset file's
        check_fields(EncoderConfig, overrides, where="student_encoder")
        data = merge(data, overrides)
    return EncoderConfig.from_dict(data, where=where)


def build_student(name_or_path: Union[str, Path, StudentPreset], teacher: Optional[Encoder] = None, *,
                  overrides: Optional[Mapping[str, Any]] = None) -> Student:
    """Build a student from a preset; with a teacher, copy what the preset says (strictly).

    Args:
        name_or_path: preset name, YAML path, or a loaded StudentPreset.
        teacher: imported teacher (its structure is used by ``encoder_from_teacher`` presets,
            its weights by ``init_from_teacher``); None builds the preset's teacher_architecture
            shape with random weights.
        overrides: EncoderConfig fields to change (e.g. ``{"reuse_mode": "released"}``).
    """
    preset = name_or_path if isinstance(name_or_path, StudentPreset) else load_preset(name_or_path)
    teacher_config = teacher.config if teacher is not None else architecture(preset.teacher_architecture)
    config = student_config(preset, teacher_config, overrides)
    encoder = Encoder(config)
    heads = None
    if preset.heads:
        head_fields = dict(preset.heads)
        head_fields.setdefault("in_dim", config.hidden_size)
        head_fields.setdefault("out_dim", teacher_config.hidden_size)
        try:
            heads = build_heads(head_fields, where=f"{preset.source_file or preset.name}: heads")
        except ValueError as exc:
            raise ConfigError(f"{preset.source_file or preset.name}: {exc}") from None
    report = None
    if teacher is not None and not preset.init_from_teacher.is_empty():
        report = init_from_teacher(encoder, teacher, preset.init_from_teacher)
    return Student(encoder=encoder, heads=heads, preset=preset, init_report=report)


class TeacherInitError(ValueError):
    """A weight the preset wants from the teacher is absent or has another shape."""


def _selected_pairs(student: Encoder, teacher: Encoder, spec: TeacherInit) -> List[Tuple[str, str]]:
    """(student key, teacher key) pairs the spec asks for, before any check."""
    student_keys = [k for k in student.state_dict() if not k.endswith("log_alpha") and ".adapter." not in k]
    if spec.all:
        return [(k, k) for k in student_keys]
    groups = {
        "feature_extractor": ("feature_extractor.",),
        "feature_norm": ("feature_norm.",),
        "feature_projection": ("feature_projection.",),
        "mask_embedding": ("mask_embedding",),
        "pos_conv": ("pos_conv.",),
        "encoder_norm": ("encoder_norm.",),
        "relative_position": ("relative_position_embedding.",),
    }
    pairs: List[Tuple[str, str]] = []
    for flag, prefixes in groups.items():
        if not getattr(spec, flag):
            continue
        chosen = [k for k in student_keys if k.startswith(prefixes)]
        if not chosen:
            raise TeacherInitError(f"init_from_teacher.{flag} is true but the student has no {flag.replace('_', ' ')}")
        pairs.extend((k, k) for k in chosen)
    if len(spec.layers) > len(student.layers):
        raise TeacherInitError(f"init_from_teacher.layers lists {len(spec.layers)} layers; the student has "
                               f"{len(student.layers)}")
    for student_layer, teacher_layer in enumerate(spec.layers):
        if not 0 <= teacher_layer < len(teacher.layers):
            raise TeacherInitError(f"init_from_teacher.layers: teacher layer {teacher_layer} does not exist "
                                   f"(the teacher has {len(teacher.layers)})")
        prefix = f"layers.{student_layer}."
        for key in student_keys:
            if key.startswith(prefix):
                rest = key[len(prefix):]
                if rest.startswith(("attention.gate_proj", "attention.gate_scale")) and not spec.relative_position:
                    continue
                pairs.append((key, f"layers.{teacher_layer}.{rest}"))
    return pairs


@torch.no_grad()
def init_from_teacher(student: Encoder, teacher: Encoder, spec: Union[TeacherInit, Mapping[str, Any]]
                      ) -> InitReport:
    """Copy teacher weights into the student as ``spec`` says; every copied tensor must exist in
    the teacher with the same shape (TeacherInitError names both keys and shapes otherwise)."""
    if not isinstance(spec, TeacherInit):
        spec = from_dict(TeacherInit, dict(spec), where="init_from_teacher")
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    pairs = _selected_pairs(student, teacher, spec)
    problems = []
    for student_key, teacher_key in pairs:
        if teacher_key not in teacher_state:
            problems.append(f"teacher has no '{teacher_key}' for student '{student_key}'")
        elif teacher_state[teacher_key].shape != student_state[student_key].shape:
            problems.append(f"teacher '{teacher_key}' {list(teacher_state[teacher_key].shape)} does not fit student "
                            f"'{student_key}' {list(student_state[student_key].shape)}")
    if problems:
        raise TeacherInitError("cannot initialise the student from the teacher: " + "; ".join(problems[:5])
                               + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    report = InitReport()
    used = set()
    for student_key, teacher_key in pairs:
        student_state[student_key].copy_(teacher_state[teacher_key])
        report.copied.append((student_key, teacher_key, tuple(student_state[student_key].shape)))
        used.add(teacher_key)
    copied = {s for s, _, _ in report.copied}
    report.left_at_init = [k for k in student_state if k not in copied]
    report.teacher_unused = sum(1 for k in teacher_state if k not in used)
    return report
