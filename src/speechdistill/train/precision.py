"""Choosing the device and the autocast precision.

``auto`` resolves to bf16 where the hardware computes it natively (a CUDA device that supports
bf16; a CPU with AMX or AVX512-BF16, read from ``/proc/cpuinfo``), else fp32. fp16 is never
chosen automatically: it needs a loss scaler and gains nothing over bf16 on hardware that has both.
"""
from __future__ import annotations

from pathlib import Path
from typing import ContextManager, FrozenSet, Optional

import torch

from ..config import ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> FrozenSet[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``/``cpu``/``cuda`` to a concrete device; under DDP, rank ``local_rank`` takes GPU ``local_rank``.

    When each process sees a single GPU (``CUDA_VISIBLE_DEVICES`` set per task, e.g. Slurm's
    ``--gpus-per-task=1``), that GPU is used whatever the local rank.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise ConfigError(f"config.device: '{name}' is not one of auto, cpu, cuda")
    if not torch.cuda.is_available():
        raise ConfigError("config.device: cuda was asked for but torch sees no CUDA device "
                          f"(torch {torch.__version__}); pass --device cpu or install a CUDA build of torch")
    count = torch.cuda.device_count()
    index = 0 if count == 1 else local_rank
    if index >= count:
        raise ConfigError(f"local rank {local_rank} has no GPU: this node shows {count} GPU(s). Start at most one "
                          "process per GPU (torchrun --nproc_per_node / srun --ntasks-per-node = GPUs per node)")
    return torch.device("cuda", index)


def resolve_precision(name: str, device: torch.device, *, flags: Optional[FrozenSet[str]] = None) -> str:
    """``auto``/``fp32``/``bf16``/``fp16`` to a concrete precision for ``device``.

    ``flags`` are the CPU feature flags (read from /proc/cpuinfo when not given).
    """
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision '{name}' is not one of auto, fp32, bf16, fp16")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    flags = cpu_flags() if flags is None else flags
    return "bf16" if flags & BF16_CPU_FLAGS else "fp32"


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a resolved precision (``None`` for fp32)."""
    return _DTYPES[precision]


def autocast(device: torch.device, precision: str) -> ContextManager:
    """An autocast context for ``precision`` on ``device``.

    fp32 *disables* autocast rather than doing nothing, so that an fp32 teacher pass nested in a
    bf16 student region really runs in fp32.
    """
    dtype = autocast_dtype(precision)
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)
