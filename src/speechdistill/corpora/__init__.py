"""Corpus preparation: real LibriSpeech, VoxCeleb, MUSAN and RIRS_NOISES trees -> Kaldi data dirs.

Every prep probes its audio (unreadable files go to ``<dir>/bad_utts`` with the reason and
are counted, never silently dropped), writes the data dir atomically and leaves a
``.prep_done`` marker so that a rerun with the same settings does nothing. The embedded mini
corpora of :mod:`speechdistill.corpora.synth` are written in the same layouts and read by
the same code.
"""
from .common import CorpusError, PrepResult, check_audio
from .librispeech import prepare_librispeech
from .musan import prepare_musan
from .rirs import prepare_rirs
from .voxceleb import prepare_voxceleb, read_trials

__all__ = ["CorpusError", "PrepResult", "check_audio", "prepare_librispeech", "prepare_voxceleb", "read_trials",
           "prepare_musan", "prepare_rirs"]
