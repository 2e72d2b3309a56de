"""Embedded mini corpora: LibriSpeech, VoxCeleb, MUSAN and RIRS_NOISES look-alikes, synthesized.

Everything is generated from a seed (same seed, same bytes, whatever the number of worker
processes) and written in the real corpora's layouts, so that the real prep code
(:mod:`speechdistill.corpora`) reads them. Build them with
``python -m speechdistill.bin.make_mini_corpora --out_dir DIR`` or :func:`make_mini_corpora`.

Default sizes: LibriSpeech about 30 min of training speech (40 readers) + 4 min dev + 4 min
test (6 readers each); VoxCeleb 40 training speakers (about 30 min) + 20 test speakers of
8 utterances and 1,120 trials (every one of the 560 target pairs); MUSAN 22 noise, 12 music, 12 speech files of 8-16 s; RIRS_NOISES 4 rooms x 4
RIRs per room size.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, Sequence

from ..common import CorpusError
from .commands import (MiniFluentCommandsConfig, MiniSpeechCommandsConfig, make_mini_fluent_commands,
                       make_mini_speech_commands)
from .librispeech import MiniLibriSpeechConfig, make_mini_librispeech
from .musan import MiniMusanConfig, make_mini_musan
from .rirs import MiniRirsConfig, make_mini_rirs
from .voxceleb import MiniVoxCelebConfig, make_mini_voxceleb, make_mini_voxceleb2

logger = logging.getLogger("speechdistill.corpora")

CORPORA = ("librispeech", "voxceleb", "musan", "rirs")
# built only when asked for: voxceleb2 (the voxceleb dev speakers as m4a) needs ffmpeg; the SUPERB probes'
# keyword spotting (speech_commands, whose background noise comes from musan) and intent classification
OPTIONAL_CORPORA = ("voxceleb2", "speech_commands", "fluent_commands")


@dataclasses.dataclass
class MiniCorporaConfig:
    """Seed and sizes of all mini corpora (YAML-loadable with ``speechdistill.config``)."""

    seed: int = 0
    librispeech: MiniLibriSpeechConfig = dataclasses.field(default_factory=MiniLibriSpeechConfig)
    voxceleb: MiniVoxCelebConfig = dataclasses.field(default_factory=MiniVoxCelebConfig)
    musan: MiniMusanConfig = dataclasses.field(default_factory=MiniMusanConfig)
    rirs: MiniRirsConfig = dataclasses.field(default_factory=MiniRirsConfig)
    speech_commands: MiniSpeechCommandsConfig = dataclasses.field(default_factory=MiniSpeechCommandsConfig)
    fluent_commands: MiniFluentCommandsConfig = dataclasses.field(default_factory=MiniFluentCommandsConfig)

    @classmethod
    def tiny(cls, seed: int = 0) -> "MiniCorporaConfig":
        """A few seconds of everything, for tests: 8/2/2 readers, 6+3 VoxCeleb speakers."""
        return cls(
            seed=seed,
            librispeech=MiniLibriSpeechConfig(train_minutes=0.6, dev_minutes=0.15, test_minutes=0.15,
                                              train_speakers=8, dev_speakers=2, test_speakers=2, max_words=12),
            voxceleb=MiniVoxCelebConfig(train_minutes=0.8, train_speakers=6, test_speakers=3,
                                        test_utterances_per_speaker=3, videos_per_speaker=2, trials=12, max_words=10),
            musan=MiniMusanConfig(noise_files=4, music_files=3, speech_files=4, min_seconds=2.0, max_seconds=4.0,
                                  vocals_fraction=0.5),
            rirs=MiniRirsConfig(rooms_per_size=1, rirs_per_room=2, max_order=10),
            speech_commands=MiniSpeechCommandsConfig(train_speakers=6, dev_speakers=2, test_speakers=2,
                                                     background_files=4),
            fluent_commands=MiniFluentCommandsConfig(train_speakers=6, dev_speakers=2, test_speakers=2,
                                                     utterances_per_speaker=8))


def validate(config: MiniCorporaConfig) -> None:
    ls, vc = config.librispeech, config.voxceleb
    checks = [
        (min(ls.train_speakers, ls.dev_speakers, ls.test_speakers) >= 1, "librispeech: every part needs >= 1 speaker"),
        (vc.train_speakers >= 1 and vc.test_speakers >= 2, "voxceleb: needs >= 1 training and >= 2 test speakers"),
        (vc.test_utterances_per_speaker >= 2, "voxceleb: test_utterances_per_speaker must be >= 2 (target trials)"),
        (ls.min_words >= 1 and ls.max_words >= ls.min_words, "librispeech: need 1 <= min_words <= max_words"),
        (vc.min_words >= 1 and vc.max_words >= vc.min_words, "voxceleb: need 1 <= min_words <= max_words"),
        (config.musan.speech_files >= 1 and config.musan.noise_files >= 1 and config.musan.music_files >= 1,
         "musan: every category needs >= 1 file"),
        (0 < config.musan.min_seconds <= config.musan.max_seconds, "musan: need 0 < min_seconds <= max_seconds"),
        (config.rirs.rooms_per_size >= 1 and config.rirs.rirs_per_room >= 1, "rirs: need >= 1 room and RIR"),
    ]
    for ok, message in checks:
        if not ok:
            raise CorpusError(f"mini corpus settings: {message}")


def _speech_commands(out: Path, config: MiniCorporaConfig, nj: int) -> Dict[str, Any]:
    make_mini_musan(out, config.musan, seed=config.seed, nj=nj)  # its noise files are the background noise
    return make_mini_speech_commands(out, config.speech_commands, out / "musan" / "noise", seed=config.seed, nj=nj)


def make_mini_corpora(out_dir: str, corpora: Sequence[str] = CORPORA, config: MiniCorporaConfig = None, *,
                      nj: int = 2) -> Dict[str, Dict[str, Any]]:
    """Build the asked ``corpora`` under ``out_dir`` (kept when they exist with the same settings).

    Returns corpus -> marker (``settings``, ``produced``, ``skipped``). Layout:
    ``out_dir/{LibriSpeech,VoxCeleb1,musan,RIRS_NOISES}`` (and ``VoxCeleb2`` for ``voxceleb2``,
    ``speech_commands`` (with ``musan``) and ``fluent_speech_commands`` when asked for).
    """
    config = config or MiniCorporaConfig()
    validate(config)
    unknown = [c for c in corpora if c not in CORPORA + OPTIONAL_CORPORA]
    if unknown:
        raise CorpusError(f"unknown mini corpus {unknown}. Fix: choose among {', '.join(CORPORA + OPTIONAL_CORPORA)}")
    out = Path(out_dir)
    builders = {
        "librispeech": lambda: make_mini_librispeech(out, config.librispeech, seed=config.seed, nj=nj),
        "voxceleb": lambda: make_mini_voxceleb(out, config.voxceleb, seed=config.seed, nj=nj),
        "voxceleb2": lambda: make_mini_voxceleb2(out, config.voxceleb, seed=config.seed, nj=nj),
        "musan": lambda: make_mini_musan(out, config.musan, seed=config.seed, nj=nj),
        "rirs": lambda: make_mini_rirs(out, config.rirs, seed=config.seed, nj=nj),
        "speech_commands": lambda: _speech_commands(out, config, nj),
        "fluent_commands": lambda: make_mini_fluent_commands(out, config.fluent_commands, seed=config.seed, nj=nj),
    }
    results = {}
    for corpus in corpora:
        results[corpus] = builders[corpus]()
        logger.debug("mini %s: %s%s", corpus, results[corpus]["produced"],
                    " (already built)" if results[corpus]["skipped"] else "")
    return results


__all__ = ["OPTIONAL_CORPORA", "MiniCorporaConfig", "MiniSpeechCommandsConfig", "MiniFluentCommandsConfig", "MiniLibriSpeechConfig", "MiniVoxCelebConfig", "MiniMusanConfig", "MiniRirsConfig",
           "make_mini_corpora", "CORPORA"]
