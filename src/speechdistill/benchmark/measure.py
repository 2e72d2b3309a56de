"""Timing, peak memory and the device's own matmul limit, the measuring tools of the benchmark.

Every figure is the median of ``repeats`` timed calls made after ``warmup`` untimed ones, and
the calls of the things compared are interleaved (a, b, c, a, b, c, ...): a change in machine
load during the run then hits all of them alike, so their ratios stay meaningful on a shared
machine even when the absolute figures do not.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F

from ..models.profiling import measure as interleaved_medians
from .. import kernels

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field_name: str) -> Optional[int]:
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _release_free_heap() -> None:
    """Give the C heap's free pages back to the OS, so that RSS counts live memory only."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        trim = getattr(libc, "malloc_trim", None)
        if trim is not None:
            trim(0)
    except OSError:
        return


@dataclass
class PeakMemory:
    """Peak memory a block of work adds above what was in use when it started, in bytes.

    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats`` minus the memory allocated
    at the start. CPU: Linux's resident-set high-water mark (``VmHWM``, reset by writing 5 to
    ``/proc/self/clear_refs``) minus the resident set at the start, after returning the heap's
    free pages to the OS. ``bytes`` stays None where the platform offers neither.
    """

    device: torch.device
    bytes: Optional[int] = None
    method: str = ""
    _start: int = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
            return self
        _release_free_heap()
        try:
            PROC_CLEAR_REFS.write_text("5")
        except OSError:
            self.method = "unavailable (no writable /proc/self/clear_refs)"
            return self
        start = _status_kib("VmRSS")
        if start is None:
            self.method = "unavailable (no VmRSS in /proc/self/status)"
            return self
        self._start = start * 1024
        self.method = "rss high-water mark (VmHWM) delta"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        if not self.method.startswith("rss"):
            return
        peak = _status_kib("VmHWM")
        if peak is not None:
            self.bytes = max(peak * 1024 - self._start, 0)


class MemoryOnFirstCall:
    """Wraps a callable so that its first call (the warm-up) records its peak memory."""

    def __init__(self, run: Callable[[], Any], device: torch.device) -> None:
        self.run = run
        self.device = device
        self.memory: Optional[PeakMemory] = None

    def __call__(self) -> Any:
        if self.memory is None:
            with PeakMemory(self.device) as memory:
                result = self.run()
            self.memory = memory
            return result
        return self.run()


@dataclass
class Timing:
    """Seconds of each timed call; ``median`` is what the benchmark reports."""

    seconds: List[float] = field(default_factory=list)
    peak_memory_bytes: Optional[int] = None
    memory_method: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_interleaved(runs: Dict[str, Callable[[], Any]], device: torch.device, *, repeats: int, warmup: int,
                     progress: Optional[Callable[[], None]] = None, memory: bool = False) -> Dict[str, Timing]:
    """Median-ready timings of several callables run round-robin after ``warmup`` rounds.

    With ``memory`` (needs ``warmup >= 1``) the first, untimed call of each records its peak memory.
    """
    wrapped: Dict[str, Callable[[], Any]] = {}
    for name, run in runs.items():
        wrapped[name] = MemoryOnFirstCall(run, device) if memory and warmup > 0 else run
        if progress is not None:
            wrapped[name] = _Ticking(wrapped[name], progress)
    # warm-up calls tick the progress bar too, so that it tracks wall time
    raw = interleaved_medians(wrapped, device, repeats=repeats, warmup=warmup)
    result: Dict[str, Timing] = {}
    for name, speed in raw.items():
        timing = Timing(seconds=list(speed.seconds_per_pass))
        inner = wrapped[name]
        inner = getattr(inner, "inner", inner)
        if isinstance(inner, MemoryOnFirstCall) and inner.memory is not None:
            timing.peak_memory_bytes = inner.memory.bytes
            timing.memory_method = inner.memory.method
        result[name] = timing
    return result


class _Ticking:
    """Calls ``tick`` after each call of ``inner`` (progress bars)."""

    def __init__(self, inner: Callable[[], Any], tick: Callable[[], None]) -> None:
        self.inner = inner
        self.tick = tick

    def __call__(self) -> Any:
        result = self.inner()
        self.tick()
        return result


