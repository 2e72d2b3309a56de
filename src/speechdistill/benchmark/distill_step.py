"""Our distillation step, exactly as the trainer runs it, for each method preset of the recipe.

A method preset is ``conf/distill/<name>.yaml`` (a first-stage method: it names
a student and loss terms). The step is built from it the way ``distill_train`` builds it --
:class:`DistillTask` with its teacher, student, corruption, masking, heads and loss terms,
AdamW from the trainer's ``build_optimizer`` -- on a teacher of the preset's architecture with
random weights, and one update does what :class:`speechdistill.train.Trainer` does for one
micro-batch: autocast forward (``train_step``), backward, clipping, optimizer and scheduler step.

Counted work (for FLOP/s and the fraction of peak) is the MACs of
:func:`speechdistill.models.profiling.count_macs` on the real (unpadded) samples: the teacher up
to the deepest layer the loss reads (twice with a masked teacher pass), plus three times the
student's forward with its heads (backward ~= 2 x forward). Loss terms and the RobustDistiller
enhancement head are not counted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..config import ConfigError, load_config, load_yaml, merge
from ..data.collate import pad_waveforms
from ..data.sampler import BucketBatchSampler
from ..distill import DistillConfig, DistillTask
from ..models.config import architecture
from ..models.encoder import Encoder
from ..models.checkpoints import save_model
from ..models.profiling import count_macs
from ..distill.config import method_preset_dir
from ..models.students import load_preset
from ..train.optim import build_optimizer, clip_multiplier, flip_ascent_gradients, gradient_norm, step_with_multiplier
from ..train.precision import autocast
from ..train.task import TrainContext

METHOD_DIR = method_preset_dir()
SAMPLE_RATE = 16000
# The recipe distils RD-DPWavLM from WavLM Base+ (its YAML header); every other method's teacher
# is its student preset's teacher_architecture.
TEACHER_OF_METHOD = {"rd_dpwavlm": "wavlm_base_plus"}


def list_methods() -> List[str]:
    """First-stage method presets of the recipe (YAMLs naming a student and loss terms)."""
    names = []
    for path in sorted(METHOD_DIR.glob("*.yaml")):
        data = load_yaml(path)
        if data.get("student") and data.get("loss_terms"):
            names.append(path.stem)
    return names


def method_student(method: str) -> str:
    """The student preset a method preset trains."""
    return str(load_yaml(METHOD_DIR / f"{method}.yaml")["student"])


def method_teacher_architecture(method: str) -> str:
    return TEACHER_OF_METHOD.get(method, load_preset(method_student(method)).teacher_architecture)


def save_random_teacher(architecture_name: str, directory: Path, seed: int = 0) -> Path:
    """A model directory holding a teacher of ``architecture_name`` with seeded random weights."""
    path = directory / architecture_name
    if not (path / "model.safetensors").is_file():
        torch.manual_seed(seed)
        save_model(Encoder(architecture(architecture_name)), path)
    return path


@dataclass
class Workload:
    """The utterances one timed repetition processes, and how each side batches them.

    Attributes:
        waveforms: 1-D float32 tensors (samples at 16 kHz), speech-like noise.
        budget_seconds: our batches: seconds of padded audio per batch (the trainer's sampler).
        baseline_batch_size: the s3prl baseline's fixed utterance count per batch.
    """

    waveforms: List[torch.Tensor]
    budget_seconds: float
    baseline_batch_size: int

    @classmethod
    def make(cls, seconds: Sequence[float], *, budget_seconds: float, baseline_batch_size: int,
             seed: int = 0) -> "Workload":
        generator = torch.Generator().manual_seed(seed)
        waveforms = [0.1 * torch.randn(int(round(s * SAMPLE_RATE)), generator=generator) for s in seconds]
        return cls(waveforms, budget_seconds, baseline_batch_size)

    @property
    def lengths(self) -> List[int]:
        return [len(w) for w in self.waveforms]

    @property
    def audio_seconds(self) -> float:
        return sum(self.lengths) / SAMPLE_RATE

    def our_batches(self) -> List[List[int]]:
        """Index lists as the trainer's BucketBatchSampler makes them (length-sorted, seconds budget)."""
        sampler = BucketBatchSampler(self.lengths, batch_samples=int(round(self.budget_seconds * SAMPLE_RATE)),
                                     num_buckets=1, shuffle=False)
        return sampler.global_batches(0)


def padded(waveforms: Sequence[torch.Tensor], indices: Sequence[int], device: torch.device) -> Dict[str, Any]:
    """A collated batch (``wavs`` [B, T], ``lengths`` [B], ``audio_seconds``) of the chosen utterances."""
    wavs, lengths = pad_waveforms([waveforms[i] for i in indices])
    return {"wavs": wavs.to(device), "lengths": lengths.to(device), "audio_seconds": float(lengths.sum()) / SAMPLE_RATE,
            "keys": [f"utt{i}" for i in indices]}


class OurDistillStep:
    """One method preset's distillation update, built and run as the trainer does.

    Args:
        method: method preset name (``conf/distill/<method>.yaml``).
        teacher_dir: model directory of the teacher.
        device: where everything runs.
        corruption_dirs: ``{"noise": dir, "rirs": dir}`` Kaldi data dirs for methods that corrupt
            the student input.
        output_dir: scratch directory the task may write to.
    """

    def __init__(self, method: str, teacher_dir: Path, device: torch.device, *,
                 corruption_dirs: Optional[Dict[str, Path]] = None, output_dir: Path, seed: int = 0,
                 compile_model: bool = False) -> None:
        path = METHOD_DIR / f"{method}.yaml"
        data = merge(load_yaml(path), {"teacher": str(teacher_dir), "train_data": str(output_dir),
                                       "device": device.type, "precision": "fp32", "teacher_precision": "fp32"})
        if data.get("corruption", {}).get("preset"):
            if corruption_dirs is None:
                raise ConfigError(f"{path}: corrupts the student input; the benchmark needs noise and RIR dirs")
            data = merge(data, {"corruption": {"noise_data": str(corruption_dirs["noise"]),
                                               "rir_data": str(corruption_dirs["rirs"])}})
        config = load_config(DistillConfig, None, data)
        config.validate()
        self.method = method
        self.config = config
        self.device = device
        self.context = TrainContext(device=device, precision="fp32", teacher_precision="fp32", rank=0, world_size=1,
                                    local_rank=0, output_dir=Path(output_dir), seed=seed,
                                    logger=logging.getLogger("speechdistill.benchmark"))
        self.task = DistillTask(config)
        self.task.setup(self.context)
        torch.manual_seed(seed)
        self.module = self.task.model().to(device).train()
        self.model = torch.compile(self.module) if compile_model else self.module
        self.optimizer, self.scheduler = build_optimizer(self.module, self.task.param_groups(self.module), config)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.precision = "fp32"
        self.updates = 0

    def set_precision(self, precision: str) -> None:
        """Autocast precision of student and teacher for the next updates (fp16 adds a GradScaler)."""
        self.precision = precision
        self.context.precision = precision
        self.context.teacher_precision = precision
        if precision == "fp16" and not self.scaler.is_enabled():
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=True)

    def __call__(self, batch: Dict[str, Any]) -> torch.Tensor:
        """One optimizer update on ``batch``; returns the loss (not synchronised)."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            out = self.task.train_step(self.model, batch, self.updates)
        loss = out.loss.float()
        fp16 = self.precision == "fp16"
        (self.scaler.scale(loss) if fp16 else loss).backward()
        if fp16:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        multiplier = clip_multiplier(gradient_norm(grads), self.config.grad_clip) if grads else None
        flip_ascent_gradients(self.optimizer)
        step_with_multiplier(self.optimizer, multiplier, self.scaler)  # as the trainer's update
        self.scheduler.step()
        self.updates += 1
        return loss.detach()

    def macs(self, lengths: Sequence[int]) -> int:
        """Counted MACs of one update over utterances of ``lengths`` samples (module docstring)."""
        teacher = self.task.teacher
        deepest = max(self.task.teacher_layers)
        teacher_config = teacher.config.replace(num_layers=min(deepest, teacher.config.num_layers))
        passes = 2 if self.task.masked_teacher_pass and self.config.masking.enabled else 1
        student = self.module.student
        heads = self.module.heads
        total = 0
        for length in lengths:
            total += passes * count_macs(teacher_config, int(length))["total"]
            total += 3 * count_macs(student.config, int(length), heads)["total"]
        return total
