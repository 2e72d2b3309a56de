"""Synthetic speakers: one fixed espeak-ng voice per speaker plus a fixed post-synthesis filter.

A speaker is drawn once from a seeded generator and then used for all its utterances:

* an espeak-ng *variant file* of our own (gender, base pitch and pitch range in Hz, per-formant
  frequency/height/width scaling around a speaker-wide vocal-tract factor, roughness), an
  accent (language voice), speaking rate, API pitch/range settings and word gap;
* a *vocal-tract warp*: the 22.05 kHz synthesis is read as if sampled at ``22050 * warp`` Hz
  and resampled to 16 kHz, which scales pitch, formants and tempo together by ``warp``;
* a spectral *tilt* (first-order filter) and one *resonance* (peaking biquad) that stand in
  for a speaker's voice quality, and a speaking *level*.

Together these spread speakers far enough apart for a speaker-verification model to learn
them, while the words stay intelligible for ASR.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Tuple

import numpy as np

from speechdistill.data.resample import resample

ESPEAK_RATE = 22050
SAMPLE_RATE = 16000
# accents whose English text front-end is solid; all ship in the espeak-ng data of the wheel
ACCENTS = ("en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbcwmd", "en-gb-x-gbclan", "en-us-nyc", "en")


@dataclasses.dataclass(frozen=True)
class Voice:
    """Everything that makes one synthetic speaker sound like itself."""

    name: str                      # espeak variant file name (unique per speaker)
    gender: str                    # 'm' or 'f'
    accent: str                    # espeak language voice, e.g. 'en-us'
    variant_text: str              # content of the espeak-ng variant file
    rate: int                      # words per minute
    pitch: int                     # espeak API pitch, 0-100
    pitch_range: int               # espeak API range, 0-100
    word_gap: int                  # extra pause between words, 10 ms units
    warp: float                    # vocal-tract/tempo factor applied by resampling
    tilt: float                    # first-order filter coefficient in (-1, 1): >0 darker, <0 brighter
    resonance_hz: float            # centre of the speaker's resonance (Hz)
    resonance_gain_db: float       # its gain (dB)
    resonance_q: float             # its quality factor
    level_db: float                # RMS level of an utterance (dBFS)

    def estimated_seconds(self, text: str) -> float:
        """Rough duration of ``text`` in this voice (for planning corpus sizes before synthesis)."""
        return len(text.split()) / (self.rate / 60.0) / self.warp + 0.35

    @property
    def espeak_voice(self) -> str:
        return f"{self.accent}+{self.name}"

    @property
    def espeak_rate(self) -> int:
        """Input sample rate for the warp resampling, rounded to a multiple of 50 Hz.

        The resampler's filter bank has ``rate / gcd(rate, 16000)`` phases, so a multiple of
        50 keeps it small (at most a few hundred phases).
        """
        return int(round(ESPEAK_RATE * self.warp / 50.0)) * 50


def make_voices(count: int, rng: np.random.Generator, prefix: str) -> List[Voice]:
    """``count`` distinct voices, alternating genders from a random start; names ``<prefix>NNNN``."""
    voices = []
    first_female = bool(rng.integers(2))
    for index in range(count):
        female = (index % 2 == 0) == first_female
        voices.append(_make_voice(f"{prefix}{index:04d}", female, rng))
    return voices


def _make_voice(name: str, female: bool, rng: np.random.Generator) -> Voice:
    # vocal-tract factor: shorter tracts (higher formants) for most female voices, with overlap
    tract = rng.uniform(1.04, 1.20) if female else rng.uniform(0.86, 1.02)
    base_hz = int(rng.uniform(165, 240) if female else rng.uniform(85, 135))
    top_hz = int(base_hz * rng.uniform(1.25, 1.7))
    lines = ["language variant", f"name {name}", f"gender {'female' if female else 'male'}",
             f"pitch {base_hz} {top_hz}", f"flutter {int(rng.integers(0, 16))}",
             f"roughness {int(rng.integers(0, 4))}"]
    for formant in range(9):
        frequency = int(round(100 * tract * rng.uniform(0.95, 1.05)))
        height = int(round(100 * rng.uniform(0.75, 1.25)))
        width = int(round(100 * rng.uniform(0.8, 1.3)))
        lines.append(f"formant {formant} {frequency} {height} {width}")
    return Voice(
        name=name, gender="f" if female else "m", accent=str(rng.choice(ACCENTS)),
        variant_text="\n".join(lines) + "\n",
        rate=int(rng.uniform(135, 205)), pitch=int(rng.uniform(30, 70)), pitch_range=int(rng.uniform(25, 85)),
        word_gap=int(rng.integers(0, 3)), warp=float(rng.uniform(0.92, 1.08)),
        tilt=float(rng.uniform(-0.5, 0.6)), resonance_hz=float(math.exp(rng.uniform(math.log(500), math.log(3800)))),
        resonance_gain_db=float(rng.uniform(-9, 9)), resonance_q=float(rng.uniform(1.0, 4.0)),
        level_db=float(rng.uniform(-28, -20)))


def peaking_biquad(centre_hz: float, gain_db: float, q: float, sample_rate: int = SAMPLE_RATE
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """(b, a) of a peaking equaliser (the audio-EQ-cookbook form)."""
    amplitude = 10.0 ** (gain_db / 40.0)
    omega = 2.0 * math.pi * min(centre_hz, 0.45 * sample_rate) / sample_rate
    alpha = math.sin(omega) / (2.0 * q)
    b = np.array([1 + alpha * amplitude, -2 * math.cos(omega), 1 - alpha * amplitude])
    a = np.array([1 + alpha / amplitude, -2 * math.cos(omega), 1 - alpha / amplitude])
    return b / a[0], a / a[0]


def apply_voice_filter(samples: np.ndarray, voice: Voice) -> np.ndarray:
    """Speaker tilt and resonance on 16 kHz float samples ``[T]``."""
    from scipy.signal import lfilter

    # unit gain at DC for tilt > 0 (low-pass), unit gain at Nyquist for tilt < 0 (high-pass)
    if voice.tilt >= 0:
        out = lfilter([1.0 - voice.tilt], [1.0, -voice.tilt], samples)
    else:
        out = lfilter([1.0, voice.tilt], [1.0 + abs(voice.tilt)], samples)
    b, a = peaking_biquad(voice.resonance_hz, voice.resonance_gain_db, voice.resonance_q)
    return lfilter(b, a, out)


def render(espeak_samples: np.ndarray, voice: Voice) -> np.ndarray:
    """espeak int16 samples at 22.05 kHz -> float32 ``[T]`` at 16 kHz in the speaker's voice.

    Leading/trailing silence beyond 150 ms is trimmed so that utterance lengths reflect speech.
    """
    audio = espeak_samples.astype(np.float32) / 32768.0
    audio = trim_silence(audio, ESPEAK_RATE)
    audio = resample(audio, voice.espeak_rate, SAMPLE_RATE)
    audio = apply_voice_filter(audio, voice)
    return set_level(audio, voice.level_db)


def trim_silence(audio: np.ndarray, sample_rate: int, keep_seconds: float = 0.15, threshold: float = 1e-3
                 ) -> np.ndarray:
    loud = np.nonzero(np.abs(audio) > threshold)[0]
    if len(loud) == 0:
        return audio
    keep = int(keep_seconds * sample_rate)
    return audio[max(0, loud[0] - keep):min(len(audio), loud[-1] + keep)]


def set_level(audio: np.ndarray, level_db: float, peak: float = 0.99) -> np.ndarray:
    """Scale to an RMS of ``level_db`` dBFS, then down if needed so the peak stays below ``peak``."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    if rms <= 0:
        return audio.astype(np.float32)
    gain = 10.0 ** (level_db / 20.0) / rms
    top = float(np.max(np.abs(audio))) * gain
    if top > peak:
        gain *= peak / top
    return (audio * gain).astype(np.float32)
