"""Noise and RIR banks: a Kaldi data dir of recordings decoded once into tensors.

A :class:`NoiseBank` keeps every recording (up to ``max_seconds`` of each, from its start)
in one flat int16 tensor, so that cutting ``B`` random segments for a batch is one gather on
whatever device the bank lives on. A :class:`RirBank` keeps channel 0 of every RIR, its
tail cut where less than -60 dB of its energy remains, normalised to unit energy, with the
index of its direct path (the peak) for time alignment.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from speechdistill.data.audio import SAMPLE_RATE, AudioError, load_rxfilename, read_audio, rxfilename_kind
from speechdistill.data.tables import DataDirError, read_table

logger = logging.getLogger("speechdistill.augment")
PathLike = Union[str, Path]


class AugmentError(ValueError):
    """A noise or RIR directory (or setting) a user gave is unusable; the message says why and how to fix it."""


def _read_head(key: str, value: str, max_samples: Optional[int]) -> np.ndarray:
    """Mono float32 audio of one wav.scp value, at most ``max_samples`` from the start."""
    if rxfilename_kind(value) == "path" and max_samples is not None:
        with soundfile.SoundFile(value.strip()) as handle:
            if handle.samplerate == SAMPLE_RATE:
                data = handle.read(max_samples, dtype="float32", always_2d=True)
                return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    audio = read_audio(value, key=key, resample=True, mix_channels=True)
    return audio[:max_samples] if max_samples is not None else audio


def _load_wav_scp(data_dir: Path, what: str) -> dict:
    wav_scp = data_dir / "wav.scp"
    if not wav_scp.is_file():
        raise AugmentError(f"{what} directory {data_dir} has no wav.scp. Fix: prepare it first (stage 1 of the "
                           "recipe: prep_musan / prep_rirs) or point the augment config at the right data dir")
    try:
        table = read_table(wav_scp)
    except DataDirError as exc:
        raise AugmentError(str(exc)) from None
    if not table:
        raise AugmentError(f"{wav_scp} is empty. Fix: prepare the {what} dir again")
    return table


class NoiseBank:
    """Recordings held as one int16 tensor ``samples`` ``[N]`` with ``starts``/``lengths`` ``[R]`` (samples)."""

    def __init__(self, samples: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, keys: Sequence[str],
                 name: str = "noise") -> None:
        self.samples, self.starts, self.lengths = samples, starts, lengths
        self.keys = list(keys)
        self.name = name

    @classmethod
    def from_data_dir(cls, data_dir: PathLike, *, max_seconds: Optional[float] = 30.0, name: Optional[str] = None,
                      device: Union[str, torch.device, None] = None) -> "NoiseBank":
        """Decode the recordings of ``data_dir`` (its ``wav.scp``), each cut to ``max_seconds``.

        Unreadable recordings are skipped with a warning naming them and counted in the log.
        """
        data_dir = Path(data_dir)
        name = name or data_dir.name
        table = _load_wav_scp(data_dir, name)
        max_samples = int(max_seconds * SAMPLE_RATE) if max_seconds else None
        pieces: List[np.ndarray] = []
        keys: List[str] = []
        skipped = []
        for key, value in tqdm(table.items(), desc=f"load {name}", unit="file", file=sys.stderr, disable=None):
            try:
                audio = _read_head(key, value, max_samples)
            except (AudioError, RuntimeError, OSError) as exc:  # soundfile raises RuntimeError on corrupt files
                skipped.append(f"{key}: {exc}")
                continue
            if len(audio) == 0 or not np.any(audio):
                skipped.append(f"{key}: silent or empty")
                continue
            pieces.append(np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16))
            keys.append(key)
        for line in skipped[:5]:
            logger.warning("%s: recording skipped: %s", data_dir, line)
        if skipped:
            logger.warning("%s: %d of %d recordings skipped", data_dir, len(skipped), len(table))
        if not pieces:
            raise AugmentError(f"{data_dir}: none of the {len(table)} recordings could be read. Fix: check the "
                               "paths in its wav.scp")
        lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long)
        starts = torch.cumsum(lengths, 0) - lengths
        bank = cls(torch.from_numpy(np.concatenate(pieces)), starts, lengths, keys, name)
        logger.info("%s: %d recordings, %.1f min in memory", name, len(keys), lengths.sum().item() / SAMPLE_RATE / 60)
        return bank.to(device) if device is not None else bank

    def to(self, device: Union[str, torch.device]) -> "NoiseBank":
        return NoiseBank(self.samples.to(device), self.starts.to(device), self.lengths.to(device), self.keys, self.name)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def device(self) -> torch.device:
        return self.samples.device

    def segments(self, indices: torch.Tensor, num_samples: int, offsets: torch.Tensor) -> torch.Tensor:
        """Float32 segments ``[B, num_samples]`` of recordings ``indices`` ``[B]``.

        ``offsets`` ``[B]`` in [0, 1) choose where each segment starts: anywhere a full
        segment fits in a long recording; a recording shorter than the segment is repeated
        (tiled) from a random start.
        """
        indices = indices.to(self.device)
        offsets = offsets.to(self.device)
        length = self.lengths[indices]
        room = (length - num_samples).clamp(min=0) + 1
        longer = length >= num_samples
        start = torch.where(longer, (offsets * room).long().clamp(max=room - 1),
                            (offsets * length).long().clamp(max=length - 1))
        position = start[:, None] + torch.arange(num_samples, device=self.device)[None, :]
        position = torch.where(longer[:, None], position, position % length[:, None])
        return self.samples[self.starts[indices][:, None] + position].float() / 32768.0


class RirBank:
    """RIRs ``rirs`` ``[R, L]`` (zero-padded, unit energy unless asked otherwise), ``lengths`` and ``peaks`` ``[R]``."""

    def __init__(self, rirs: torch.Tensor, lengths: torch.Tensor, peaks: torch.Tensor, keys: Sequence[str],
                 rooms: Sequence[str]) -> None:
        self.rirs, self.lengths, self.peaks = rirs, lengths, peaks
        self.keys, self.rooms = list(keys), list(rooms)

    @classmethod
    def from_data_dir(cls, data_dir: PathLike, *, rooms: Optional[Sequence[str]] = None, normalize: str = "energy",
                      max_seconds: Optional[float] = 2.0, device: Union[str, torch.device, None] = None) -> "RirBank":
        """Load the RIRs of ``data_dir`` (``wav.scp`` + ``utt2room``), keeping room types ``rooms`` (None: all).

        ``normalize``: ``energy`` scales each RIR to unit energy (the reverberant signal keeps
        about the input's level), ``none`` keeps the file's scale. The tail is cut where less
        than -60 dB of the energy remains, and at ``max_seconds``.
        """
        if normalize not in ("energy", "none"):
            raise AugmentError(f"reverb normalize '{normalize}' is unknown; use energy or none")
        data_dir = Path(data_dir)
        table = _load_wav_scp(data_dir, "RIR")
        room_of = read_table(data_dir / "utt2room") if (data_dir / "utt2room").is_file() else {}
        if rooms is not None:
            if not room_of:
                raise AugmentError(f"{data_dir} has no utt2room, so RIRs cannot be chosen by room type. Fix: prepare "
                                   "it with prep_rirs, or leave reverb.rooms empty")
            table = {k: v for k, v in table.items() if room_of.get(k) in set(rooms)}
            if not table:
                present = sorted(set(room_of.values()))
                raise AugmentError(f"{data_dir}: no RIR of room types {list(rooms)} (present: {present}). "
                                   "Fix: choose room types that were prepared")
        max_samples = int(max_seconds * SAMPLE_RATE) if max_seconds else None
        rirs, keys, skipped = [], [], []
        for key, value in table.items():
            try:
                samples, rate = load_rxfilename(value, key=key)
            except AudioError as exc:
                skipped.append(f"{key}: {exc}")
                continue
            rir = samples[:, 0].astype(np.float64)  # multi-channel real RIRs: first microphone
            if rate != SAMPLE_RATE:
                from speechdistill.data.resample import resample

                rir = resample(rir.astype(np.float32), rate, SAMPLE_RATE).astype(np.float64)
            energy = float(np.sum(rir ** 2))
            if energy <= 0:
                skipped.append(f"{key}: all zeros")
                continue
            remaining = np.cumsum(rir[::-1] ** 2)[::-1]
            end = int(np.argmax(remaining < energy * 1e-6)) or len(rir)
            rir = rir[:min(end, max_samples or end)]
            if normalize == "energy":
                rir = rir / np.sqrt(np.sum(rir ** 2))
            rirs.append(rir.astype(np.float32))
            keys.append(key)
        for line in skipped[:5]:
            logger.warning("%s: RIR skipped: %s", data_dir, line)
        if not rirs:
            raise AugmentError(f"{data_dir}: no usable RIR among {len(table)}. Fix: check its wav.scp")
        lengths = torch.tensor([len(r) for r in rirs], dtype=torch.long)
        padded = torch.zeros(len(rirs), int(lengths.max()))
        for i, rir in enumerate(rirs):
            padded[i, :len(rir)] = torch.from_numpy(rir)
        peaks = padded.abs().argmax(dim=1)
        bank = cls(padded, lengths, peaks, keys, [room_of.get(k, "unknown") for k in keys])
        logger.info("%s: %d RIRs (longest %.2f s)", data_dir, len(keys), lengths.max().item() / SAMPLE_RATE)
        return bank.to(device) if device is not None else bank

    def to(self, device: Union[str, torch.device]) -> "RirBank":
        return RirBank(self.rirs.to(device), self.lengths.to(device), self.peaks.to(device), self.keys, self.rooms)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def device(self) -> torch.device:
        return self.rirs.device

    def select(self, indices: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
        """RIRs ``[B, L]`` (cut to the longest selected) and their direct-path indices ``[B]``."""
        indices = indices.to(self.device)
        longest = int(self.lengths[indices].max())
        return self.rirs[indices, :longest], self.peaks[indices]
