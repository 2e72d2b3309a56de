"""The trainer's data pipeline for one data dir: dataset (read, random crop), length-bucketed sampler
(batches are budgets of seconds of padded audio), DataLoader (workers, pinned memory, collation)."""
from __future__ import annotations

import signal
from typing import Any, Mapping, Optional, Tuple

import torch

from ..data.audio import SAMPLE_RATE
from ..data.collate import collate_batch
from ..data.dataset import AudioDataset
from ..data.sampler import BucketBatchSampler
from .config import TrainerConfig


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker init: Slurm signals every process of a job step, workers included. A worker
    killed by SIGTERM makes the DataLoader raise in the training process before it can checkpoint, so
    workers ignore the stop signals and leave the stopping to the training process (which shuts
    them down on exit)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def build_loader(config: TrainerConfig, data_dir: str, *, training: bool, world_size: int = 1, rank: int = 0,
                 fields: Optional[Mapping[str, Mapping[str, Any]]] = None, extras: Optional[Any] = None,
                 pin_memory: bool = False) -> Tuple[AudioDataset, BucketBatchSampler, torch.utils.data.DataLoader]:
    """(dataset, sampler, loader) of ``data_dir`` as ``config`` says. Training batches are shuffled length
    buckets sharded evenly over ``world_size`` ranks; validation batches come from one length-sorted bucket
    (full batches, least padding). ``fields``: extra per-utterance values (``Task.item_fields``); ``extras``:
    what a worker adds to each item (``Task.item_extras``)."""
    dataset = AudioDataset(data_dir, max_seconds=config.max_seconds, min_seconds=config.min_seconds,
                           seed=config.seed, fields=fields, pipe_timeout=config.pipe_timeout, extras=extras)
    sampler = BucketBatchSampler(dataset.cropped_num_samples.tolist(),
                                 batch_samples=int(round(config.batch_seconds * SAMPLE_RATE)),
                                 max_batch_size=config.max_batch_size,
                                 num_buckets=config.num_buckets if training else 1, shuffle=training,
                                 seed=config.seed, num_replicas=world_size, rank=rank, even_shards=training)
    workers = config.num_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_batch, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=workers > 0, prefetch_factor=config.prefetch_factor if workers > 0 else None,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
        # a private generator: creating an iterator must not draw from torch's global RNG, or a resumed
        # run (which creates one mid-epoch) would drift from an uninterrupted one
        generator=torch.Generator().manual_seed(config.seed))
    return dataset, sampler, loader
