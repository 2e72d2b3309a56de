"""Batches of whole utterances for inference (decoding, embedding, held-out scores), long ones kept in bounds.

An utterance longer than ``max_seconds`` is read only up to that length (a seek-bounded read of its
first ``max_seconds``) and reported with a message of its own; the batch budget grows at most to
``max_seconds``, never to the longest utterance of the data dir, so a single 5-hour entry neither
exhausts memory nor changes how every other utterance is batched.

:func:`run_each_on_failure` runs a batch and, when the batch fails (out of memory, a model error),
runs its utterances one by one, so that one bad utterance costs only its own output.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import torch

from .audio import SAMPLE_RATE
from .collate import collate_batch
from .dataset import AudioDataset
from .sampler import BucketBatchSampler

PathLike = Union[str, os.PathLike]
T = TypeVar("T")
DEFAULT_MAX_SECONDS = 300.0


@dataclass
class InferenceData:
    """``dataset`` and ``loader`` of the utterances; ``cut``: ``(utt, seconds)`` of those longer than
    ``max_seconds``, which are read only up to it; ``budget_seconds``: the batch budget used."""

    dataset: AudioDataset
    loader: torch.utils.data.DataLoader
    cut: List[Tuple[str, float]]
    max_seconds: Optional[float]
    budget_seconds: float

    def cut_message(self, key: str, seconds: float, option: str = "--max-seconds") -> str:
        return (f"utterance '{key}' is {seconds:.1f} s long: only its first {self.max_seconds:g} s are used "
                f"({option} {self.max_seconds:g}; raise it to use more, if memory allows)")


def inference_batches(data_dir: PathLike, *, min_samples: int, batch_seconds: float,
                      max_seconds: Optional[float] = DEFAULT_MAX_SECONDS, max_batch_size: Optional[int] = None,
                      num_workers: int = 1, pipe_timeout: Optional[float] = None) -> InferenceData:
    """Utterances of ``data_dir`` in length order (no shuffle), each at most ``max_seconds`` long
    (None: no limit, and the budget grows to the longest utterance).

    Utterances shorter than ``min_samples`` are left out (``dataset.skipped``). The budget is
    ``batch_seconds``, raised to ``max_seconds`` only when that is larger (one utterance must fit).
    """
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"--max-seconds must be positive, found {max_seconds}")
    if batch_seconds <= 0:
        raise ValueError(f"--batch-seconds must be positive, found {batch_seconds}")
    dataset = AudioDataset(data_dir, max_seconds=max_seconds, min_seconds=min_samples / SAMPLE_RATE,
                           random_crop=False, pipe_timeout=pipe_timeout)
    longest = int(dataset.cropped_num_samples.max())
    budget = max(int(round(batch_seconds * SAMPLE_RATE)), longest)
    cut: List[Tuple[str, float]] = []
    if dataset.max_samples is not None:
        for index in torch.nonzero(dataset.num_samples > dataset.max_samples).flatten().tolist():
            cut.append((dataset.key(index), int(dataset.num_samples[index]) / SAMPLE_RATE))
    sampler = BucketBatchSampler(dataset.cropped_num_samples.tolist(), batch_samples=budget,
                                 max_batch_size=max_batch_size, num_buckets=1, shuffle=False, even_shards=False)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_batch,
                                         num_workers=num_workers, prefetch_factor=2 if num_workers > 0 else None)
    return InferenceData(dataset, loader, cut, max_seconds, budget / SAMPLE_RATE)


def run_each_on_failure(batch: Dict[str, Any], run: Callable[[torch.Tensor, torch.Tensor, Sequence[str]], List[T]],
                        on_failure: Callable[[str, str], None]) -> List[Tuple[str, T]]:
    """``run(wavs [B, T], lengths [B], keys)`` -> one result per row; on an exception (out of memory,
    a model error), each utterance is run alone and those that still fail go to ``on_failure(key,
    reason)``. Returns ``(key, result)`` of the utterances that worked."""
    keys = list(batch["keys"])
    wavs, lengths = batch["wavs"], batch["lengths"]
    try:
        return list(zip(keys, run(wavs, lengths, keys)))
    except (RuntimeError, MemoryError, ValueError) as exc:
        if len(keys) == 1:
            on_failure(keys[0], _reason(exc, int(lengths[0])))
            return []
    done: List[Tuple[str, T]] = []
    for row, key in enumerate(keys):
        length = int(lengths[row])
        try:
            done.extend(zip([key], run(wavs[row:row + 1, :length], lengths[row:row + 1], [key])))
        except (RuntimeError, MemoryError, ValueError) as exc:
            on_failure(key, _reason(exc, length))
    return done


def _reason(exc: BaseException, samples: int) -> str:
    text = " ".join(str(exc).split())
    kind = "out of memory" if isinstance(exc, MemoryError) or "out of memory" in text.lower() \
        or "can't allocate" in text.lower() else "failed"
    return (f"{kind} on this utterance alone ({samples / SAMPLE_RATE:.1f} s): {type(exc).__name__}: {text[:300]}. "
            "Fix: lower --max-seconds (or --batch-seconds), or run on a device with more memory")


__all__ = ["DEFAULT_MAX_SECONDS", "InferenceData", "inference_batches", "run_each_on_failure"]
