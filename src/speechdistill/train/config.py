"""``TrainerConfig``: every option of the trainer, loaded with :mod:`speechdistill.config`.

A task's config extends it by inheritance, so trainer keys and task keys live side by side at the
top level of one YAML file and are all overridable as ``--key value``::

    @dataclass
    class DistillConfig(TrainerConfig):
        teacher: str = ""
        ...

Each field's ``metadata["help"]`` is what ``--help`` of an entry point prints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple

from ..config import ConfigError

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def _opt(default, help: str, **kwargs):  # noqa: A002 - mirrors argparse's wording
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: default, metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class TrainerConfig:
    """Options of :class:`speechdistill.train.Trainer` (see each field's help)."""

    # data
    train_data: str = _opt("", "Kaldi data dir to train on (wav.scp, utt2num_samples, optional segments)")
    valid_data: Optional[str] = _opt(None, "held-out Kaldi data dir validated every valid_every steps; null = none")
    batch_seconds: float = _opt(100.0, "budget of one batch per rank and micro-batch, in seconds of padded audio")
    max_seconds: Optional[float] = _opt(15.625, "random crop length in seconds (s3prl: 250000 samples); null = whole")
    min_seconds: float = _opt(0.5, "utterances shorter than this are skipped and listed in skipped_utts.txt")
    max_batch_size: Optional[int] = _opt(None, "cap on utterances per batch; null = only the seconds budget")
    num_buckets: int = _opt(20, "length buckets of the batch sampler (1 = no bucketing)")
    num_workers: int = _opt(2, "DataLoader worker processes (0 = load in the training process)")
    prefetch_factor: int = _opt(2, "batches each worker loads ahead")
    max_load_failures_in_row: int = _opt(50, "stop when this many utterances in a row cannot be read")
    pipe_timeout: Optional[float] = _opt(None, "seconds a wav.scp command ('... |') may run before it is killed and "
                                               "its utterance skipped; null = $SPEECHDISTILL_PIPE_TIMEOUT or 120; "
                                               "0 = no limit")
    # optimisation
    max_steps: int = _opt(1000, "total number of optimizer updates (epochs follow from the data)")
    accum_steps: int = _opt(1, "micro-batches accumulated per optimizer update")
    lr: float = _opt(2e-4, "peak learning rate (a task's parameter group may set its own)")
    lr_schedule: Literal["linear", "cosine", "constant"] = _opt(
        "linear", "after warmup: linear or cosine decay to min_lr_ratio * lr at max_steps, or constant")
    warmup_steps: int = _opt(0, "linear warmup from lr/warmup_steps to lr over this many updates")
    warmup_fraction: Optional[float] = _opt(None, "warmup as a fraction of max_steps (s3prl: 0.07); "
                                                  "excludes warmup_steps")
    min_lr_ratio: float = _opt(0.0, "lr at the end of the decay, as a fraction of the peak")
    weight_decay: float = _opt(0.0, "AdamW decoupled weight decay (default for groups that set none)")
    adam_betas: Tuple[float, float] = _opt((0.9, 0.98), "AdamW betas")
    adam_eps: float = _opt(1e-6, "AdamW epsilon")
    grad_clip: float = _opt(5.0, "clip the global gradient norm to this; 0 = no clipping (the norm is logged)")
    max_nonfinite_in_row: int = _opt(10, "stop after this many consecutive updates skipped for a non-finite loss")
    # device and precision
    device: Literal["auto", "cpu", "cuda"] = _opt("auto", "auto = cuda when available, else cpu")
    precision: Precision = _opt("auto", "autocast of the trainable model: auto = bf16 where the device computes it "
                                        "natively (CUDA Ampere+, CPUs with AVX512-BF16/AMX when faster there), else "
                                        "fp32; fp16 uses a GradScaler. A precision the device would emulate is "
                                        "replaced by fp32 with a warning (see allow_emulated_precision)")
    teacher_precision: Precision = _opt("auto", "autocast a task uses for frozen models (e.g. the teacher); auto as "
                                                "for precision")
    allow_emulated_precision: bool = _opt(False, "train in an explicitly asked bf16/fp16 even where the device only "
                                                 "emulates it (many times slower; numerics checks and tests)")
    tf32: bool = _opt(True, "CUDA: float32 matrix products and convolutions on TF32 tensor cores (Ampere+); "
                            "false = full float32")
    kernels: Optional[str] = _opt(None, "model kernels: auto (this device's speed-ups), reference (the plain "
                                        "PyTorch path a GPU runs) or a comma-separated list of backends "
                                        "(speechdistill.kernels.backends()); null = $SPEECHDISTILL_KERNELS, else auto")
    compile: bool = _opt(False, "torch.compile the trainable model")
    deterministic: bool = _opt(False, "deterministic algorithms only (torch.use_deterministic_algorithms, cuDNN "
                                      "deterministic, cuBLAS workspace config): bitwise-repeatable runs on GPUs, "
                                      "slower; an op without a deterministic version then raises")
    threads: int = _opt(0, "intra-op CPU threads (torch.set_num_threads); 0 = leave the default")
    seed: int = _opt(0, "seed of initialisation, crops, shuffles and every RNG")
    # logging, validation, checkpoints
    log_every: int = _opt(50, "write metrics.jsonl and train.log every this many updates")
    tensorboard: bool = _opt(True, "also write every scalar of metrics.jsonl as TensorBoard events in "
                                   "<output_dir>/tensorboard/")
    valid_every: int = _opt(1000, "validate every this many updates (and at the end); 0 = only at the end")
    valid_at_start: bool = _opt(True, "validate once before the first update of a fresh run")
    checkpoint_every: int = _opt(1000, "write a checkpoint every this many updates (and at the end)")
    keep_checkpoints: int = _opt(3, "keep the last K checkpoints")
    # distributed
    dist_backend: Literal["auto", "nccl", "gloo"] = _opt("auto", "auto = nccl on cuda, gloo on cpu")
    master_port: Optional[int] = _opt(None, "rendezvous port under Slurm; default: $MASTER_PORT, else derived "
                                            "from SLURM_JOB_ID")
    find_unused_parameters: bool = _opt(False, "DDP find_unused_parameters (for models that skip parameters)")
    dist_timeout_minutes: float = _opt(30.0, "timeout of collective operations")

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work together."""
        positive = ["lr", "batch_seconds", "max_steps", "accum_steps", "log_every", "checkpoint_every",
                    "keep_checkpoints", "max_nonfinite_in_row", "max_load_failures_in_row", "num_buckets",
                    "prefetch_factor"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"config.{name}: must be positive, found {getattr(self, name)}")
        for name in ["num_workers", "threads", "valid_every", "warmup_steps", "seed", "min_seconds",
                     "weight_decay", "grad_clip", "min_lr_ratio"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"config.{name}: must not be negative, found {getattr(self, name)}")
        if not self.train_data:
            raise ConfigError("config.train_data: no training data dir given; pass --train-data DIR "
                              "(or set train_data in the config)")
        if self.max_seconds is not None and self.max_seconds > self.batch_seconds:
            raise ConfigError(f"config.max_seconds ({self.max_seconds}) is larger than batch_seconds "
                              f"({self.batch_seconds}): one crop would not fit in a batch; raise batch_seconds")
        if self.warmup_fraction is not None:
            if self.warmup_steps:
                raise ConfigError("config: warmup_steps and warmup_fraction are both set; keep one")
            if not 0.0 <= self.warmup_fraction < 1.0:
                raise ConfigError(f"config.warmup_fraction: must lie in [0, 1), found {self.warmup_fraction}")
        if self.min_lr_ratio > 1.0:
            raise ConfigError(f"config.min_lr_ratio: must lie in [0, 1], found {self.min_lr_ratio}")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise ConfigError(f"config.master_port: {self.master_port} is not a TCP port")
        if self.kernels is not None:
            from ..kernels import parse_policy
            try:
                parse_policy(self.kernels, source="config.kernels")
            except ValueError as error:
                raise ConfigError(str(error)) from None

    @property
    def total_warmup_steps(self) -> int:
        """Warmup length in updates, from ``warmup_steps`` or ``warmup_fraction * max_steps``."""
        if self.warmup_fraction is not None:
            return int(round(self.warmup_fraction * self.max_steps))
        return self.warmup_steps