def _linear_kernels(device: torch.device, dtype: torch.dtype, size: int) -> List[kernels.Kernel]:
    """The registered ``linear`` kernels that run a frozen inference product of two [size, size] matrices here,
    but for those of the ``frozen`` backend (``F.linear`` on a kept weight: the ``linear`` entry)."""
    request = kernels.Request("linear", device, dtype, frozen=True, grad=False, size=size ** 3)
    return [k for k in kernels.kernels("linear") if k.backend != "frozen" and k.applies(request)]


def matmul_kernel_names(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 4096) -> List[str]:
    """Names of the products :func:`dense_products` times on ``device`` for [size, size] operands in ``dtype``."""
    return (["linear"] + (["conv1d_k1"] if device.type == "cpu" else [])
            + [k.name for k in _linear_kernels(device, dtype, size)])


def dense_products(a: torch.Tensor, b: torch.Tensor) -> Dict[str, Callable[[], torch.Tensor]]:
    """``a @ b^T`` ([n, n] each) by every product the device has: ``linear`` (``F.linear``), on CPUs
    ``conv1d_k1`` (the same product as a kernel-1 ``conv1d``, returned transposed: [1, n, n]), and every
    registered ``linear`` kernel that applies to a frozen inference product here (e.g. a product on a
    packed weight, as frozen models run on CPUs: :mod:`speechdistill.kernels.linear`)."""
    runs: Dict[str, Callable[[], torch.Tensor]] = {"linear": lambda: F.linear(a, b)}
    if a.device.type == "cpu":
        channels_first, weight = a.t().contiguous().unsqueeze(0), b.unsqueeze(-1)  # [1, n, n], [n, n, 1]
        runs["conv1d_k1"] = lambda: F.conv1d(channels_first, weight)
    owner, frozen = torch.nn.Module(), b.detach()
    for kernel in _linear_kernels(a.device, a.dtype, a.shape[0]):
        runs[kernel.name] = lambda kernel=kernel: kernel.run(a, owner, "peak", (frozen,), lambda p: (p[0], None), False)
    return runs


def matmul_flops_by_kernel(device: torch.device, sizes: Dict[torch.dtype, int], *, repeats: int, warmup: int = 1,
                           progress: Optional[Callable[[], None]] = None) -> Dict[torch.dtype, Dict[str, float]]:
    """Dense n x n x n product FLOP/s (2 n^3 per product) for each dtype and kernel, interleaved medians.

    Kernels: those of :func:`dense_products`. They differ by 2x on some CPUs (``F.linear``'s float32 GEMM
    does not use AVX-512 on AMD processors: 197 vs 363 GFLOP/s for the packed kernel on an EPYC), so the
    fastest is the device's limit. ``sizes`` maps each dtype to its n.
    """
    generator = torch.Generator().manual_seed(0)
    runs: Dict[str, Callable[[], Any]] = {}
    for dtype, size in sizes.items():
        a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        for kernel, run in dense_products(a, b).items():
            runs[f"{dtype}/{kernel}"] = run
    timings = time_interleaved(runs, device, repeats=repeats, warmup=warmup, progress=progress)
    result: Dict[torch.dtype, Dict[str, float]] = {}
    for name, timing in timings.items():
        dtype_name, kernel = name.split("/", 1)
        dtype = next(d for d in sizes if str(d) == dtype_name)
        result.setdefault(dtype, {})[kernel] = 2.0 * sizes[dtype] ** 3 / timing.median
    return result


def matmul_flops(device: torch.device, sizes: Dict[torch.dtype, int], *, repeats: int, warmup: int = 1,
                 progress: Optional[Callable[[], None]] = None) -> Dict[torch.dtype, float]:
    """The device's dense-product limit per dtype: the fastest kernel of :func:`matmul_flops_by_kernel`."""
    by_kernel = matmul_flops_by_kernel(device, sizes, repeats=repeats, warmup=warmup, progress=progress)
    return {dtype: max(flops.values()) for dtype, flops in by_kernel.items()}


@contextlib.contextmanager
def torch_threads(count: Optional[int]) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (unchanged when None), then restore."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_average() -> Optional[List[float]]:
    """1, 5 and 15 minute load averages (None where /proc/loadavg is missing)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None
