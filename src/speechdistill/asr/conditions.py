"""Test conditions of the ASR evaluation: clean, additive noise at a fixed SNR, reverberation.

Names (``--test_conditions "clean snr20 snr10 snr5 snr0 reverb"`` in the recipe):

* ``clean``: the audio as it is;
* ``snr<N>`` (N an integer or decimal, may be negative: ``snr-5``): noise added at N dB SNR,
  measured over each utterance's real length. The noise is a random segment of a random
  recording of the Kaldi noise dirs given (MUSAN ``noise`` of stage 1), or white Gaussian noise
  when no dir is given;
* ``reverb``: convolution with a random room impulse response of the Kaldi RIR dirs given
  (RIRS_NOISES of stage 1), energy-normalised and aligned on its direct path so the output stays
  time-aligned with the clean input.

The work is done by :mod:`speechdistill.augment`; this module names the conditions, loads the
banks once, and applies a condition to one utterance with the generator the caller seeds.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:
    import torch


PathLike = Union[str, os.PathLike]
_SNR = re.compile(r"^snr(-?[0-9]+(?:\.[0-9]+)?)$")


class ConditionError(ValueError):
    """A test condition name or its noise/RIR sources that cannot be used."""


def condition_sort_key(name: str) -> Tuple[int, float, str]:
    """Table order: clean, then SNRs from the highest to the lowest, then reverb, then anything else."""
    if name == "clean":
        return (0, 0.0, name)
    match = _SNR.match(name)
    if match:
        return (1, -float(match.group(1)), name)
    if name == "reverb":
        return (2, 0.0, name)
    return (3, 0.0, name)


def _source_fingerprint(data_dir: Path) -> str:
    """SHA-256 of the wav.scp that names a noise or RIR dir's recordings."""
    import hashlib

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


def parse_condition(name: str, *, noise_dirs: Sequence[PathLike] = (), rir_dirs: Sequence[PathLike] = ()
                    ) -> TestCondition:
    """Build the condition ``name`` (see the module docstring); banks are loaded here, once.

    ``noise_dirs`` / ``rir_dirs``: at most one Kaldi data dir each (MUSAN noise, RIRS_NOISES of
    stage 1); an ``snr<N>`` condition without a noise dir uses white Gaussian noise.
    """
    from ..augment import AugmentConfig, Augmenter, NoiseBank, ReverbConfig, RirBank, SourceConfig

    if len(noise_dirs) > 1 or len(rir_dirs) > 1:
        raise ConditionError(f"give at most one noise dir and one RIR dir (found {list(map(str, noise_dirs))} and "
                             f"{list(map(str, rir_dirs))}). Fix: combine them into one Kaldi dir with "
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
    raise ConditionError(f"unknown test condition '{name}'. Fix: use clean, snr<N> (N in dB, e.g. snr10 or snr-5) "
                         "or reverb")

