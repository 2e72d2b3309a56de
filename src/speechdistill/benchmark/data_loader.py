"""The training input path as the trainer runs it: DataLoader workers reading FLAC crops.

* :func:`loader_throughput`: audio-seconds per second that ``AudioDataset`` (seeking crops) +
  ``BucketBatchSampler`` + ``collate_batch`` deliver through a DataLoader with N worker
  processes, on FLAC files.
* :func:`worker_memory_growth`: how much private memory one forked DataLoader worker gains
  by touching the index entry (key, audio source, segment, length) of every utterance of a
  data dir. Forked workers share the parent's pages until they write them; an index of
  Python objects is written by every reference-count change, so it ends up copied into each
  worker, while flat arrays stay shared.
* :func:`write_index_dir`: a data dir of N utterances in VoxCeleb2's naming (for the memory
  measure; every entry points at one small FLAC file).
"""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import soundfile
import torch

from ..data.collate import collate_batch
from ..data.dataset import AudioDataset
from ..data.sampler import BucketBatchSampler

SAMPLE_RATE = 16000
PathLike = Union[str, os.PathLike]


def private_bytes(pid: Union[int, str] = "self") -> int:
    """Private memory of a process (``Private_Clean + Private_Dirty`` of /proc/<pid>/smaps_rollup), in bytes."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def write_index_dir(directory: PathLike, count: int, *, seed: int = 0) -> Path:
    """A data dir of ``count`` utterances ``id1NNNN/<video>/NNNNN.wav`` (wav.scp, utt2spk, utt2num_samples).

    Every entry points at the same 0.5-s FLAC file, ``<directory>/audio.flac``; lengths are drawn
    between 4 and 20 s (the sampler never reads audio).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    audio = directory / "audio.flac"
    rng = np.random.default_rng(seed)
    soundfile.write(str(audio), (0.1 * rng.standard_normal(SAMPLE_RATE // 2)).astype(np.float32), SAMPLE_RATE,
                    subtype="PCM_16")
    per_video, per_speaker = 8, 200
    lengths = rng.integers(4 * SAMPLE_RATE, 20 * SAMPLE_RATE, size=count)
    with open(directory / "wav.scp", "w", encoding="utf-8") as wav, \
            open(directory / "utt2spk", "w", encoding="utf-8") as utt2spk, \
            open(directory / "utt2num_samples", "w", encoding="utf-8") as counts:
        for index in range(count):
            speaker = f"id1{index // per_speaker:04d}"
            key = f"{speaker}/v{index // per_video:010d}/{index % per_video + 1:05d}.wav"
            wav.write(f"{key} {audio}\n")
            utt2spk.write(f"{key} {speaker}\n")
            counts.write(f"{key} {lengths[index]}\n")
    return directory


class _TouchEveryItem(torch.utils.data.Dataset):
    """One item: inside the worker, private memory before and after touching every index entry."""

    def __init__(self, dataset: AudioDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return 1

    def __getitem__(self, _: int) -> Dict[str, float]:
        dataset = self.dataset
        gc.collect()
        before = private_bytes()
        started = time.perf_counter()
        total = 0
        for index in range(len(dataset)):
            key, value, segment = dataset.source(index)
            total += len(key) + len(value) + int(dataset.num_samples[index]) + (segment is not None)
            for column in dataset.fields.values():
                column[index]
        gc.collect()  # a full collection visits every tracked object, as a long-running worker's would
        return {"before": before, "after": private_bytes(), "seconds": time.perf_counter() - started,
                "checksum": total}


def worker_memory_growth(data_dir: PathLike, *, fields: Optional[Dict[str, Dict[str, Any]]] = None
                         ) -> Dict[str, float]:
    """Private memory a forked DataLoader worker gains by touching every item of ``data_dir``'s index.

    Returns ``utterances``, ``load_seconds`` (building the index), ``touch_seconds``,
    ``worker_before_mb``, ``worker_after_mb``, ``growth_mb`` (MiB).
    """
    started = time.perf_counter()
    dataset = AudioDataset(data_dir, fields=fields)
    load_seconds = time.perf_counter() - started
    gc.collect()
    loader = torch.utils.data.DataLoader(_TouchEveryItem(dataset), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork")
    (measured,) = list(loader)
    mib = 2 ** 20
    return {"utterances": len(dataset), "load_seconds": load_seconds, "touch_seconds": measured["seconds"],
            "worker_before_mb": measured["before"] / mib, "worker_after_mb": measured["after"] / mib,
            "growth_mb": (measured["after"] - measured["before"]) / mib}


def loader_throughput(data_dir: PathLike, *, workers: int = 2, crop_seconds: float = 4.0,
                      batch_seconds: float = 64.0, batches: int = 20, seed: int = 0) -> Dict[str, float]:
    """Audio-seconds per wall second delivered by a DataLoader with ``workers`` processes.

    The trainer's path: ``AudioDataset`` (random crops of ``crop_seconds``, read by seeking),
    ``BucketBatchSampler`` (budget ``batch_seconds``), ``collate_batch``. Timed from the first
    batch (worker start-up excluded) over ``batches`` batches, cycling epochs as needed.
    """
    dataset = AudioDataset(data_dir, max_seconds=crop_seconds, seed=seed)
    sampler = BucketBatchSampler(dataset.cropped_num_samples.tolist(), batch_samples=int(batch_seconds * SAMPLE_RATE),
                                 num_buckets=1, shuffle=True, seed=seed)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_batch,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         prefetch_factor=2 if workers > 0 else None)
    audio, failures, done = 0.0, 0, 0
    started: Optional[float] = None
    epoch = 0
    try:
        while done <= batches:
            sampler.set_epoch(epoch)
            for batch in loader:
                if started is None:
                    started = time.perf_counter()  # workers are up and the pipeline is full
                else:
                    audio += batch["audio_seconds"]
                    done += 1
                failures += len(batch["failures"])
                if done >= batches:
                    break
            epoch += 1
            if done >= batches:
                break
    finally:
        del loader
    elapsed = time.perf_counter() - (started or time.perf_counter())
    return {"workers": workers, "batches": done, "audio_seconds": audio, "seconds": elapsed,
            "audio_seconds_per_second": audio / max(elapsed, 1e-9), "failures": failures,
            "crop_seconds": crop_seconds}


__all__: List[str] = ["private_bytes", "write_index_dir", "worker_memory_growth", "loader_throughput"]
