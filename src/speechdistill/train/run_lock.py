"""One training run per experiment dir: an exclusive ``flock`` on ``<output_dir>/.lock``.

Two trainers in one directory (a rerun beside an orphan of a killed recipe, the same command
submitted twice) would overwrite each other's checkpoints, logs and ``metrics.jsonl``. The first
trainer holds the lock for its lifetime and writes who it is into the file (PID, host, start
time, command); a second one stops at once with a message naming the directory and that PID.
The kernel drops the lock when the holder exits, however it exits (``kill -9`` included), so a
stale ``.lock`` file never blocks a rerun. Rank 0 holds the lock for all ranks of a run.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

LOCK_NAME = ".lock"


class RunDirLockedError(ValueError):
    """Another training run holds the experiment dir; the message names it and its PID."""


class RunDirLock:
    """``flock(LOCK_EX | LOCK_NB)`` on ``<directory>/.lock``, released by :meth:`release` or at exit."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunDirLock":
        """Take the lock or raise :class:`RunDirLockedError` without waiting."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            pid = holder.get("pid", "unknown")
            where = f" on {holder['host']}" if holder.get("host") else ""
            since = f", started {holder['started']}" if holder.get("started") else ""
            command = f": {holder['command']}" if holder.get("command") else ""
            raise RunDirLockedError(
                f"{self.directory} is in use by another training run (PID {pid}{where}{since}{command}), which holds "
                f"{self.path}. Two runs in one experiment dir would overwrite each other's checkpoints and logs. "
                f"Fix: wait for it to end, or stop it (kill {pid}; it checkpoints on SIGTERM) and rerun, which "
                "resumes; or give this run another output dir") from None
        except OSError as exc:  # a filesystem without locks (some NFS mounts): train, but say so
            os.close(fd)
            print(f"speechdistill: WARNING: cannot lock {self.path} ({exc}); nothing stops a second training run in "
                  f"{self.directory}", file=sys.stderr)
            return self
        os.ftruncate(fd, 0)
        os.write(fd, (f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
                      f"started={time.strftime('%Y-%m-%dT%H:%M:%S')}\ncommand={' '.join(sys.argv)}\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def lock_run_dir(directory: Path, is_main: bool,
                 gather: Callable[[Optional[str]], List[Optional[str]]]) -> Optional[RunDirLock]:
    """Rank 0 takes the lock; every rank raises :class:`RunDirLockedError` when it could not.

    ``gather`` collects one object per rank (``dist_utils.all_gather_objects``), so all ranks stop
    together instead of waiting for a rank 0 that has gone."""
    lock, error = None, None
    if is_main:
        try:
            lock = RunDirLock(directory).acquire()
        except RunDirLockedError as exc:
            error = str(exc)
    errors = [e for e in gather(error) if e]
    if errors:
        raise RunDirLockedError(errors[0])
    return lock
