"""Compressed audio (VoxCeleb2's m4a/AAC) -> 16 kHz mono FLAC files, once, with ffmpeg.

Reading m4a through an ``ffmpeg ... |`` pipe costs an ffmpeg start and a full AAC decode on
every read: measuring VoxCeleb2 dev's 1,092,009 files decodes all of them, and every training
crop decodes its whole file. Converted once, the FLAC files give their length from the header
and a crop decodes only itself.

:func:`convert_to_flac` runs ``nj`` ffmpeg processes at a time with a progress bar (files/s,
ETA). Each file is written under a hidden temporary name and renamed when complete, so a run
that is interrupted and started again converts only what is missing (or older than its
source). A file ffmpeg cannot convert is returned with the reason and does not stop the others.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tqdm import tqdm

from .common import CorpusError

logger = logging.getLogger("speechdistill.corpora")
SAMPLE_RATE = 16000
DEFAULT_TIMEOUT = 600.0  # seconds per file: a VoxCeleb2 file converts in well under a second


@dataclass(frozen=True)
class ConversionJob:
    """Convert ``source`` (any format ffmpeg reads) to the FLAC file ``target``; ``key`` names it in messages."""

    key: str
    source: str
    target: str


@dataclass(frozen=True)
class Conversion:
    """Outcome of a job: ``error`` is None on success; ``converted`` False when an earlier run's file was kept."""

    key: str
    target: str
    error: Optional[str] = None
    converted: bool = False


def find_ffmpeg() -> str:
    """The ffmpeg executable, or a :class:`CorpusError` saying how to install it."""
    found = shutil.which("ffmpeg")
    if found is None:
        raise CorpusError("ffmpeg not found on PATH; VoxCeleb2's m4a files are converted to FLAC with it. Fix: "
                          "apt-get install ffmpeg (tools/install_system.sh does it when run as root), or put an "
                          "ffmpeg on PATH")
    return found


def flac_command(ffmpeg: str, source: str, target: str) -> List[str]:
    """ffmpeg arguments writing ``source`` as 16-bit, 16 kHz, mono FLAC to ``target``."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-v", "error", "-y", "-i", source, "-vn", "-ac", "1", "-ar",
            str(SAMPLE_RATE), "-c:a", "flac", "-sample_fmt", "s16", "-f", "flac", target]


def _is_done(job: ConversionJob) -> bool:
    try:
        target = os.stat(job.target)
    except FileNotFoundError:
        return False
    return target.st_size > 0 and target.st_mtime >= os.stat(job.source).st_mtime


def convert_one(job: ConversionJob, ffmpeg: str, timeout: Optional[float] = DEFAULT_TIMEOUT) -> Conversion:
    """Convert one file (or keep an up-to-date earlier result); never raises for a bad source."""
    try:
        if _is_done(job):
            return Conversion(job.key, job.target)
        target = Path(job.target)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        try:
            done = subprocess.run(flac_command(ffmpeg, job.source, str(temporary)), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            temporary.unlink(missing_ok=True)
            return Conversion(job.key, job.target, f"ffmpeg did not finish converting {job.source} within "
                                                   f"{timeout:g} s; killed it")
        if done.returncode != 0 or not temporary.is_file() or temporary.stat().st_size == 0:
            temporary.unlink(missing_ok=True)
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            why = "; ".join(line.strip() for line in lines[-3:]) or "no message"
            return Conversion(job.key, job.target, f"ffmpeg could not convert {job.source} (exit code "
                                                   f"{done.returncode}: {why}). Fix: check the file (ffprobe FILE) "
                                                   "or copy it again from the corpus archive")
        os.replace(temporary, target)
        return Conversion(job.key, job.target, converted=True)
    except OSError as exc:  # full disk, no permission on the output dir, source vanished
        return Conversion(job.key, job.target, f"cannot write {job.target}: {exc.strerror or exc}. Fix: check the "
                                               "free space and permissions of the FLAC directory")


def _convert_star(args: Tuple[ConversionJob, str, Optional[float]]) -> Conversion:
    return convert_one(*args)


def convert_to_flac(jobs: Sequence[ConversionJob], *, nj: int = 1, timeout: Optional[float] = DEFAULT_TIMEOUT,
                    desc: str = "m4a -> flac") -> List[Conversion]:
    """Run ``jobs`` with ``nj`` parallel ffmpeg processes; results in the order of ``jobs``."""
    ffmpeg = find_ffmpeg()
    todo = [(job, ffmpeg, timeout) for job in jobs]
    results: List[Conversion] = []
    converted = failed = 0
    with tqdm(total=len(todo), desc=desc, unit="file", file=sys.stderr, dynamic_ncols=True, disable=None,
              mininterval=0.5 if sys.stderr.isatty() else 30.0) as bar:
        def collect(result: Conversion) -> None:
            nonlocal converted, failed
            results.append(result)
            converted += result.converted
            failed += result.error is not None
            bar.update(1)
            bar.set_postfix_str(f"converted {converted}, kept {len(results) - converted - failed}, failed {failed}",
                                refresh=False)

        if nj <= 1 or len(todo) < 2:
            for args in todo:
                collect(_convert_star(args))
        else:
            # the work is in the ffmpeg processes; a thread per running ffmpeg only starts and waits for it
            with ThreadPoolExecutor(max_workers=nj) as pool:
                for start in range(0, len(todo), 1024):  # bounded: a million pending futures would not be
                    for result in pool.map(_convert_star, todo[start:start + 1024]):
                        collect(result)
    logger.info("%s: %d converted, %d kept from an earlier run, %d failed", desc, converted,
                len(results) - converted - failed, failed)
    return results


__all__ = ["ConversionJob", "Conversion", "convert_to_flac", "convert_one", "find_ffmpeg", "flac_command"]
