"""espeak-ng through ctypes, from the ``espeakng_loader`` wheel (library and voice data inside).

The library keeps global state, so one ``Espeak`` exists per process: parallel synthesis
runs one per worker process. It is initialised in synchronous mode with a synth callback
that collects the 16-bit samples (22050 Hz) of one utterance.
"""
from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..common import CorpusError

AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
# espeak_PARAMETER enum values (speak_lib.h)
RATE, VOLUME, PITCH, RANGE, WORDGAP = 1, 2, 3, 4, 7

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_instance: Optional["Espeak"] = None


class Espeak:
    """The process-wide espeak-ng synthesizer; get it with :func:`get_espeak`."""

    def __init__(self, data_path: Optional[str] = None) -> None:
        espeakng_loader = _loader()
        data_path = data_path or espeakng_loader.get_data_path()
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib = self.lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        self.sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if self.sample_rate <= 0:
            raise CorpusError(f"espeak-ng failed to initialise with data at {data_path}. "
                              "Fix: reinstall espeakng-loader")
        self._chunks: List[np.ndarray] = []
        # keep a reference: ctypes would free the trampoline while espeak still holds it
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def synthesize(self, text: str, voice: str, *, rate: int, pitch: int, pitch_range: int, word_gap: int = 0
                   ) -> np.ndarray:
        """int16 samples ``[T]`` at ``self.sample_rate`` (22050 Hz) of ``text`` spoken by ``voice``.

        ``voice`` is ``<language>+<variant>`` (e.g. ``en-us+m3``); ``rate`` in words per minute
        (80-450), ``pitch`` and ``pitch_range`` 0-100, ``word_gap`` in units of 10 ms.
        """
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise CorpusError(f"espeak-ng has no voice '{voice}'. Fix: choose a voice listed in espeak-ng-data/voices")
        for parameter, value in ((RATE, rate), (PITCH, pitch), (RANGE, pitch_range), (WORDGAP, word_gap)):
            self.lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks = []
        data = text.encode("utf-8")
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if status != 0 or not self._chunks:
            raise CorpusError(f"espeak-ng could not synthesize '{text[:40]}...' with voice {voice} (status {status})")
        return np.concatenate(self._chunks)


def _loader():
    try:
        import espeakng_loader
    except ImportError:
        raise CorpusError("the mini corpora need the 'espeakng-loader' package (espeak-ng in a wheel). "
                          "Fix: pip install 'speechdistill[synth]' or pip install espeakng-loader") from None
    return espeakng_loader


def get_espeak(data_path: Optional[str] = None) -> Espeak:
    """The process's synthesizer, created on first use with voice data at ``data_path``.

    espeak-ng output depends on state left by earlier utterances of the same process (e.g. the
    glottal oscillator phase), so reproducible corpora synthesize each shard in a fresh process.
    """
    global _instance
    if _instance is None:
        _instance = Espeak(data_path)
    return _instance


def make_voice_data(voice_files: Dict[str, str], work_dir: Path) -> Path:
    """An espeak-ng data dir under ``work_dir`` = the wheel's data plus our variant files.

    Everything of the wheel's ``espeak-ng-data`` is symlinked; ``voices/!v`` additionally
    holds ``voice_files`` (variant name -> file content).
    """
    source = Path(_loader().get_data_path())
    target = work_dir / "espeak-ng-data"
    if target.exists():
        shutil.rmtree(target)
    (target / "voices" / "!v").mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name != "voices":
            os.symlink(entry, target / entry.name)
    for entry in (source / "voices").iterdir():
        if entry.name != "!v":
            os.symlink(entry, target / "voices" / entry.name)
    for entry in (source / "voices" / "!v").iterdir():
        os.symlink(entry, target / "voices" / "!v" / entry.name)
    for name, text in voice_files.items():
        (target / "voices" / "!v" / name).write_text(text, encoding="utf-8")
    return target
