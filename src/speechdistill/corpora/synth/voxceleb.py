"""Mini VoxCeleb: synthesized speakers in VoxCeleb1's layout, with a balanced trial list.

``<out>/VoxCeleb1/{dev,test}/wav/<idNNNNN>/<video>/<NNNNN>.wav`` and
``<out>/VoxCeleb1/veri_test2.txt`` (official format ``1|0 enroll test``) and
``<out>/VoxCeleb1/iden_split.txt`` (``1|2|3 <spk>/<video>/<n>.wav``: the identification split over
every speaker, see :func:`iden_split`). On request, the dev
speakers also as VoxCeleb2: ``<out>/VoxCeleb2/dev/aac/id0NNNN/<video>/<NNNNN>.m4a``, AAC-encoded
by ffmpeg as the real corpus is (the prep converts them back to FLAC). Dev (training)
and test speakers are disjoint. Every "video" of a speaker has its own recording channel
(an EQ and a background-noise floor), so that, as in VoxCeleb, a speaker must be recognised
across channels. Trials are half target (pairs of one speaker, from different videos when it
has several) and half nontarget.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from ..convert import find_ffmpeg
from .build import VoiceData, build_once, shard_seeds
from .engine import Channel, SpeechItem, SpeechShard, run_speech_shard, run_tasks
from .sentences import SentenceGenerator
from .voices import make_voices

_VIDEO_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


@dataclasses.dataclass
class MiniVoxCelebConfig:
    """Size of the mini VoxCeleb. ``train_minutes`` is a target (actual within ~10 %).

    The test side is sized for a stable EER: 20 speakers of 8 utterances give 560 target pairs
    (all used, with as many nontarget ones), an EER standard error of about 1.7 points at 20 %;
    the earlier 10 x 6 (150 target trials) gave about 3 points, larger than the gaps the demo
    compares. Test utterances cost only synthesis and embedding extraction, not training.
    """

    train_minutes: float = 30.0
    train_speakers: int = 40
    test_speakers: int = 20
    test_utterances_per_speaker: int = 8
    videos_per_speaker: int = 3
    trials: int = 1120
    min_words: int = 5
    max_words: int = 16


def _video_id(rng: np.random.Generator) -> str:
    first = _VIDEO_ALPHABET[int(rng.integers(62))]  # no leading '-' or '_'
    return first + "".join(_VIDEO_ALPHABET[int(i)] for i in rng.integers(0, len(_VIDEO_ALPHABET), size=10))


def _channel(rng: np.random.Generator) -> Channel:
    return Channel(eq_hz=float(np.exp(rng.uniform(np.log(200), np.log(5000)))), eq_gain_db=float(rng.uniform(-6, 6)),
                   noise_snr_db=float(rng.uniform(20, 40)), noise_tilt=float(rng.uniform(-0.5, 0.9)))


def make_trials(utterances: Dict[str, List[str]], count: int, rng: np.random.Generator) -> List[Tuple[int, str, str]]:
    """Balanced (label, enroll, test) trials over ``speaker -> utterance keys``.

    Target pairs prefer different videos; there are ``min(count // 2, possible target pairs)``
    of each label, in shuffled order.
    """
    targets = []
    for keys in utterances.values():
        for a, b in itertools.combinations(keys, 2):
            cross_video = a.split("/")[1] != b.split("/")[1]
            targets.append((not cross_video, a, b))
    order = rng.permutation(len(targets))
    targets = sorted((targets[i] for i in order), key=lambda t: t[0])  # cross-video pairs first
    half = min(count // 2, len(targets))
    chosen = [(1, a, b) for _, a, b in targets[:half]]
    speakers = sorted(utterances)
    seen = set()
    while len(chosen) < 2 * half:
        s1, s2 = rng.choice(len(speakers), size=2, replace=False)
        a = utterances[speakers[s1]][int(rng.integers(len(utterances[speakers[s1]])))]
        b = utterances[speakers[s2]][int(rng.integers(len(utterances[speakers[s2]])))]
        if (a, b) not in seen:
            seen.add((a, b))
            chosen.append((0, a, b))
    return [chosen[i] for i in rng.permutation(len(chosen))]


def iden_split(utterances: Dict[str, List[str]]) -> List[Tuple[int, str]]:
    """VoxCeleb1-style identification split over every speaker: per speaker (utterances in recording
    order, videos taking turns) the last utterance is test (3), the one before dev (2), the rest train (1)."""
    split = []
    for speaker in sorted(utterances):
        keys = utterances[speaker]
        for index, key in enumerate(keys):
            back = len(keys) - index
            split.append((3 if back == 1 else 2 if back == 2 and len(keys) >= 3 else 1, key))
    return split


def make_mini_voxceleb(out_root: Path, config: MiniVoxCelebConfig, *, seed: int = 0, nj: int = 2) -> Dict[str, Any]:
    """Build (or keep) ``out_root/VoxCeleb1``; returns its marker (settings, produced, skipped)."""
    settings = {"seed": seed, **dataclasses.asdict(config), "iden_split": 1}
    return build_once(Path(out_root), "VoxCeleb1", settings, lambda tmp: _build(tmp, config, seed, nj))


def _build(root: Path, config: MiniVoxCelebConfig, seed: int, nj: int) -> Dict[str, Any]:
    rng = np.random.default_rng([seed, 2])
    total = config.train_speakers + config.test_speakers
    voices = make_voices(total, rng, prefix="vc")
    ids = [f"id{n}" for n in sorted(rng.choice(np.arange(10001, 11252), size=total, replace=False))]
    order = rng.permutation(total)
    speaker_ids = [ids[i] for i in order]
    sentences = SentenceGenerator(rng)
    shards: List[SpeechShard] = []
    test_utterances: Dict[str, List[str]] = {}
    all_utterances: Dict[str, List[str]] = {}
    seeds = shard_seeds(rng, total)
    texts: List[List[str]] = [[] for _ in range(total)]
    planned, turn = 0.0, 0
    while planned < config.train_minutes * 60 or turn < config.train_speakers:  # round-robin over training speakers
        index = turn % config.train_speakers
        texts[index].append(sentences.sentence(config.min_words, config.max_words))
        planned += voices[index].estimated_seconds(texts[index][-1])
        turn += 1
    for index in range(config.train_speakers, total):
        texts[index] = [sentences.sentence(config.min_words, config.max_words)
                        for _ in range(config.test_utterances_per_speaker)]
    for index, (speaker, voice) in enumerate(zip(speaker_ids, voices)):
        subset = "dev" if index < config.train_speakers else "test"
        videos = [(_video_id(rng), _channel(rng)) for _ in range(max(1, config.videos_per_speaker))]
        numbers: Dict[str, int] = {}
        items = []
        for n, text in enumerate(texts[index]):
            video, channel = videos[n % len(videos)]
            numbers[video] = numbers.get(video, 0) + 1
            path = root / subset / "wav" / speaker / video / f"{numbers[video]:05d}.wav"
            items.append(SpeechItem([text], str(path), channel))
            all_utterances.setdefault(speaker, []).append(f"{speaker}/{video}/{numbers[video]:05d}.wav")
            if subset == "test":
                test_utterances.setdefault(speaker, []).append(f"{speaker}/{video}/{numbers[video]:05d}.wav")
        shards.append(SpeechShard(voice, items, seeds[index]))
    with VoiceData(voices, root) as espeak_data:
        results = run_tasks([(run_speech_shard, (shard,)) for shard in shards], nj=nj, desc="mini VoxCeleb",
                            espeak_data=espeak_data)
    trials = make_trials(test_utterances, config.trials, rng)
    (root / "veri_test2.txt").write_text("".join(f"{label} {a} {b}\n" for label, a, b in trials), encoding="utf-8")
    (root / "iden_split.txt").write_text("".join(f"{number} {key}\n" for number, key in iden_split(all_utterances)),
                                         encoding="utf-8")
    (root / "README.TXT").write_text(
        "Mini VoxCeleb: speakers synthesized by speechdistill (espeak-ng voices, per-video channels) in the\n"
        "layout of VoxCeleb1, with a balanced trial list in the official format. Not real speech.\n", encoding="utf-8")
    train_seconds = sum(r.seconds for r, s in zip(results, shards) if "/dev/" in s.items[0].path)
    return {"train_minutes": round(train_seconds / 60, 2), "train_speakers": config.train_speakers,
            "test_speakers": config.test_speakers, "trials": len(trials),
            "target_trials": sum(1 for t in trials if t[0] == 1)}


def make_mini_voxceleb2(out_root: Path, config: MiniVoxCelebConfig, *, seed: int = 0, nj: int = 2) -> Dict[str, Any]:
    """Build (or keep) ``out_root/VoxCeleb2``: the dev speakers of the mini VoxCeleb1 (built first when
    needed) as m4a files in VoxCeleb2's layout, speaker ``id1NNNN`` renamed ``id0NNNN``."""
    voxceleb1 = make_mini_voxceleb(out_root, config, seed=seed, nj=nj)
    settings = {"from": voxceleb1["settings"], "codec": "aac 64k"}
    return build_once(Path(out_root), "VoxCeleb2", settings,
                      lambda tmp: _encode_m4a(Path(out_root) / "VoxCeleb1" / "dev" / "wav", tmp, nj))


def _encode_m4a(source_root: Path, root: Path, nj: int) -> Dict[str, Any]:
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    ffmpeg = find_ffmpeg()
    jobs = []
    for wav in sorted(source_root.rglob("*.wav")):
        speaker, video = wav.parent.parent.name, wav.parent.name
        target = root / "dev" / "aac" / f"id0{speaker[3:]}" / video / f"{wav.stem}.m4a"
        target.parent.mkdir(parents=True, exist_ok=True)
        # -fflags +bitexact -map_metadata -1: the same bytes on every run (no encoder tag or timestamps)
        jobs.append([ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", "-b:a", "64k",
                     "-fflags", "+bitexact", "-map_metadata", "-1", str(target)])

    def run(command: List[str]) -> None:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ffmpeg failed on {command[-1]}: {done.stderr.decode('utf-8', 'replace').strip()}")

    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:
        list(pool.map(run, jobs))
    (root / "README.TXT").write_text(
        "Mini VoxCeleb2: the training speakers of the mini VoxCeleb1 (synthesized by speechdistill), AAC-encoded\n"
        "in the layout of VoxCeleb2 dev. Not real speech.\n", encoding="utf-8")
    return {"files": len(jobs), "speakers": len({Path(j[-1]).parent.parent.name for j in jobs})}
