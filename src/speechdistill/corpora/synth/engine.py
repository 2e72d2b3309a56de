"""Running the mini-corpus work in parallel, reproducibly.

Work is cut into *shards* (all utterances of one speaker, one music file, one room, ...).
Every shard runs in a fresh worker process forked from a clean fork server, so its output
depends only on the shard itself, never on which worker ran it or what ran before (espeak-ng
keeps state across utterances of a process). Every random choice of a shard comes from a
generator seeded by the shard's own seed. Files are written to a temporary name and renamed.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import soundfile
from tqdm import tqdm

from .voices import SAMPLE_RATE, Voice, render

Task = Tuple[Callable[..., "TaskResult"], tuple]


@dataclasses.dataclass
class TaskResult:
    """What a shard produced: total audio seconds (for progress) and any value for the caller."""

    seconds: float
    value: Any = None


@dataclasses.dataclass
class Channel:
    """A recording channel (VoxCeleb: one per video): an EQ bump and a background-noise floor."""

    eq_hz: float
    eq_gain_db: float
    noise_snr_db: float
    noise_tilt: float


@dataclasses.dataclass
class SpeechItem:
    """One output file: the sentences spoken in it (joined with ``pause`` seconds of silence)."""

    sentences: List[str]
    path: str
    channel: Optional[Channel] = None
    pause: float = 0.4


@dataclasses.dataclass
class SpeechShard:
    voice: Voice
    items: List[SpeechItem]
    seed: int
    subtype: str = "PCM_16"


def write_audio(path: str, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> int:
    """Write ``samples`` ``[T]`` (format from the extension) via a temp name + rename; returns T."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    fmt = {".flac": "FLAC", ".wav": "WAV"}[target.suffix.lower()]
    soundfile.write(str(tmp), np.clip(samples, -1.0, 1.0), sample_rate, subtype=subtype, format=fmt)
    os.replace(tmp, target)
    return int(len(samples))


def apply_channel(audio: np.ndarray, channel: Channel, rng: np.random.Generator) -> np.ndarray:
    """Channel EQ plus coloured background noise at ``channel.noise_snr_db`` below the speech."""
    from scipy.signal import lfilter

    from .voices import peaking_biquad

    b, a = peaking_biquad(channel.eq_hz, channel.eq_gain_db, 0.9)
    out = lfilter(b, a, audio)
    noise = lfilter([1.0 - abs(channel.noise_tilt)], [1.0, -channel.noise_tilt], rng.standard_normal(len(out)))
    speech_power = float(np.mean(out ** 2)) + 1e-12
    noise *= np.sqrt(speech_power / (float(np.mean(noise ** 2)) + 1e-12) * 10 ** (-channel.noise_snr_db / 10))
    return (out + noise).astype(np.float32)


def speak(sentences: Sequence[str], voice: Voice, pause: float = 0.4) -> np.ndarray:
    """16 kHz float32 ``[T]`` of ``sentences`` in ``voice`` (synthesized in this process)."""
    from .espeak import get_espeak

    engine = get_espeak(os.environ.get("SPEECHDISTILL_ESPEAK_DATA"))
    pieces = []
    gap = np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)
    for index, sentence in enumerate(sentences):
        raw = engine.synthesize(sentence.lower(), voice.espeak_voice, rate=voice.rate, pitch=voice.pitch,
                                pitch_range=voice.pitch_range, word_gap=voice.word_gap)
        if index:
            pieces.append(gap)
        pieces.append(render(raw, voice))
    return np.concatenate(pieces)


def run_speech_shard(shard: SpeechShard) -> TaskResult:
    """Synthesize every item of a shard; value: list of (path, num_samples)."""
    rng = np.random.default_rng(shard.seed)
    written = []
    seconds = 0.0
    for item in shard.items:
        audio = speak(item.sentences, shard.voice, item.pause)
        if item.channel is not None:
            audio = apply_channel(audio, item.channel, rng)
        written.append((item.path, write_audio(item.path, audio, subtype=shard.subtype)))
        seconds += len(audio) / SAMPLE_RATE
    return TaskResult(seconds, written)


def _worker_init(espeak_data: Optional[str]) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    if espeak_data:
        os.environ["SPEECHDISTILL_ESPEAK_DATA"] = espeak_data
    import torch

    torch.set_num_threads(1)


def _call(task: Task) -> TaskResult:
    function, args = task
    return function(*args)


def run_tasks(tasks: Sequence[Task], *, nj: int, desc: str, espeak_data: Optional[str] = None) -> List[TaskResult]:
    """Run ``tasks`` (function, args) each in a fresh process, ``nj`` at a time; results in task order.

    Progress shows audio seconds produced per second and the ETA in tasks.
    """
    results: List[Optional[TaskResult]] = [None] * len(tasks)
    context = multiprocessing.get_context("forkserver")
    # preload the heavy imports once in the fork server; each task then forks a clean child cheaply
    context.set_forkserver_preload(["speechdistill.corpora.synth.engine", "torch", "scipy.signal",
                                    "pyroomacoustics"])
    start = time.monotonic()
    produced = 0.0
    with tqdm(total=len(tasks), desc=desc, unit="shard", file=sys.stderr, dynamic_ncols=True, disable=None) as bar, \
            context.Pool(max(1, nj), initializer=_worker_init, initargs=(espeak_data,), maxtasksperchild=1) as pool:
        pending = [(index, pool.apply_async(_call, (task,))) for index, task in enumerate(tasks)]
        for index, handle in pending:
            results[index] = handle.get()
            produced += results[index].seconds
            bar.update(1)
            bar.set_postfix_str(f"{produced / max(time.monotonic() - start, 1e-9):.0f} audio-s/s")
    return [r for r in results if r is not None]
