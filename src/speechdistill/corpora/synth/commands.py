"""Mini Speech Commands and mini Fluent Speech Commands: short commands synthesized in the real layouts.

Speech Commands v1.0 look-alike, ``<out>/speech_commands/``: ``<word>/<speaker>_nohash_<n>.wav``
(1-s 16 kHz clips: the word at a random offset over a faint recording channel),
``validation_list.txt`` and ``testing_list.txt`` (whole speakers per list, as the real hash-based
split), and ``_background_noise_/`` holding recordings of the mini MUSAN's noise part (built
first when needed). Words: the 10 commands and six of the real corpus's other words.

Fluent Speech Commands look-alike, ``<out>/fluent_speech_commands/``: ``data/{train,valid,test}_data.csv``
(unnamed index column, path, speakerId, transcription, action, object, location) and
``wavs/speakers/<speakerId>/<name>.wav``; each intent has several phrasings (templates), and the
speakers of the three splits are disjoint, as in the real corpus.
"""
from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from .build import VoiceData, build_once, shard_seeds
from .engine import Channel, TaskResult, apply_channel, speak, write_audio
from .voices import SAMPLE_RATE, Voice, make_voices

COMMAND_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
OTHER_WORDS = ("bed", "bird", "cat", "dog", "house", "tree")

# (action, object, location) -> phrasings; {loc} is filled from the location ("" for none)
INTENTS: Dict[Tuple[str, str, str], Tuple[str, ...]] = {}
for _location in ("kitchen", "bedroom", "washroom", "none"):
    _where = "" if _location == "none" else f" in the {_location}"
    INTENTS[("activate", "lights", _location)] = (f"turn on the lights{_where}", f"switch the lights on{_where}",
                                                  f"lights on{_where}")
    INTENTS[("deactivate", "lights", _location)] = (f"turn off the lights{_where}", f"switch off the lights{_where}",
                                                    f"lights off{_where}")
    INTENTS[("increase", "heat", _location)] = (f"turn up the heat{_where}", f"make it warmer{_where}",
                                                f"increase the temperature{_where}")
    INTENTS[("decrease", "heat", _location)] = (f"turn the heat down{_where}", f"make it cooler{_where}",
                                                f"decrease the temperature{_where}")
INTENTS.update({
    ("increase", "volume", "none"): ("turn up the volume", "louder please", "increase the sound"),
    ("decrease", "volume", "none"): ("turn down the volume", "quieter please", "decrease the sound"),
    ("activate", "music", "none"): ("play the music", "put on some music", "start the music"),
    ("deactivate", "music", "none"): ("stop the music", "turn the music off", "pause the music"),
    ("activate", "lamp", "none"): ("turn on the lamp", "switch the lamp on", "lamp on"),
    ("deactivate", "lamp", "none"): ("turn off the lamp", "switch the lamp off", "lamp off"),
    ("bring", "newspaper", "none"): ("bring me the newspaper", "get me the newspaper", "fetch the newspaper"),
    ("bring", "juice", "none"): ("bring me some juice", "get me the juice", "fetch some juice"),
    ("bring", "socks", "none"): ("bring me my socks", "get my socks", "fetch the socks"),
    ("bring", "shoes", "none"): ("bring me my shoes", "get my shoes", "fetch the shoes"),
})
for _language in ("Chinese", "Korean", "English", "German"):
    INTENTS[("change language", _language, "none")] = (f"change the language to {_language}",
                                                       f"switch to {_language}", f"set the language to {_language}")


@dataclasses.dataclass
class MiniSpeechCommandsConfig:
    """Speakers per split; every speaker says every word ``repetitions`` times."""

    train_speakers: int = 24
    dev_speakers: int = 4
    test_speakers: int = 6
    repetitions: int = 1
    background_files: int = 6


@dataclasses.dataclass
class MiniFluentCommandsConfig:
    """Speakers per split and utterances per speaker (each a random intent and phrasing)."""

    train_speakers: int = 24
    dev_speakers: int = 4
    test_speakers: int = 6
    utterances_per_speaker: int = 24


def _hex(rng: np.random.Generator, length: int) -> str:
    return "".join("0123456789abcdef"[int(i)] for i in rng.integers(0, 16, size=length))


def _channel(rng: np.random.Generator) -> Channel:
    return Channel(eq_hz=float(np.exp(rng.uniform(np.log(200), np.log(5000)))), eq_gain_db=float(rng.uniform(-6, 6)),
                   noise_snr_db=float(rng.uniform(25, 40)), noise_tilt=float(rng.uniform(-0.5, 0.9)))


def run_clip_shard(voice: Voice, items: List[Tuple[str, str, float]], seed: int, channel: Channel,
                   clip_seconds: float) -> TaskResult:
    """Synthesize ``(text, path, offset fraction)`` items; each becomes a ``clip_seconds`` clip (0: the
    utterance's own length) with the text at that offset, through the speaker's channel."""
    rng = np.random.default_rng(seed)
    seconds = 0.0
    for text, path, offset in items:
        audio = speak([text], voice)
        if clip_seconds > 0:
            length = int(clip_seconds * SAMPLE_RATE)
            audio = audio[:length]
            clip = np.zeros(length, dtype=np.float32)
            start = int(offset * (length - len(audio)))
            clip[start:start + len(audio)] = audio
            audio = clip
        audio = apply_channel(audio, channel, rng)
        write_audio(path, audio)
        seconds += len(audio) / SAMPLE_RATE
    return TaskResult(seconds)


