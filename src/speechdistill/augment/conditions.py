"""Test conditions of the evaluations (ASR decoding, speaker-verification embeddings): clean, additive
noise at a fixed SNR, reverberation, babble.

Names (``--test_conditions "clean snr20 snr10 snr5 snr0 reverb babble"`` in the recipes):

* ``clean``: the audio as it is;
* ``snr<N>`` (N an integer or decimal, may be negative: ``snr-5``): noise added at N dB SNR,
  measured over each utterance's real length. The noise is a random segment of a random
  recording of the Kaldi noise dirs given (MUSAN ``noise`` of stage 1), or white Gaussian noise
  when no dir is given;
* ``reverb``: convolution with a random room impulse response of the Kaldi RIR dirs given
  (RIRS_NOISES of stage 1), energy-normalised and aligned on its direct path so the output stays
  time-aligned with the clean input;
* ``babble``: 3 to 7 talkers (random segments of the Kaldi speech dirs given: MUSAN ``speech`` of
  stage 1), each brought to the same power, summed and added at an SNR drawn uniformly from 13-20 dB
  (the Kaldi / ESPnet babble of training augmentation, conventions.md §3.4); ``babble<N>``: the same
  talkers at N dB.

Every random choice for an utterance comes from a generator seeded by (seed, condition, utterance id)
alone (:func:`utterance_generator`), so every system evaluated with the same seed gets the same
corrupted audio, in any batch and on any device. The work is done by :mod:`speechdistill.augment`; this
module names the conditions, loads the banks once, and corrupts batches utterance by utterance.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

PathLike = Union[str, os.PathLike]
_SNR = re.compile(r"^snr(-?[0-9]+(?:\.[0-9]+)?)$")
_BABBLE = re.compile(r"^babble(-?[0-9]+(?:\.[0-9]+)?)?$")
BABBLE_TALKERS = (3, 7)
BABBLE_SNR_DB = (13.0, 20.0)


class ConditionError(ValueError):
    """A test condition name or its noise/RIR sources that cannot be used."""


def condition_sort_key(name: str) -> Tuple[int, float, str]:
    """Table order: clean, then SNRs from the highest to the lowest, then reverb, then babble (the range
    first, then fixed SNRs from the highest), then anything else."""
    if name == "clean":
        return (0, 0.0, name)
    match = _SNR.match(name)
    if match:
        return (1, -float(match.group(1)), name)
    if name == "reverb":
        return (2, 0.0, name)
    match = _BABBLE.match(name)
    if match:
        return (3, -float(match.group(1)) if match.group(1) else -math.inf, name)
    return (4, 0.0, name)


def _source_fingerprint(data_dir: Path) -> str:
    """SHA-256 of the wav.scp that names a noise or RIR dir's recordings."""
    wav_scp = data_dir / "wav.scp"
    return hashlib.sha256(wav_scp.read_bytes()).hexdigest() if wav_scp.is_file() else ""


class TestCondition:
    """One named test condition; :meth:`apply` corrupts a batch with a given generator.

    Attributes:
        name: ``clean``, ``snr<N>`` or ``reverb``.
        description: one line saying what the condition does and with which recordings.
        snr_db: the SNR of ``snr<N>`` (None otherwise).
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, name: str, description: str, snr_db: Optional[float] = None, augmenter: Any = None,
                 sources: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.description = description
        self.snr_db = snr_db
        self.augmenter = augmenter
        self.sources = dict(sources or {})

    @property
    def is_clean(self) -> bool:
        return self.augmenter is None

    def to(self, device: Union[str, torch.device]) -> "TestCondition":
        """Move the noise/RIR banks to ``device`` (in place; returns self)."""
        if self.augmenter is not None:
            self.augmenter = self.augmenter.to(device)
        return self

    def apply(self, wavs: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Corrupted copy of ``wavs`` ``[B, T]`` (valid ``lengths`` ``[B]`` samples), padding zero.

        All random choices come from ``generator`` (a CPU generator gives the same audio on any device).
        """
        if self.augmenter is None:
            return wavs
        return self.augmenter(wavs, lengths, generator).noisy

    def describe(self) -> Dict[str, Any]:
        """What a decode records about its condition (and compares on a rerun)."""
        return {"name": self.name, "description": self.description, **self.sources}


