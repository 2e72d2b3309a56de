"""Training input: utterances of a Kaldi data dir, read with ``read_audio`` and cropped at random.

The dataset only decodes and crops; batching is the job of
:class:`speechdistill.data.sampler.BucketBatchSampler` and padding that of
:func:`speechdistill.data.collate.collate_batch`.

Items are addressed by :class:`ItemRef` ``(epoch, batch_index, index)`` rather than by a bare
index: the crop of utterance ``index`` in epoch ``epoch`` is drawn from a generator seeded with
``(seed, epoch, index)`` alone, so it is the same in any DataLoader worker, on any rank, and
after a resume, and persistent workers need no notice of the epoch changing.

Required files: ``wav.scp`` and ``utt2num_samples`` (its counts drive the seconds budgets of the
sampler before any audio is read); ``segments`` is used when present. Utterances shorter than
``min_seconds`` are left out and listed in :attr:`AudioDataset.skipped`. Audio that cannot be
read at training time does not stop the run: the item comes back as a :class:`LoadFailure`,
which the collate function drops and reports.

A crop is read, not cut: its offset is drawn from the ``utt2num_samples`` count, and only that
window of a plain file is decoded (pipes and archive entries are decoded whole). Audio shorter
than its count fails with both numbers. The index (keys, audio sources, segments, lengths,
fields) lives in flat numpy arrays (:mod:`speechdistill.data.flat`), which forked DataLoader
workers share with the training process instead of copying.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from .audio import SAMPLE_RATE, AudioError, read_audio
from .flat import FlatColumn, FlatStrings
from .tables import DataDirError, format_error, read_table


# Names the batch dict already uses (see speechdistill.data.collate); extra fields may not take them.
RESERVED_FIELDS = frozenset({"key", "wav", "ref", "wavs", "lengths", "keys", "position", "padding_fraction",
                             "audio_seconds", "failures", "item_failed"})
# (ref) -> more values for the item, computed where the item is read (in a DataLoader worker)
ItemExtras = Callable[["ItemRef"], Dict[str, Any]]


class ItemRef(NamedTuple):
    """Address of one item in the stream of batches: epoch, position of its batch, utterance index."""

    epoch: int
    batch_index: int
    index: int


class LoadFailure(NamedTuple):
    """An utterance whose audio could not be read; ``message`` says why (file, problem, fix)."""

    key: str
    message: str
    ref: ItemRef


def _sample_count(path: Path, key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise DataDirError(format_error(path, f"'{value}' is not a sample count (a non-negative integer)", key=key,
                                        fix="regenerate utt2num_samples from the audio"))
    return number


class AudioDataset(torch.utils.data.Dataset):
    """Utterances of one Kaldi data dir as float32 16 kHz waveforms, randomly cropped.

    Args:
        data_dir: directory with ``wav.scp``, ``utt2num_samples`` and optionally ``segments``.
        max_seconds: crop length in seconds; longer utterances are cut to a window of
            ``round(max_seconds * 16000)`` samples at a random offset; ``None`` keeps them whole.
        min_seconds: utterances shorter than this are skipped (listed in :attr:`skipped`).
        seed: seed of the crop generator (combined with the epoch and the utterance index).
        fields: extra per-utterance values a task adds to every item, ``{name: {utt_id: value}}``
            (e.g. token ids or a speaker index); every kept utterance must have every field.
        pipe_timeout: seconds a ``wav.scp`` command may run before it is killed and the item
            fails (None: ``$SPEECHDISTILL_PIPE_TIMEOUT`` or 120 s; <= 0: no limit).
        extras: ``extras(ref) -> {name: value}`` adds values computed when the item is read
            (in the DataLoader worker), e.g. a second crop from another data set.
        random_crop: crop at a random offset (training); ``False`` keeps the first ``max_seconds``
            of a longer utterance (inference).

    Attributes:
        keys: utterance ids kept, in data-dir order; ``index`` in an :class:`ItemRef` points here
            (a list built on each access: use :meth:`key` for one).
        num_samples: ``[N]`` int64 lengths from ``utt2num_samples`` (samples).
        cropped_num_samples: ``[N]`` int64 lengths after cropping (samples); what a batch holds.
        skipped: ``(utt_id, reason)`` for every utterance left out at construction.
    """

    def __init__(self, data_dir: Union[str, Path], *, max_seconds: Optional[float] = None,
                 min_seconds: float = 0.0, seed: int = 0,
                 fields: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 sample_rate: int = SAMPLE_RATE, pipe_timeout: Optional[float] = None,
                 extras: Optional[ItemExtras] = None, random_crop: bool = True) -> None:
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise DataDirError(format_error(self.data_dir, "data directory not found",
                                            fix="check the path (run the data preparation stage first)"))
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive or null (no crop), found {max_seconds}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, found {seed}")
        self.sample_rate = sample_rate
        self.seed = seed
        self.pipe_timeout = pipe_timeout
        self.extras = extras
        self.random_crop = random_crop
        self.max_samples = None if max_seconds is None else max(1, int(round(max_seconds * sample_rate)))
        min_samples = int(round(min_seconds * sample_rate))

        wav_path = self.data_dir / "wav.scp"
        wav_scp = read_table(wav_path)
        segments_path = self.data_dir / "segments"
        segments: Dict[str, Tuple[str, float, float]] = {}
        if segments_path.is_file():
            for utt, value in read_table(segments_path, nfields=4).items():
                reco, start, end = value.split()
                if reco not in wav_scp:
                    raise DataDirError(format_error(segments_path, f"recording '{reco}' is not in wav.scp", key=utt,
                                                    fix="run utils/fix_data_dir.sh on the data dir"))
                segments[utt] = (reco, float(start), float(end))
            utterances = list(segments)
        else:
            utterances = list(wav_scp)
        if not utterances:
            empty = segments_path if segments_path.is_file() else wav_path
            raise DataDirError(format_error(empty, "is empty: the data dir has no utterances",
                                            fix=f"rerun the data preparation stage that writes {self.data_dir}, or "
                                                f"point to another data dir"))

        counts_path = self.data_dir / "utt2num_samples"
        if not counts_path.is_file():
            raise DataDirError(format_error(
                counts_path, "file not found; the trainer needs every utterance's length in samples to fill "
                "batches by seconds of audio",
                fix="write '<utt-id> <number of samples>' per utterance (the data preparation stages do; "
                    "speechdistill.data.lengths.compute_lengths measures a data dir)"))
        counts_table = read_table(counts_path, nfields=2)
        keys: List[str] = []
        lengths: List[int] = []
        self.skipped: List[Tuple[str, str]] = []
        for utt in utterances:
            if utt not in counts_table:
                raise DataDirError(format_error(counts_path, "utterance is missing", key=utt,
                                                fix="regenerate utt2num_samples for this data dir"))
            count = _sample_count(counts_path, utt, counts_table[utt])
            if count < max(min_samples, 1):
                self.skipped.append((utt, f"too-short: {count / sample_rate:.3f} s < min_seconds {min_seconds:g}"))
                continue
            keys.append(utt)
            lengths.append(count)
        del counts_table
        if not keys:
            raise DataDirError(format_error(self.data_dir, f"no utterance is at least min_seconds={min_seconds:g} s "
                                            f"long ({len(self.skipped)} skipped)",
                                            fix="lower min_seconds or check utt2num_samples"))
        self._keys = FlatStrings(keys)
        if segments:
            recordings = list(dict.fromkeys(segments[utt][0] for utt in keys))
            number = {reco: i for i, reco in enumerate(recordings)}
            self._recording = np.fromiter((number[segments[utt][0]] for utt in keys), dtype=np.int64, count=len(keys))
            self._segment = np.array([segments[utt][1:] for utt in keys], dtype=np.float64).reshape(len(keys), 2)
            self._sources = FlatStrings([wav_scp[reco] for reco in recordings])
        else:
            self._recording = None
            self._segment = None
            self._sources = FlatStrings([wav_scp[utt] for utt in keys])
        del wav_scp, segments
        self.num_samples = torch.tensor(lengths, dtype=torch.int64)
        self.cropped_num_samples = (self.num_samples if self.max_samples is None
                                    else self.num_samples.clamp(max=self.max_samples))

        self.fields: Dict[str, FlatColumn] = {}
        for name, table in (fields or {}).items():
            if name in RESERVED_FIELDS or name.endswith("_lengths"):
                raise ValueError(f"a task's per-utterance field may not be called '{name}': the batch uses that "
                                 f"name (reserved: {', '.join(sorted(RESERVED_FIELDS))}, '*_lengths')")
            missing = [utt for utt in keys if utt not in table]
            if missing:
                raise DataDirError(format_error(self.data_dir, f"field '{name}' has no value for {len(missing)} "
                                                f"utterance(s), e.g. '{missing[0]}'",
                                                fix="make the task's per-utterance table cover the data dir "
                                                    "(or run utils/fix_data_dir.sh)"))
            self.fields[name] = FlatColumn([table[utt] for utt in keys])

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> List[str]:
        return self._keys.tolist()

    def key(self, index: int) -> str:
        """Utterance id of item ``index``."""
        return self._keys[index]

    def source(self, index: int) -> Tuple[str, str, Optional[Tuple[float, float]]]:
        """``(utt_id, wav.scp value, (start, end) seconds or None)`` of item ``index``."""
        if self._recording is None:
            return self._keys[index], self._sources[index], None
        start, end = self._segment[index]
        return self._keys[index], self._sources[int(self._recording[index])], (float(start), float(end))

    def crop_start(self, epoch: int, index: int, length: int) -> int:
        """First sample of the crop of utterance ``index`` in ``epoch`` given its ``length`` (samples)."""
        if self.max_samples is None or length <= self.max_samples or not self.random_crop:
            return 0
        generator = np.random.default_rng((self.seed, epoch, index))
        return int(generator.integers(0, length - self.max_samples + 1))

    def read(self, index: int, epoch: int = 0) -> np.ndarray:
        """The crop of item ``index`` in ``epoch`` as float32 ``[T]`` samples (raises :class:`AudioError`).

        Only the crop is decoded from a plain file; audio shorter than its ``utt2num_samples``
        count is an error naming both numbers.
        """
        key, value, segment = self.source(index)
        length = int(self.num_samples[index])
        start = self.crop_start(epoch, index, length)
        wanted = length - start if self.max_samples is None else min(self.max_samples, length - start)
        wav = read_audio(value, key=key, sample_rate=self.sample_rate, segment=segment,
                         pipe_timeout=self.pipe_timeout, offset=start, num_samples=wanted)
        if len(wav) < wanted:
            raise AudioError(f"utterance '{key}' ({value}): utt2num_samples says {length} samples, the audio holds "
                             f"{start + len(wav)}. Fix: measure the lengths again "
                             f"(utils/get_utt2num_samples.sh {self.data_dir})")
        return wav

    def __getitem__(self, ref: Union[ItemRef, int]) -> Union[Dict[str, Any], LoadFailure]:
        """Returns ``{"key", "wav": float32 [T] samples, "ref", **fields, **extras}`` or a :class:`LoadFailure`."""
        if not isinstance(ref, ItemRef):
            ref = ItemRef(0, 0, int(ref))
        key = self._keys[ref.index]
        try:
            wav = self.read(ref.index, ref.epoch)
        except (AudioError, OSError) as exc:
            return LoadFailure(key, str(exc), ref)
        item: Dict[str, Any] = {"key": key, "wav": wav, "ref": ref}
        for name, column in self.fields.items():
            item[name] = column[ref.index]
        if self.extras is not None:
            item.update(self.extras(ref))
        return item
