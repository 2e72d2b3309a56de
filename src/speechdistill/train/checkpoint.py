"""Checkpoint files: atomic writes, the last K kept, every RNG captured and restored.

A checkpoint is one ``torch.save`` file ``checkpoints/ckpt-<step>.pt`` holding a dict; its keys
are documented in :mod:`.run_state`. It is written to a temporary name in the same
directory, flushed to disk and renamed, so a run killed at any moment leaves either the previous
set of checkpoints or the new one, never a truncated file.
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def capture_rng_state() -> Dict[str, Any]:
    """The state of Python's, numpy's and torch's global generators (CPU and every visible GPU)."""
    state: Dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class preserved_rng:
    """Context manager that leaves the global generators as it found them (e.g. around validation)."""

    def __enter__(self) -> "preserved_rng":
        self._state = capture_rng_state()
        return self

    def __exit__(self, *exc: Any) -> None:
        restore_rng_state(self._state)


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step}.pt"


def list_checkpoints(directory: Path) -> List[Tuple[int, Path]]:
    """``(step, path)`` of every checkpoint in ``directory``, by increasing step."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: Path) -> Optional[Path]:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporaries left by a run killed while writing a checkpoint."""
    directory = Path(directory)
    if directory.is_dir():
        for path in directory.glob(".ckpt-*.tmp"):
            path.unlink(missing_ok=True)


class _ErrorKeepingWriter:
    """A binary file for ``torch.save`` that keeps the ``OSError`` of a failed write (torch.save hides it)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: Optional[OSError] = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(state: Dict[str, Any], directory: Path, step: int, keep: int) -> Path:
    """Write ``state`` as ``ckpt-<step>.pt`` atomically, then delete all but the last ``keep``."""
    directory = Path(directory)
    final = checkpoint_path(directory, step)
    tmp = None
    writer: Optional[_ErrorKeepingWriter] = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".ckpt-{step}.", suffix=".tmp", dir=str(directory))
        with os.fdopen(fd, "wb") as handle:
            writer = _ErrorKeepingWriter(handle)
            torch.save(state, writer)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except (OSError, RuntimeError) as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        # torch.save turns the OSError of a failed write (a full disk) into a RuntimeError without its errno
        # ("unexpected pos ..."): name the OSError the file raised instead.
        cause = exc if isinstance(exc, OSError) or writer is None or writer.error is None else writer.error
        raise CheckpointError(write_failure(final, cause, "the checkpoint") + "; the earlier checkpoints are kept "
                              "and a rerun resumes from the last one") from None
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def write_failure(path: Path, exc: BaseException, what: str) -> str:
    """One line saying that ``what`` could not be written to ``path``, why (full disk, read-only, ...) and the fix."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())[:200]
    folder = path.parent if path.suffix else path
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = f"make {folder} writable or choose another --output-dir"
    else:
        free = None
        try:
            free = shutil.disk_usage(next(p for p in [folder, *folder.parents] if p.exists())).free
        except (OSError, StopIteration):
            pass
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or (free is not None and free < 64 * 2 ** 20):
            left = f"{free / 2 ** 20:.1f} MiB left; " if free is not None else ""
            hint = f"free space on the disk of {folder} ({left}df -h {folder}) or choose another --output-dir"
        else:
            hint = f"check the disk of {folder}"
    return f"{path}: cannot write {what}: {reason}. Fix: {hint}"


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a checkpoint on the CPU. It holds pickled RNG states, so only load checkpoints you wrote."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path given to --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or foreign file
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}); delete it to "
                              "resume from the previous one") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path}: not a speechdistill trainer checkpoint (no 'model'/'step' entries)")
    return state
