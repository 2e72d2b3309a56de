"""Process-level pieces of a training run: seeding, deterministic algorithms, peak memory, a writable output
dir, and shutting down DataLoader workers."""
from __future__ import annotations

import contextlib
import os
import random
import resource
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from . import checkpoint as ckpt


class TrainingError(ValueError):
    """The run cannot go on (diverged, unreadable data); the message says where and what to do."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def shut_down_workers(loader: Optional[torch.utils.data.DataLoader]) -> None:
    """Stop a DataLoader's persistent workers now rather than at interpreter exit.

    Workers ignore SIGTERM (see :func:`.loader.ignore_stop_signals`), and at exit ``multiprocessing``
    terminates leftover daemonic workers with SIGTERM and waits for them, which would never end.
    The DataLoader's own shutdown lets them exit cleanly; any that do not are killed.
    """
    iterator = getattr(loader, "_iterator", None) if loader is not None else None
    if iterator is None:
        return
    workers = list(getattr(iterator, "_workers", ()))
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)
    loader._iterator = None


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms for the body (cuBLAS needs its workspace config before its first use in the
    process), then the previous settings."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far in MiB: on CUDA what tensors took on the device, elsewhere the process's peak
    resident memory."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def check_writable(directory: Path) -> None:
    """Create the output dir and write a file in it, or fail naming the dir (read-only, full, no permission)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise TrainingError(ckpt.write_failure(directory, exc, "the run's output (--output-dir)")) from None


def one_line(text: str) -> str:
    return " ".join(str(text).split())
