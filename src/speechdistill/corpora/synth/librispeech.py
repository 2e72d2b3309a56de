"""Mini LibriSpeech: synthesized read speech in LibriSpeech's layout.

``<out>/LibriSpeech/{train-mini,dev-mini,test-mini}/<reader>/<chapter>/<reader>-<chapter>-<NNNN>.flac``
with ``<reader>-<chapter>.trans.txt`` per chapter and ``SPEAKERS.TXT``, so that
:func:`speechdistill.corpora.librispeech.prepare_librispeech` reads it like the real corpus.
Readers of the three parts are disjoint; each reads one or two chapters in one fixed voice.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from .build import VoiceData, build_once, shard_seeds
from .engine import SpeechItem, SpeechShard, run_speech_shard, run_tasks
from .sentences import SentenceGenerator, load_words
from .voices import Voice, make_voices

PARTS = ("train-mini", "dev-mini", "test-mini")


@dataclasses.dataclass
class MiniLibriSpeechConfig:
    """Size of the mini LibriSpeech. Minutes are targets: actual durations land within ~10 %."""

    train_minutes: float = 30.0
    dev_minutes: float = 4.0
    test_minutes: float = 4.0
    train_speakers: int = 40
    dev_speakers: int = 6
    test_speakers: int = 6
    min_words: int = 6
    max_words: int = 22


def plan_part(minutes: float, voices: List[Voice], readers: List[int], rng: np.random.Generator,
              config: MiniLibriSpeechConfig) -> Dict[Tuple[int, int], List[str]]:
    """(reader, chapter) -> sentences, dealt round-robin over readers until ``minutes`` are reached."""
    sentences = SentenceGenerator(rng)
    chapters = {reader: [int(c) for c in rng.choice(np.arange(100, 300000), size=int(rng.integers(1, 3)),
                                                    replace=False)] for reader in readers}
    plan: Dict[Tuple[int, int], List[str]] = {}
    total = 0.0
    turn = 0
    while total < minutes * 60 or turn < len(readers):
        index = turn % len(readers)
        reader = readers[index]
        chapter = chapters[reader][(turn // len(readers)) % len(chapters[reader])]
        text = sentences.sentence(config.min_words, config.max_words)
        plan.setdefault((reader, chapter), []).append(text)
        total += voices[index].estimated_seconds(text)
        turn += 1
    return plan


def make_mini_librispeech(out_root: Path, config: MiniLibriSpeechConfig, *, seed: int = 0, nj: int = 2
                          ) -> Dict[str, Any]:
    """Build (or keep) ``out_root/LibriSpeech``; returns its marker (settings, produced, skipped)."""
    settings = {"seed": seed, **dataclasses.asdict(config)}
    return build_once(Path(out_root), "LibriSpeech", settings, lambda tmp: _build(tmp, config, seed, nj))


def _build(root: Path, config: MiniLibriSpeechConfig, seed: int, nj: int) -> Dict[str, Any]:
    rng = np.random.default_rng([seed, 1])
    counts = {"train-mini": config.train_speakers, "dev-mini": config.dev_speakers, "test-mini": config.test_speakers}
    minutes = {"train-mini": config.train_minutes, "dev-mini": config.dev_minutes, "test-mini": config.test_minutes}
    voices = make_voices(sum(counts.values()), rng, prefix="ls")
    readers = [int(r) for r in rng.choice(np.arange(10, 9999), size=len(voices), replace=False)]
    names = load_words()["name"]
    shards: List[SpeechShard] = []
    speakers_txt = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    reader_info = []
    start = 0
    for part in PARTS:
        part_voices = voices[start:start + counts[part]]
        part_readers = readers[start:start + counts[part]]
        start += counts[part]
        plan = plan_part(minutes[part], part_voices, part_readers, rng, config)
        by_reader: Dict[int, List[SpeechItem]] = {}
        for (reader, chapter), texts in sorted(plan.items()):
            chapter_dir = root / part / str(reader) / str(chapter)
            chapter_dir.mkdir(parents=True, exist_ok=True)
            lines = []
            for number, text in enumerate(texts):
                key = f"{reader}-{chapter}-{number:04d}"
                lines.append(f"{key} {text}\n")
                by_reader.setdefault(reader, []).append(SpeechItem([text], str(chapter_dir / f"{key}.flac")))
            (chapter_dir / f"{reader}-{chapter}.trans.txt").write_text("".join(lines), encoding="utf-8")
        seeds = shard_seeds(rng, len(part_readers))
        for reader, voice, shard_seed in zip(part_readers, part_voices, seeds):
            shards.append(SpeechShard(voice, by_reader[reader], shard_seed))
            reader_info.append((reader, voice, part))
    with VoiceData(voices, root) as espeak_data:
        results = run_tasks([(run_speech_shard, (shard,)) for shard in shards], nj=nj,
                            desc="mini LibriSpeech", espeak_data=espeak_data)
    seconds_by_part: Dict[str, float] = {part: 0.0 for part in PARTS}
    for (reader, voice, part), result in zip(reader_info, results):
        seconds_by_part[part] += result.seconds
        name = f"{names[reader % len(names)].capitalize()} {chr(65 + reader % 26)}."
        speakers_txt.append(f"{reader:<5}| {voice.gender.upper()} | {part:<17}| {result.seconds / 60:5.2f} | {name}")
    (root / "SPEAKERS.TXT").write_text("\n".join(speakers_txt) + "\n", encoding="utf-8")
    (root / "README.TXT").write_text(
        "Mini LibriSpeech: speech synthesized by speechdistill (espeak-ng voices, our own sentence generator)\n"
        "in the layout of LibriSpeech (openslr.org/12). Not real speech; for recipe tests and demos.\n",
        encoding="utf-8")
    return {"minutes": {part: round(s / 60, 2) for part, s in seconds_by_part.items()},
            "speakers": counts, "utterances": sum(len(s.items) for s in shards)}
