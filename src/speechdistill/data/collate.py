"""Padding a list of dataset items into one batch dict.

The batch holds:

* ``wavs``: ``[B, T]`` float32, zero-padded to the longest item (samples at 16 kHz);
* ``lengths``: ``[B]`` int64 valid samples per row;
* ``host_lengths``: the same as a list of Python ints, which stays on the host when the batch moves to a
  device (an encoder given them reads nothing back from the device);
* ``keys``: list of ``B`` utterance ids;
* ``position``: ``(epoch, batch_index)`` of this batch in the sampler's stream (for resuming);
* ``padding_fraction``: float, share of ``B * T`` that is padding (0 for an empty batch);
* ``audio_seconds``: float, seconds of real (unpadded) audio;
* ``failures``: ``[(key, message)]`` of items whose audio could not be read (dropped from the batch);
* ``item_failed``: list of bools in the order the sampler asked for the items (True = dropped),
  so a trainer can count failures that come in a row across batches;
* every extra field a task's dataset adds: numbers become a ``[B]`` tensor (int64 or float32),
  1-D sequences become a ``[B, L]`` tensor padded with ``-1`` (integers) or ``0.0`` (floats) plus
  ``<name>_lengths`` ``[B]`` int64, strings and anything else stay a list.

When every item failed, ``B`` is 0 and ``wavs`` is ``[0, 0]``.
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from .audio import SAMPLE_RATE
from .dataset import LoadFailure

_BASE_KEYS = ("key", "wav", "ref")
INT_PAD = -1
FLOAT_PAD = 0.0


def _collate_field(name: str, values: List[Any]) -> Dict[str, Any]:
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return {name: torch.tensor([bool(v) for v in values], dtype=torch.bool)}
    if all(isinstance(v, numbers.Integral) for v in values):
        return {name: torch.tensor([int(v) for v in values], dtype=torch.int64)}
    if all(isinstance(v, numbers.Real) for v in values):
        return {name: torch.tensor([float(v) for v in values], dtype=torch.float32)}
    if values and all(isinstance(v, (list, tuple, np.ndarray, torch.Tensor)) and not isinstance(v, str)
                      for v in values):
        arrays = [np.asarray(v) for v in values]
        if all(a.ndim == 1 for a in arrays):
            integer = all(a.dtype.kind in "iub" or a.size == 0 for a in arrays)
            dtype, pad = (torch.int64, INT_PAD) if integer else (torch.float32, FLOAT_PAD)
            longest = max(len(a) for a in arrays)
            out = torch.full((len(arrays), longest), pad, dtype=dtype)
            for row, array in enumerate(arrays):
                out[row, :len(array)] = torch.as_tensor(array, dtype=dtype)
            lengths = torch.tensor([len(a) for a in arrays], dtype=torch.int64)
            return {name: out, f"{name}_lengths": lengths}
    return {name: list(values)}


def pad_waveforms(waveforms: Sequence[Union[np.ndarray, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """1-D waveforms (numpy arrays or tensors) -> ``(wavs [B, T_max] float32 zero-padded, lengths [B] int64
    samples)``; no waveforms give ``[0, 0]`` and ``[0]``."""
    lengths = torch.tensor([len(w) for w in waveforms], dtype=torch.int64)
    wavs = torch.zeros(len(waveforms), int(lengths.max()) if len(waveforms) else 0, dtype=torch.float32)
    for row, wav in enumerate(waveforms):
        wavs[row, :len(wav)] = torch.as_tensor(wav, dtype=torch.float32)
    return wavs, lengths


def collate_batch(items: Sequence[Union[Dict[str, Any], LoadFailure]], sample_rate: int = SAMPLE_RATE
                  ) -> Dict[str, Any]:
    """Pad the readable items into a batch (see the module docstring for the keys and shapes)."""
    good = [item for item in items if not isinstance(item, LoadFailure)]
    failures = [(item.key, item.message) for item in items if isinstance(item, LoadFailure)]
    refs = [item.ref if isinstance(item, LoadFailure) else item["ref"] for item in items]
    wavs, lengths = pad_waveforms([item["wav"] for item in good])
    total = wavs.numel()
    real = int(lengths.sum()) if len(good) else 0
    batch: Dict[str, Any] = {
        "wavs": wavs,
        "lengths": lengths,
        "host_lengths": [len(item["wav"]) for item in good],
        "keys": [item["key"] for item in good],
        "position": (refs[0].epoch, refs[0].batch_index) if refs else (0, 0),
        "padding_fraction": 1.0 - real / total if total else 0.0,
        "audio_seconds": real / sample_rate,
        "failures": failures,
        "item_failed": [isinstance(item, LoadFailure) for item in items],
    }
    extra_names = [name for name in (good[0] if good else {}) if name not in _BASE_KEYS]
    for name in extra_names:
        batch.update(_collate_field(name, [item[name] for item in good]))
    return batch
