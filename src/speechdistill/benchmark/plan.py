"""What a benchmark run measures and how much: its options, the sizes of each section, the sections,
the precisions compared with fp32, the presets, and a progress bar over the timed calls."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from ..models.students import list_presets
from ..train.precision import BF16_CPU_FLAGS, cpu_flags, fastest_precision
from .distill_step import list_methods, method_student

BASELINE_METHOD = "distilhubert"


class BenchmarkError(ValueError):
    """A benchmark option a user gave cannot work; the message says which and what to do."""


@dataclass
class Sizes:
    """How much work each section does. ``for_device`` picks the defaults (CPU: about 4 minutes
    on 2 cores; the distillation steps are most of it)."""

    repeats: int = 3
    warmup: int = 1
    matmul_size: int = 2048
    emulated_matmul_size: int = 1024  # a reduced precision the device only emulates is ~10x slower
    teacher_batch: int = 1
    teacher_seconds: float = 4.0
    student_batch: int = 1
    student_seconds: float = 2.0
    # Utterances of 1.4-2.6 s: the recipes train on 10-16 s, which would not fit the CPU budget; at
    # 0.7-1.3 s the per-update costs that do not grow with audio (AdamW over 27 M parameters, weight
    # casts and norms) weighed twice as much as in training, and the DistilHuBERT ratio read 1.9x, not 2.6x.
    step_seconds: Tuple[float, ...] = (2.6, 2.2, 1.8, 1.4)
    step_budget_seconds: float = 5.2
    baseline_batch_size: int = 2
    step_repeats: int = 2  # every method preset is timed
    # the headline comparison (the baseline method against the eager baseline): a median of 5, as its
    # ratio moved by +-10 % between runs with 3 on this drifting 2-core machine
    baseline_repeats: int = 5
    pipeline_batches: int = 20
    pipeline_batch_size: int = 16
    pipeline_crop_seconds: float = 4.0
    loader_workers: int = 2
    loader_batches: int = 30
    loader_batch_seconds: float = 64.0
    index_utterances: int = 1_000_000

    @classmethod
    def for_device(cls, device: torch.device, quick: bool) -> "Sizes":
        if quick:
            return cls(repeats=2, warmup=1, matmul_size=512, emulated_matmul_size=512, teacher_batch=1,
                       teacher_seconds=1.0, student_batch=1, student_seconds=1.0, step_seconds=(1.0, 0.8),
                       step_budget_seconds=2.0, baseline_batch_size=2, step_repeats=2, baseline_repeats=2,
                       pipeline_batches=2,
                       pipeline_batch_size=4, pipeline_crop_seconds=1.0, loader_batches=3, loader_batch_seconds=8.0,
                       index_utterances=20_000)
        if device.type == "cuda":
            # Batches of the size the recipes train with (s3prl: 24 x 15.6 s crops).
            crops = tuple(15.6 - 0.25 * i for i in range(24))
            return cls(repeats=5, warmup=2, matmul_size=8192, emulated_matmul_size=8192, teacher_batch=8,
                       teacher_seconds=15.6, student_batch=8, student_seconds=15.6, step_seconds=crops,
                       step_budget_seconds=375.0, baseline_batch_size=24, step_repeats=5, baseline_repeats=5)
        return cls()


@dataclass
class BenchmarkOptions:
    """What ``python -m speechdistill.bin.benchmark`` was asked to do."""

    device: str = "cpu"
    precision: str = "auto"  # the reduced precision compared with fp32 (auto: the device's fastest)
    presets: Optional[List[str]] = None  # None: every student and method preset
    quick: bool = False
    threads: Optional[int] = None
    compile: bool = False
    sizes: Optional[Sizes] = None
    work_dir: Optional[Path] = None  # scratch space (teachers, data); a temporary directory when None
    sections: Optional[List[str]] = None  # None: every section


SECTIONS = ("peak", "teacher_forward", "student_forward", "distill_step", "data_pipeline", "data_loader")


def resolve_sections(names: Optional[Sequence[str]]) -> List[str]:
    """The sections to run, in order; the compute sections need the peak, which is added."""
    if not names:
        return list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise BenchmarkError(f"--section {', '.join(unknown)}: unknown; sections: {', '.join(SECTIONS)}")
    wanted = set(names)
    if wanted & {"teacher_forward", "student_forward", "distill_step"}:
        wanted.add("peak")
    return [n for n in SECTIONS if n in wanted]


def resolve_device(name: str) -> torch.device:
    """The device of ``--device``: the CPU, or the first CUDA device (an error when torch sees none)."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise BenchmarkError(f"--device cuda: torch {torch.__version__} sees no CUDA device; run with "
                                 "--device cpu or on a machine with a GPU and a CUDA build of torch")
        return torch.device("cuda", 0)
    raise BenchmarkError(f"--device {name!r} is not one of cpu, cuda")


