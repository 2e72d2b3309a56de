"""Mini MUSAN: synthesized noise, music and speech in MUSAN's layout.

``<out>/musan/noise/synth/noise-synth-NNNN.wav``, ``<out>/musan/music/synth/music-synth-NNNN.wav``
with ``ANNOTATIONS`` (third column: vocals Y/N), ``<out>/musan/speech/synth/speech-synth-NNNN.wav``
with ``ANNOTATIONS``; 16 kHz 16-bit WAV like the real corpus.

* noise: stationary coloured noises (white, pink, brown, blue, violet) and non-stationary
  ones (amplitude-modulated, gated bursts, sirens, mains hum with harmonics, rain-like
  clicks, engine rumble);
* music: chord progressions of additive-synthesis tones with a bass line, a melody and,
  for most genres, a drum pattern (kick, snare, hi-hat) at a random tempo; some pieces
  carry a synthesized voice (vocals ``Y``);
* speech: one synthetic talker per file reading several sentences; mixing 3-8 of them at
  augmentation time gives babble.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .build import VoiceData, build_once, shard_seeds
from .engine import SpeechItem, SpeechShard, TaskResult, run_speech_shard, run_tasks, speak, write_audio
from .sentences import SentenceGenerator
from .voices import SAMPLE_RATE, Voice, make_voices, set_level

NOISE_KINDS = ("white", "pink", "brown", "blue", "violet", "modulated", "bursts", "siren", "hum", "rain", "engine")
GENRES = ("pop", "ambient", "rock", "waltz", "electronic")


@dataclasses.dataclass
class MiniMusanConfig:
    noise_files: int = 22
    music_files: int = 12
    speech_files: int = 12
    min_seconds: float = 8.0
    max_seconds: float = 16.0
    vocals_fraction: float = 0.25


def coloured_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power spectral density goes as f**exponent (0 white, -1 pink, -2 brown, 1 blue, 2 violet)."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length, 1.0 / SAMPLE_RATE)
    freqs[0] = freqs[1]
    spectrum *= freqs ** (exponent / 2.0)
    out = np.fft.irfft(spectrum, n=length)
    return out / (np.std(out) + 1e-12)


def make_noise(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    if kind in ("white", "pink", "brown", "blue", "violet"):
        exponent = {"white": 0.0, "pink": -1.0, "brown": -2.0, "blue": 1.0, "violet": 2.0}[kind]
        return coloured_noise(n, exponent, rng)
    if kind == "modulated":
        rate = rng.uniform(0.3, 4.0)
        envelope = 0.55 + 0.45 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
        return coloured_noise(n, rng.uniform(-1.5, 0.5), rng) * envelope
    if kind == "bursts":
        out = np.zeros(n)
        position = 0
        while position < n:
            length = int(rng.uniform(0.05, 0.8) * SAMPLE_RATE)
            burst = coloured_noise(length, rng.uniform(-2, 1), rng) * np.hanning(length)
            out[position:position + length] += burst[:max(0, min(length, n - position))]
            position += length + int(rng.uniform(0.1, 1.5) * SAMPLE_RATE)
        return out + 0.05 * coloured_noise(n, -1.0, rng)
    if kind == "siren":
        low, high = rng.uniform(400, 800), rng.uniform(900, 1600)
        period = rng.uniform(0.8, 3.0)
        frequency = low + (high - low) * 0.5 * (1 + np.sin(2 * np.pi * t / period))
        phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
        return np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.1 * coloured_noise(n, -1.0, rng)
    if kind == "hum":
        mains = rng.choice([50.0, 60.0])
        out = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 6.3))
                  for k in range(1, 9))
        return out + 0.05 * coloured_noise(n, 0.0, rng)
    if kind == "rain":
        clicks = (rng.random(n) < rng.uniform(0.001, 0.01)) * rng.standard_normal(n)
        kernel = np.exp(-np.arange(80) / rng.uniform(5, 25))
        return np.convolve(clicks, kernel, mode="same") + 0.2 * coloured_noise(n, -1.0, rng)
    if kind == "engine":
        rpm_hz = rng.uniform(20, 60) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t))
        phase = 2 * np.pi * np.cumsum(rpm_hz) / SAMPLE_RATE
        pulses = np.maximum(np.sin(phase), 0) ** 8
        return pulses + 0.4 * coloured_noise(n, -2.0, rng)
    raise ValueError(f"unknown noise kind '{kind}'")


def _tone(frequency: float, length: int, harmonics: int, decay: float) -> np.ndarray:
    t = np.arange(length) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * frequency * k * t) / k ** 1.3 for k in range(1, harmonics + 1))
    attack = min(length, int(0.01 * SAMPLE_RATE))
    envelope = np.exp(-t * decay)
    envelope[:attack] *= np.linspace(0, 1, attack)
    return wave * envelope


def make_music(genre: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A piece of ``genre``: chords, bass, melody and (except ambient) drums; float ``[T]``."""
    n = int(seconds * SAMPLE_RATE)
    tempo = rng.uniform(70, 150) if genre != "electronic" else rng.uniform(120, 160)
    beats_per_bar = 3 if genre == "waltz" else 4
    beat = int(60.0 / tempo * SAMPLE_RATE)
    key = 220.0 * 2 ** (int(rng.integers(0, 12)) / 12)
    scale = [0, 2, 4, 5, 7, 9, 11]
    progression = [[0, 4, 7], [7, 11, 14], [9, 12, 16], [5, 9, 12]]  # I V vi IV in semitones above the key
    start_chord = int(rng.integers(len(progression)))
    bar = beat * beats_per_bar
    out = np.zeros(n + 2 * bar)  # room for the last bar; cut to n at the end
    for bar_index, position in enumerate(range(0, n, bar)):
        chord = progression[(start_chord + bar_index) % len(progression)]
        sustain = 0.6 if genre == "ambient" else 2.5
        for semitone in chord:
            out[position:position + bar] += 0.25 * _tone(key * 2 ** (semitone / 12), bar, 6, sustain)
        for b in range(beats_per_bar):  # bass on every beat
            at = position + b * beat
            out[at:at + beat] += 0.35 * _tone(key / 2 * 2 ** (chord[0] / 12), len(out[at:at + beat]), 3, 4.0)
        for b in range(beats_per_bar * 2):  # melody in eighth notes, some rests
            if rng.random() < 0.35:
                continue
            at = position + b * beat // 2
            note = key * 2 ** ((scale[int(rng.integers(len(scale)))] + 12) / 12)
            out[at:at + beat // 2] += 0.2 * _tone(note, len(out[at:at + beat // 2]), 4, 6.0)
        if genre != "ambient":
            for b in range(beats_per_bar):
                at = position + b * beat
                if b % 2 == 0:
                    out[at:at + beat] += 0.8 * _kick(len(out[at:at + beat]))
                else:
                    out[at:at + beat] += 0.4 * _snare(len(out[at:at + beat]), rng)
                for half in (0, beat // 2):
                    h = at + half
                    out[h:h + beat // 4] += 0.15 * _hat(len(out[h:h + beat // 4]), rng)
    return out[:n]


def _kick(length: int) -> np.ndarray:
    t = np.arange(length) / SAMPLE_RATE
    frequency = 45 + 60 * np.exp(-t * 30)
    return np.sin(2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE) * np.exp(-t * 12)


def _snare(length: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(length) / SAMPLE_RATE
    return (rng.standard_normal(length) * 0.7 + np.sin(2 * np.pi * 190 * t)) * np.exp(-t * 25)


def _hat(length: int, rng: np.random.Generator) -> np.ndarray:
    noise = np.diff(rng.standard_normal(length + 1))  # differentiated noise: bright
    return noise * np.exp(-np.arange(length) / SAMPLE_RATE * 60)


def run_noise_file(kind: str, seconds: float, path: str, seed: int) -> TaskResult:
    rng = np.random.default_rng(seed)
    audio = set_level(make_noise(kind, seconds, rng).astype(np.float32), float(rng.uniform(-30, -18)))
    write_audio(path, audio)
    return TaskResult(seconds)


def run_music_file(genre: str, seconds: float, path: str, seed: int, vocals: Optional[Voice],
                   lyrics: List[str]) -> TaskResult:
    rng = np.random.default_rng(seed)
    music = set_level(make_music(genre, seconds, rng).astype(np.float32), -24.0)
    if vocals is not None:
        voice = speak(lyrics, vocals, pause=0.3)[:len(music)]
        offset = int(rng.integers(0, max(1, len(music) - len(voice))))
        music[offset:offset + len(voice)] += set_level(voice, -22.0)
    write_audio(path, set_level(music, float(rng.uniform(-26, -18))))
    return TaskResult(seconds)


def make_mini_musan(out_root: Path, config: MiniMusanConfig, *, seed: int = 0, nj: int = 2) -> Dict[str, Any]:
    """Build (or keep) ``out_root/musan``; returns its marker (settings, produced, skipped)."""
    settings = {"seed": seed, **dataclasses.asdict(config)}
    return build_once(Path(out_root), "musan", settings, lambda tmp: _build(tmp, config, seed, nj))


def _build(root: Path, config: MiniMusanConfig, seed: int, nj: int) -> Dict[str, Any]:
    rng = np.random.default_rng([seed, 3])
    sentences = SentenceGenerator(rng)
    voices = make_voices(config.speech_files + config.music_files, rng, prefix="mu")
    tasks = []
    noise_dir, music_dir, speech_dir = root / "noise" / "synth", root / "music" / "synth", root / "speech" / "synth"
    for d in (noise_dir, music_dir, speech_dir):
        d.mkdir(parents=True)

    def seconds() -> float:
        return float(rng.uniform(config.min_seconds, config.max_seconds))

    noise_notes = []
    for index, noise_seed in enumerate(shard_seeds(rng, config.noise_files)):
        kind = NOISE_KINDS[index % len(NOISE_KINDS)]
        name = f"noise-synth-{index:04d}"
        noise_notes.append(f"{name} {kind}\n")
        tasks.append((run_noise_file, (kind, seconds(), str(noise_dir / f"{name}.wav"), noise_seed)))
    music_notes = []
    for index, music_seed in enumerate(shard_seeds(rng, config.music_files)):
        genre = GENRES[index % len(GENRES)]
        with_vocals = rng.random() < config.vocals_fraction
        name = f"music-synth-{index:04d}"
        music_notes.append(f"{name} {genre} {'Y' if with_vocals else 'N'} speechdistill speechdistill\n")
        lyrics = [sentences.sentence(5, 12) for _ in range(3)]
        tasks.append((run_music_file, (genre, seconds(), str(music_dir / f"{name}.wav"), music_seed,
                                       voices[config.speech_files + index] if with_vocals else None, lyrics)))
    speech_notes = []
    for index, speech_seed in enumerate(shard_seeds(rng, config.speech_files)):
        name = f"speech-synth-{index:04d}"
        voice = voices[index]
        speech_notes.append(f"{name} {'female' if voice.gender == 'f' else 'male'} english\n")
        target = seconds()
        texts = []
        while sum(len(t.split()) for t in texts) / (voice.rate / 60.0) < target:
            texts.append(sentences.sentence(6, 18))
        item = SpeechItem(texts, str(speech_dir / f"{name}.wav"), pause=float(rng.uniform(0.2, 0.8)))
        tasks.append((run_speech_shard, (SpeechShard(voice, [item], speech_seed),)))
    (noise_dir / "ANNOTATIONS").write_text("".join(noise_notes), encoding="utf-8")
    (music_dir / "ANNOTATIONS").write_text("".join(music_notes), encoding="utf-8")
    (speech_dir / "ANNOTATIONS").write_text("".join(speech_notes), encoding="utf-8")
    (root / "README").write_text("Mini MUSAN: noise, music and speech synthesized by speechdistill in the layout of\n"
                                 "MUSAN (openslr.org/17). Not real recordings.\n", encoding="utf-8")
    with VoiceData(voices, root) as espeak_data:
        results = run_tasks(tasks, nj=nj, desc="mini MUSAN", espeak_data=espeak_data)
    return {"noise_files": config.noise_files, "music_files": config.music_files,
            "speech_files": config.speech_files, "minutes": round(sum(r.seconds for r in results) / 60, 2),
            "music_with_vocals": sum(1 for line in music_notes if " Y " in line)}