def _run(root: Path, voices: List[Voice], shards: List[tuple], nj: int, desc: str) -> List[TaskResult]:
    from .engine import run_tasks

    with VoiceData(voices, root) as espeak_data:
        return run_tasks([(run_clip_shard, shard) for shard in shards], nj=nj, desc=desc, espeak_data=espeak_data)


def make_mini_speech_commands(out_root: Path, config: MiniSpeechCommandsConfig, musan_noise_dir: Path, *,
                              seed: int = 0, nj: int = 2) -> Dict[str, Any]:
    """Build (or keep) ``out_root/speech_commands``; ``musan_noise_dir``: the mini MUSAN's noise files."""
    noise = sorted(Path(musan_noise_dir).rglob("*.wav"))[:config.background_files]
    settings = {"seed": seed, **dataclasses.asdict(config), "noise": [p.name for p in noise]}
    return build_once(Path(out_root), "speech_commands", settings,
                      lambda tmp: _build_speech_commands(tmp, config, noise, seed, nj))


def _build_speech_commands(root: Path, config: MiniSpeechCommandsConfig, noise: List[Path], seed: int, nj: int
                           ) -> Dict[str, Any]:
    rng = np.random.default_rng([seed, 5])
    counts = {"train": config.train_speakers, "dev": config.dev_speakers, "test": config.test_speakers}
    voices = make_voices(sum(counts.values()), rng, prefix="sc")
    splits = [split for split, count in counts.items() for _ in range(count)]
    lists: Dict[str, List[str]] = {"dev": [], "test": []}
    shards = []
    for voice, split, shard_seed in zip(voices, splits, shard_seeds(rng, len(voices))):
        speaker = _hex(rng, 8)
        items = []
        for word in COMMAND_WORDS + OTHER_WORDS:
            for n in range(config.repetitions):
                name = f"{word}/{speaker}_nohash_{n}.wav"
                items.append((word, str(root / name), float(rng.uniform(0.1, 0.9))))
                if split in lists:
                    lists[split].append(name)
        shards.append((voice, items, shard_seed, _channel(rng), 1.0))
    results = _run(root, voices, shards, nj, "mini Speech Commands")
    (root / "validation_list.txt").write_text("".join(f"{n}\n" for n in sorted(lists["dev"])), encoding="utf-8")
    (root / "testing_list.txt").write_text("".join(f"{n}\n" for n in sorted(lists["test"])), encoding="utf-8")
    (root / "_background_noise_").mkdir()
    for path in noise:
        shutil.copyfile(path, root / "_background_noise_" / path.name)
    (root / "README.md").write_text(
        "Mini Speech Commands: words synthesized by speechdistill (espeak-ng voices) in the layout of Speech\n"
        "Commands v1.0, background noise from the mini MUSAN. Not real speech.\n", encoding="utf-8")
    return {"clips": sum(len(s[1]) for s in shards), "speakers": counts, "minutes": round(
        sum(r.seconds for r in results) / 60, 2), "background_files": len(noise)}


def make_mini_fluent_commands(out_root: Path, config: MiniFluentCommandsConfig, *, seed: int = 0, nj: int = 2
                              ) -> Dict[str, Any]:
    """Build (or keep) ``out_root/fluent_speech_commands``."""
    settings = {"seed": seed, **dataclasses.asdict(config)}
    return build_once(Path(out_root), "fluent_speech_commands", settings,
                      lambda tmp: _build_fluent_commands(tmp, config, seed, nj))


def _build_fluent_commands(root: Path, config: MiniFluentCommandsConfig, seed: int, nj: int) -> Dict[str, Any]:
    rng = np.random.default_rng([seed, 6])
    counts = {"train": config.train_speakers, "valid": config.dev_speakers, "test": config.test_speakers}
    voices = make_voices(sum(counts.values()), rng, prefix="fc")
    splits = [split for split, count in counts.items() for _ in range(count)]
    intents = sorted(INTENTS)
    rows: Dict[str, List[List[str]]] = {split: [] for split in counts}
    shards = []
    for voice, split, shard_seed in zip(voices, splits, shard_seeds(rng, len(voices))):
        speaker = _hex(rng, 16)
        items = []
        for _ in range(config.utterances_per_speaker):
            intent = intents[int(rng.integers(len(intents)))]
            phrasings = INTENTS[intent]
            text = phrasings[int(rng.integers(len(phrasings)))]
            relative = f"wavs/speakers/{speaker}/{_hex(rng, 8)}-{_hex(rng, 4)}-{_hex(rng, 4)}.wav"
            items.append((text, str(root / relative), 0.0))
            rows[split].append([relative, speaker, text[0].upper() + text[1:], *intent])
        shards.append((voice, items, shard_seed, _channel(rng), 0.0))
    results = _run(root, voices, shards, nj, "mini Fluent Speech Commands")
    (root / "data").mkdir()
    for split, lines in rows.items():
        with open(root / "data" / f"{split}_data.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            for index, line in enumerate(lines):
                writer.writerow([index, *line])
    (root / "readme.txt").write_text(
        "Mini Fluent Speech Commands: templated smart-home commands synthesized by speechdistill (espeak-ng\n"
        "voices) in the layout of Fluent Speech Commands. Not real speech.\n", encoding="utf-8")
    return {"utterances": {s: len(r) for s, r in rows.items()}, "intents": len(intents),
            "minutes": round(sum(r.seconds for r in results) / 60, 2)}
