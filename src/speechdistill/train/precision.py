"""Choosing the device, the autocast precision and the float32 matmul mode.

``auto`` resolves to what is fastest on the device among the precisions whose accuracy is
established (``speechdistill.benchmark.accuracy``: bf16 keeps every teacher hidden state within
the tolerance the README states): bf16 on a CUDA device that computes it natively (Ampere and
newer); on a CPU, bf16 when the CPU computes it natively (AMX or AVX512-BF16 in ``/proc/cpuinfo``)
*and* a short probe of transformer-shaped matrix products finds bf16 faster than fp32 on this
machine (the same comparison ``python -m speechdistill.bin.benchmark`` reports in full), else fp32.
fp16 is never chosen automatically: it needs a loss scaler and gains nothing over bf16 on hardware
that has both.

An explicit reduced precision the device does not compute natively (bf16 or fp16 autocast on a
CPU without those units, bf16 on a pre-Ampere GPU) is emulated, many times slower than fp32 (a
DistilHuBERT update on a 2-core AVX2 CPU: ~90 s in fp16, 7.3 s in fp32): it is replaced by fp32 with
a warning that says so, unless ``allow_emulated`` asks for it anyway (numerics checks, tests).
The decision is a function of :class:`DeviceCapabilities`, so it can be checked for any device.
On CUDA, float32 matrix products use TF32 tensor cores unless ``tf32`` is false.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ContextManager, Dict, FrozenSet, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..config import ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
FP16_CPU_FLAGS = frozenset({"avx512_fp16", "amx_fp16"})
# bf16 must beat fp32 by this factor in the probe; below it the measurement is within the noise of
# a shared machine and fp32 (exact) is the safer choice.
BF16_MIN_PROBE_SPEEDUP = 1.2
_probe_cache: Dict[str, float] = {}
logger = logging.getLogger("speechdistill.train")


@dataclass(frozen=True)
class DeviceCapabilities:
    """What a device computes fast: the input of :func:`choose_precision` and :func:`tf32_enabled`.

    Attributes:
        kind: ``cpu`` or ``cuda``.
        name: the processor or GPU, for messages.
        native: the reduced precisions (``bf16``, ``fp16``) its matrix units compute natively.
        bf16_speedup: CPUs only: fp32 time / bf16 time of a transformer-shaped product measured here
            (None: not measured; ``native`` decides).
        tf32: CUDA devices with TF32 tensor cores (compute capability 8.0 and newer).
    """

    kind: str
    name: str = ""
    native: FrozenSet[str] = field(default_factory=frozenset)
    bf16_speedup: Optional[float] = None
    tf32: bool = False


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


def cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.split(":")[0].strip() == "model name":
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def device_capabilities(device: torch.device, *, flags: Optional[FrozenSet[str]] = None,
                        measure: bool = True) -> DeviceCapabilities:
    """The :class:`DeviceCapabilities` of ``device``. ``flags``: a CPU's feature flags other than this
    one's (nothing is measured then); ``measure``: run the bf16 probe on a CPU with bf16 units."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, _ = torch.cuda.get_device_capability(index)
        native = {"fp16"} | ({"bf16"} if torch.cuda.is_bf16_supported(including_emulation=False) else set())
        return DeviceCapabilities("cuda", torch.cuda.get_device_name(index), frozenset(native), tf32=major >= 8)
    if device.type != "cpu":
        return DeviceCapabilities(device.type, device.type)
    described = flags is not None
    flags = cpu_flags() if flags is None else flags
    native = ({"bf16"} if flags & BF16_CPU_FLAGS else set()) | ({"fp16"} if flags & FP16_CPU_FLAGS else set())
    speedup = cpu_bf16_speedup() if "bf16" in native and measure and not described else None
    return DeviceCapabilities("cpu", "a described CPU" if described else cpu_model_name(), frozenset(native),
                              bf16_speedup=speedup)


def choose_precision(name: str, capabilities: DeviceCapabilities, *, allow_emulated: bool = False,
                     key: str = "precision") -> Tuple[str, Optional[str]]:
    """(the precision to train in, a warning or None) for ``name`` on a device with ``capabilities``.

    Raises:
        ConfigError: for a name that is not a precision.
    """
    if name not in PRECISIONS:
        raise ConfigError(f"{key} '{name}' is not one of {', '.join(PRECISIONS)}")
    caps = capabilities
    if name == "auto":
        if "bf16" in caps.native and (caps.bf16_speedup is None or caps.bf16_speedup >= BF16_MIN_PROBE_SPEEDUP):
            return "bf16", None
        return "fp32", None
    if name == "fp32" or name in caps.native:
        return name, None
    units = {"bf16": "AVX512-BF16 or AMX" if caps.kind == "cpu" else "bf16 tensor cores (Ampere or newer)",
             "fp16": "AVX512-FP16 or AMX-FP16" if caps.kind == "cpu" else "fp16 units"}[name]
    cost = ("a DistilHuBERT update on a 2-core AVX2 CPU took ~90 s in fp16 and 7.3 s in fp32"
            if caps.kind == "cpu" else "several times the fp32 time")
    if allow_emulated:
        return name, (f"{key} {name}: {caps.name} has no {units}, so {name} autocast is emulated and slow ({cost}); "
                      "training in it because allow_emulated_precision is true")
    return "fp32", (f"{key} {name}: {caps.name} has no {units}, so {name} autocast would be emulated ({cost}); "
                    f"training in fp32 instead. Use '{key}: auto' (the preset default), or set "
                    f"allow_emulated_precision: true to run {name} anyway")


def resolve_precision(name: str, device: torch.device, *, flags: Optional[FrozenSet[str]] = None,
                      allow_emulated: bool = False, key: str = "precision",
                      log: Optional[logging.Logger] = None) -> str:
    """``auto``/``fp32``/``bf16``/``fp16`` to the precision to run on ``device`` (module docstring); a
    replaced or emulated choice is logged as a warning. ``flags`` describe a CPU other than this one,
    decided by its flags alone."""
    precision, warning = choose_precision(name, device_capabilities(device, flags=flags, measure=name == "auto"),
                                          allow_emulated=allow_emulated, key=key)
    if warning:
        (log or logger).warning(warning)
    return precision


def tf32_enabled(capabilities: DeviceCapabilities, requested: bool) -> bool:
    """Whether float32 matrix products and convolutions run on TF32 tensor cores: on CUDA devices that
    have them, unless turned off (``--tf32 false``). Elsewhere there is nothing to turn on."""
    return requested and capabilities.kind == "cuda" and capabilities.tf32


def set_float32_matmul(device: torch.device, requested: bool) -> bool:
    """Apply :func:`tf32_enabled` to torch's CUDA matmul and cuDNN settings; returns whether TF32 is on."""
    if device.type != "cuda":
        return False
    enabled = tf32_enabled(device_capabilities(device, measure=False), requested)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return enabled


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
            if round_index:  # round 0 warms up (primitive creation, page faults)
                times[dtype].append(time.perf_counter() - start)
    speedup = statistics.median(times[torch.float32]) / statistics.median(times[torch.bfloat16])
    _probe_cache["cpu"] = speedup
    return speedup


def fastest_precision(device: torch.device, *, flags: Optional[FrozenSet[str]] = None) -> str:
    """The precision ``auto`` means on ``device`` (module docstring): bf16 or fp32."""
    return choose_precision("auto", device_capabilities(device, flags=flags))[0]


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
