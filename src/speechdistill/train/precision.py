"""Choosing the device and the autocast precision.

``auto`` resolves to what is fastest on the device among the precisions whose accuracy is
established (``speechdistill.benchmark.accuracy``: bf16 keeps every teacher hidden state within
the tolerance the README states): bf16 on a CUDA device that supports it; on a CPU, bf16 when the
CPU computes it natively (AMX or AVX512-BF16 in ``/proc/cpuinfo``) *and* a short probe of
transformer-shaped matrix products finds bf16 faster than fp32 on this machine (the same
comparison ``python -m speechdistill.bin.benchmark`` reports in full), else fp32. fp16 is never
chosen automatically: it needs a loss scaler and gains nothing over bf16 on hardware that has both.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import ContextManager, Dict, FrozenSet, Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# bf16 must beat fp32 by this factor in the probe; below it the measurement is within the noise of
# a shared machine and fp32 (exact) is the safer choice.
BF16_MIN_PROBE_SPEEDUP = 1.2
_probe_cache: Dict[str, float] = {}


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

    ``flags`` describe a CPU (its feature flags) other than this one, decided by the flags alone;
    None means this CPU: flags from /proc/cpuinfo, then the bf16 probe (:func:`fastest_precision`).
    """
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision '{name}' is not one of auto, fp32, bf16, fp16")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if flags is not None:  # a described CPU, not this one: nothing to measure, decide by its flags
        return "bf16" if flags & BF16_CPU_FLAGS else "fp32"
    return fastest_precision(device)


def cpu_bf16_speedup(repeats: int = 3) -> float:
    """fp32 time / bf16 time of a transformer-shaped product on this CPU: ``F.linear`` (the kernel of
    every linear layer) of [1024, 768] frames with a [3072, 768] weight, as in a HuBERT Base FFN.

    Medians of interleaved runs after one warm-up each (about 0.2 s in all on a CPU with bf16
    units); cached per process.
    """
    if "cpu" in _probe_cache:
        return _probe_cache["cpu"]
    generator = torch.Generator().manual_seed(0)
    a32 = torch.randn(1024, 768, generator=generator)
    b32 = torch.randn(3072, 768, generator=generator)
    operands = {torch.float32: (a32, b32), torch.bfloat16: (a32.bfloat16(), b32.bfloat16())}
    times: Dict[torch.dtype, list] = {dtype: [] for dtype in operands}
    for round_index in range(repeats + 1):
        for dtype, (a, b) in operands.items():
            start = time.perf_counter()
            F.linear(a, b)
            if round_index:  # round 0 warms up (oneDNN primitive creation, page faults)
                times[dtype].append(time.perf_counter() - start)
    speedup = statistics.median(times[torch.float32]) / statistics.median(times[torch.bfloat16])
    _probe_cache["cpu"] = speedup
    return speedup


def fastest_precision(device: torch.device, *, flags: Optional[FrozenSet[str]] = None) -> str:
    """The precision ``auto`` means on ``device`` (module docstring): bf16 or fp32."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    flags = cpu_flags() if flags is None else flags
    if not flags & BF16_CPU_FLAGS:
        return "fp32"  # bf16 would be emulated: slower than fp32
    return "bf16" if cpu_bf16_speedup() >= BF16_MIN_PROBE_SPEEDUP else "fp32"


def common_precision(per_rank: Sequence[str]) -> str:
    """The one precision every rank trains in, from each rank's resolved one (rank order).

    Ranks resolve ``auto`` on their own device, and a CPU probe near its threshold, or GPUs of
    different kinds, can answer differently; ranks in different precisions would average gradients
    of different accuracy. Agreement keeps the answer; otherwise fp32, which every device computes
    exactly (fp16 is only ever asked for explicitly, and then every rank asked for it)."""
    if not per_rank:
        raise ValueError("common_precision needs the precision of at least one rank")
    return per_rank[0] if len(set(per_rank)) == 1 else "fp32"


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
