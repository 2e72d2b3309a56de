"""Batches filled up to a budget of audio seconds, bucketed by length, sharded over ranks, resumable.

How an epoch's batches are made (a pure function of ``seed``, ``epoch`` and the lengths, so every
rank computes the same list and a resume recomputes it exactly):

1. Utterances are sorted by cropped length and split into ``num_buckets`` buckets of equal count
   (once, at construction); a bucket too small to fill one batch is merged with the next longer
   one (small data sets would otherwise get batches of one utterance). Batches never mix
   buckets, which bounds the padding.
2. Each epoch, the order inside every bucket is shuffled with ``default_rng((seed, epoch))`` and
   batches are filled greedily in that order while ``batch_size * longest <= budget``: the budget
   counts *padded* samples, i.e. what the model really processes and holds in memory.
3. The list of all batches is shuffled with the same generator.
4. For ``num_replicas`` ranks, the list is padded by repeating its first batches until its length is
   a multiple of ``num_replicas`` (so every rank gets the same number of batches, which DDP needs),
   and rank ``r`` takes batches ``r, r + num_replicas, ...``. Consecutive global batches therefore go
   to different ranks: one optimizer step of ``W`` ranks sees exactly the batches that one process
   with ``W`` accumulation steps would see.

The budget is per rank and per micro-batch; the global batch of one optimizer step is
``batch_seconds * world_size * accum_steps`` at most.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from .dataset import ItemRef


class BucketBatchSampler(torch.utils.data.Sampler):
    """Yields lists of :class:`ItemRef` (one list per batch) for a ``DataLoader(batch_sampler=...)``.

    Args:
        lengths: ``[N]`` cropped length of every utterance (samples).
        batch_samples: budget of one batch in padded samples (``batch_seconds * 16000``).
        max_batch_size: optional cap on utterances per batch.
        num_buckets: number of length buckets (1 = no bucketing).
        shuffle: shuffle inside buckets and the batch order every epoch; ``False`` gives a fixed
            length-sorted order (validation).
        seed: seed of the shuffles.
        num_replicas, rank: DDP world size and this process's rank.
        even_shards: pad the batch list so every rank gets the same number of batches (training);
            ``False`` gives every batch exactly once over all ranks (validation).

    Resuming: the sampler starts at ``(epoch, batch_index)`` set by :meth:`load_state_dict` or
    :meth:`set_epoch`. A DataLoader prefetches, so the position of the batch a trainer has
    *consumed* is the ``position`` entry of that batch (see ``collate_batch``), not how far this
    sampler has been iterated.
    """

    def __init__(self, lengths: Sequence[int], *, batch_samples: int, max_batch_size: Optional[int] = None,
                 num_buckets: int = 20, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 even_shards: bool = True) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1 or len(self.lengths) == 0:
            raise ValueError("BucketBatchSampler needs a non-empty 1-D list of lengths")
        if int(self.lengths.max()) > batch_samples:
            raise ValueError(f"the batch budget ({batch_samples} samples = {batch_samples / 16000:.2f} s at 16 kHz) "
                             f"is smaller than the longest cropped utterance ({int(self.lengths.max())} samples = "
                             f"{int(self.lengths.max()) / 16000:.2f} s); raise batch_seconds or lower max_seconds")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, found {max_batch_size}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be at least 1, found {num_buckets}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, found {seed}")
        self.batch_samples = int(batch_samples)
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.even_shards = even_shards
        by_length = np.lexsort((np.arange(len(self.lengths)), self.lengths))  # ties keep data-dir order
        self.buckets = self._merge_small(np.array_split(by_length, min(num_buckets, len(by_length))))
        self.epoch = 0
        self.start_index = 0
        self._cache: Optional[tuple] = None

    def _merge_small(self, buckets: List[np.ndarray]) -> List[np.ndarray]:
        merged: List[np.ndarray] = []
        current: List[int] = []
        for bucket in buckets:
            current.extend(bucket.tolist())
            if current and len(current) >= self.batch_samples // int(self.lengths[current[-1]]):
                merged.append(np.asarray(current, dtype=np.int64))
                current = []
        if current:
            if merged:
                merged[-1] = np.concatenate([merged[-1], np.asarray(current, dtype=np.int64)])
            else:
                merged.append(np.asarray(current, dtype=np.int64))
        return merged

    def _fill(self, order: np.ndarray) -> List[List[int]]:
        batches: List[List[int]] = []
        current: List[int] = []
        longest = 0
        for index in order.tolist():
            length = int(self.lengths[index])
            grown = max(longest, length)
            over_budget = (len(current) + 1) * grown > self.batch_samples
            over_count = self.max_batch_size is not None and len(current) + 1 > self.max_batch_size
            if current and (over_budget or over_count):
                batches.append(current)
                current, grown = [], length
            current.append(index)
            longest = grown
        if current:
            batches.append(current)
        return batches

    def global_batches(self, epoch: int) -> List[List[int]]:
        """All batches of ``epoch`` (utterance indices) before sharding, in the order they are served."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        batches: List[List[int]] = []
        if self.shuffle:
            generator = np.random.default_rng((self.seed, epoch))
            for bucket in self.buckets:
                batches.extend(self._fill(generator.permutation(bucket)))
            batches = [batches[i] for i in generator.permutation(len(batches))]
        else:
            for bucket in self.buckets:
                batches.extend(self._fill(bucket))
        self._cache = (epoch, batches)
        return batches

    def rank_batches(self, epoch: int) -> List[List[int]]:
        """The batches this rank serves in ``epoch``, in order."""
        batches = self.global_batches(epoch)
        if self.even_shards and len(batches) % self.num_replicas:
            missing = self.num_replicas - len(batches) % self.num_replicas
            batches = batches + [batches[i % len(batches)] for i in range(missing)]
        return batches[self.rank::self.num_replicas]

    def __len__(self) -> int:
        """Number of batches this rank serves in the current epoch (from its start, ignoring a resume)."""
        return len(self.rank_batches(self.epoch))

    def __iter__(self) -> Iterator[List[ItemRef]]:
        epoch, start = self.epoch, self.start_index
        for position, batch in enumerate(self.rank_batches(epoch)[start:], start=start):
            yield [ItemRef(epoch, position, index) for index in batch]

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` from its first batch on the next iteration."""
        self.epoch = int(epoch)
        self.start_index = 0

    def state_dict(self) -> Dict[str, Any]:
        """Where the next iteration starts: ``{"epoch", "batch_index"}``."""
        return {"epoch": self.epoch, "batch_index": self.start_index}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Start the next iteration at batch ``state["batch_index"]`` of epoch ``state["epoch"]``."""
        self.epoch = int(state["epoch"])
        self.start_index = int(state["batch_index"])