@dataclass
class PrecisionPlan:
    """Which precisions each section measures.

    Attributes:
        reduced: compared with fp32 in the peak and teacher sections ("fp32": none).
        fast: measured beside fp32 for the students and the distillation steps: what the
            trainer's ``--precision auto`` picks on this device, or the precision asked for.
        native: whether the device computes ``reduced`` in hardware (False: a CPU without
            AMX / AVX512-BF16, where bf16 is converted to fp32 in software).
    """

    reduced: str
    fast: str
    native: bool
    device_type: str = "cpu"

    @property
    def peak_precisions(self) -> List[str]:
        """fp32, the reduced precision, and fp16 on a GPU (its tensor cores' other format)."""
        names = ["fp32"] + ([self.reduced] if self.reduced != "fp32" else [])
        if self.device_type == "cuda" and "fp16" not in names:
            names.append("fp16")
        return names


def plan_precisions(name: str, device: torch.device) -> PrecisionPlan:
    """The precisions to measure on ``device`` for ``--precision`` (auto, fp32, bf16 or fp16)."""
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise BenchmarkError(f"--precision {name!r} is not one of auto, fp32, bf16, fp16")
    if name == "fp16" and device.type == "cpu":
        raise BenchmarkError("--precision fp16: CPUs have no fp16 matrix units worth measuring; use bf16 or fp32 "
                             "(fp16 is for --device cuda)")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BenchmarkError("--precision bf16: this GPU has no bf16 support; use fp16")
    bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
    if name == "auto":
        fast = fastest_precision(device)
        # A GPU without bf16 (V100, T4) has fp16 tensor cores: that is its fast precision.
        if fast == "fp32" and device.type == "cuda":
            fast = "fp16"
        reduced = "bf16" if bf16_ok else "fp16"
    else:
        fast = reduced = name
    native = device.type == "cuda" or reduced != "bf16" or bool(cpu_flags() & BF16_CPU_FLAGS)
    return PrecisionPlan(reduced=reduced, fast=fast, native=native, device_type=device.type)


def select_presets(presets: Optional[List[str]]) -> Tuple[List[str], List[str]]:
    """(student presets, method presets) to measure; unknown names are an error listing the known ones."""
    students, methods = list_presets(), list_methods()
    if not presets:
        return students, methods
    unknown = [p for p in presets if p not in students and p not in methods]
    if unknown:
        raise BenchmarkError(f"--preset {', '.join(unknown)}: unknown; student presets: {', '.join(students)}; "
                             f"method presets: {', '.join(methods)}")
    chosen_methods = [m for m in methods if m in presets]
    chosen_students = sorted({p for p in presets if p in students} | {method_student(m) for m in chosen_methods})
    return chosen_students, chosen_methods


class Progress:
    """A tqdm bar over timed calls that shows the current section and its latest throughput."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        from tqdm import tqdm
        self.bar = tqdm(total=total, unit="run", desc="benchmark", file=sys.stderr, dynamic_ncols=True,
                        disable=not enabled, mininterval=0.5 if sys.stderr.isatty() else 30.0)
        self.note = ""

    def tick(self) -> None:
        self.bar.update(1)

    def section(self, text: str) -> None:
        self.note = text
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self.bar.close()


def planned_runs(sizes: Sizes, plan: PrecisionPlan, students: Sequence[str], methods: Sequence[str],
                 peer: bool, peak_kernels: int = 1, sections: Sequence[str] = SECTIONS) -> int:
    """How many timed calls (warm-up included) the chosen sections make: the progress bar's total."""
    per = sizes.warmup + sizes.repeats
    step_per = sizes.warmup + sizes.step_repeats
    reduced = 1 if plan.reduced != "fp32" else 0
    fast = 2 if plan.fast != "fp32" else 1
    runs = {"peak": per * len(plan.peak_precisions) * peak_kernels,  # matmul
            "teacher_forward": per * (1 + (1 if peer else 0)) + (per if plan.native else 1) * reduced,
            "student_forward": per * fast * (len(students) + 1),  # students + teacher reference
            "distill_step": 0,
            "data_pipeline": 2,  # warm-up batch + timed batches
            "data_loader": 2}  # throughput, worker memory
    baseline_per = sizes.warmup + sizes.baseline_repeats
    for method in methods:
        runs["distill_step"] += ((baseline_per if method == BASELINE_METHOD else step_per)
                                 * (fast + (1 if method == BASELINE_METHOD else 0)))
    return sum(runs[name] for name in sections)