def parse_condition(name: str, *, noise_dirs: Sequence[PathLike] = (), rir_dirs: Sequence[PathLike] = (),
                    babble_dirs: Sequence[PathLike] = ()) -> TestCondition:
    """Build the condition ``name`` (see the module docstring); banks are loaded here, once.

    ``noise_dirs`` / ``rir_dirs`` / ``babble_dirs``: at most one Kaldi data dir each (MUSAN noise,
    RIRS_NOISES, MUSAN speech of stage 1); an ``snr<N>`` condition without a noise dir uses white
    Gaussian noise.
    """
    from .banks import NoiseBank, RirBank
    from .config import AugmentConfig, ReverbConfig, SourceConfig
    from .pipeline import Augmenter

    if len(noise_dirs) > 1 or len(rir_dirs) > 1 or len(babble_dirs) > 1:
        raise ConditionError(f"give at most one noise dir, one RIR dir and one babble dir (found "
                             f"{list(map(str, noise_dirs))}, {list(map(str, rir_dirs))} and "
                             f"{list(map(str, babble_dirs))}). Fix: combine them into one Kaldi dir with "
                             "utils/combine_data.sh")
    if name == "clean":
        return TestCondition("clean", "no corruption")
    match = _SNR.match(name)
    if match:
        snr = float(match.group(1))
        if not math.isfinite(snr):
            raise ConditionError(f"test condition '{name}': the SNR is not a finite number")
        quiet = SourceConfig(None)
        if noise_dirs:
            noise_dir = Path(noise_dirs[0])
            bank = NoiseBank.from_data_dir(noise_dir, name="noise")
            config = AugmentConfig(apply_prob=1.0, choices={"noise": 1.0},
                                   noise=SourceConfig(str(noise_dir), [snr, snr]), music=quiet, babble=quiet)
            augmenter = Augmenter(config, {"noise": bank}, None)
            description = f"noise from {noise_dir} ({len(bank)} recordings) at {snr:g} dB SNR"
            sources = {"noise_data": str(noise_dir.resolve()), "noise_sha256": _source_fingerprint(noise_dir)}
        else:
            config = AugmentConfig(apply_prob=1.0, choices={"noise": 1.0},
                                   noise=SourceConfig(None, [snr, snr], white_prob=1.0), music=quiet, babble=quiet)
            augmenter = Augmenter(config, {}, None)
            description = f"white Gaussian noise at {snr:g} dB SNR (no noise dir given)"
            sources = {"noise_data": "white"}
        return TestCondition(name, description, snr, augmenter, sources)
    if name == "reverb":
        if not rir_dirs:
            raise ConditionError("test condition 'reverb' needs room impulse responses. Fix: pass --rir-data DIR "
                                 "(data/rirs of stage 1), or drop 'reverb' from the test conditions")
        rir_dir = Path(rir_dirs[0])
        bank = RirBank.from_data_dir(rir_dir)
        config = AugmentConfig(apply_prob=1.0, choices={"reverb": 1.0}, noise=SourceConfig(None),
                               music=SourceConfig(None), babble=SourceConfig(None), reverb=ReverbConfig(str(rir_dir)))
        description = (f"RIR from {rir_dir} ({len(bank)} responses), energy-normalised, aligned on the direct path")
        sources = {"rir_data": str(rir_dir.resolve()), "rir_sha256": _source_fingerprint(rir_dir)}
        return TestCondition(name, description, None, Augmenter(config, {}, bank), sources)
    match = _BABBLE.match(name)
    if match:
        if not babble_dirs:
            raise ConditionError(f"test condition '{name}' needs speech recordings to make babble. Fix: pass "
                                 "--babble-data DIR (data/musan_speech of stage 1), or drop it from the test conditions")
        low, high = BABBLE_SNR_DB
        if match.group(1):
            low = high = float(match.group(1))
            if not math.isfinite(low):
                raise ConditionError(f"test condition '{name}': the SNR is not a finite number")
        babble_dir = Path(babble_dirs[0])
        bank = NoiseBank.from_data_dir(babble_dir, name="babble")
        quiet = SourceConfig(None)
        config = AugmentConfig(apply_prob=1.0, choices={"babble": 1.0}, noise=quiet, music=quiet,
                               babble=SourceConfig(str(babble_dir), [low, high], num_sources=list(BABBLE_TALKERS)))
        level = f"{low:g} dB SNR" if low == high else f"an SNR drawn from {low:g}-{high:g} dB"
        description = (f"babble of {BABBLE_TALKERS[0]}-{BABBLE_TALKERS[1]} talkers from {babble_dir} "
                       f"({len(bank)} recordings) at {level}")
        sources = {"babble_data": str(babble_dir.resolve()), "babble_sha256": _source_fingerprint(babble_dir)}
        return TestCondition(name, description, low if low == high else None, Augmenter(config, {"babble": bank}, None),
                             sources)
    raise ConditionError(f"unknown test condition '{name}'. Fix: use clean, snr<N> (N in dB, e.g. snr10 or snr-5), "
                         "reverb, babble or babble<N>")


def utterance_generator(seed: int, condition: str, key: str) -> torch.Generator:
    """A CPU generator seeded from (seed, condition, utterance id) alone: the same corrupted audio for
    an utterance in any batch, on any device, for every model evaluated with the same seed."""
    digest = hashlib.sha256(f"{seed}\0{condition}\0{key}".encode("utf-8")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def corrupt_batch(condition: TestCondition, wavs: torch.Tensor, lengths: torch.Tensor, keys: Sequence[str],
                  seed: int) -> torch.Tensor:
    """Apply ``condition`` to each utterance of ``wavs`` ``[B, T]`` (valid ``lengths`` ``[B]`` samples)
    with its own generator; padding stays zero. Returns ``[B, T]``."""
    if condition.is_clean:
        return wavs
    out = torch.zeros_like(wavs)
    for row, key in enumerate(keys):
        length = int(lengths[row])
        corrupted = condition.apply(wavs[row:row + 1, :length], lengths[row:row + 1],
                                    utterance_generator(seed, condition.name, key))
        out[row, :length] = corrupted[0, :length]
    return out


def add_condition_arguments(parser: argparse.ArgumentParser) -> None:
    """``--condition``, ``--noise-data``, ``--rir-data``, ``--babble-data`` and ``--seed`` of an evaluation
    entry point (read back by :func:`condition_from_arguments`)."""
    parser.add_argument("--condition", default="clean",
                        help="clean, snr<N> (e.g. snr10, snr-5), reverb, babble or babble<N>")
    parser.add_argument("--noise-data", "--noise_data", dest="noise_data", default=None, metavar="DIR",
                        help="Kaldi dir of noise recordings for snr<N> (e.g. data/musan_noise); none: white noise")
    parser.add_argument("--rir-data", "--rir_data", dest="rir_data", default=None, metavar="DIR",
                        help="Kaldi dir of room impulse responses for reverb (e.g. data/rirs)")
    parser.add_argument("--babble-data", "--babble_data", dest="babble_data", default=None, metavar="DIR",
                        help="Kaldi dir of speech recordings for babble (e.g. data/musan_speech)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test-condition corruption")


def condition_from_arguments(args: argparse.Namespace) -> TestCondition:
    """The :class:`TestCondition` named by the options :func:`add_condition_arguments` added."""
    return parse_condition(args.condition, noise_dirs=[args.noise_data] if args.noise_data else [],
                           rir_dirs=[args.rir_data] if args.rir_data else [],
                           babble_dirs=[args.babble_data] if args.babble_data else [])

