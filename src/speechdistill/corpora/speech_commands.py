"""Speech Commands v1.0 -> Kaldi data dirs for keyword spotting (SUPERB KS), labels in ``utt2label``.

Layout read (``speech_commands_v0.01.tar.gz`` unpacked): ``<root>/<word>/<speaker>_nohash_<n>.wav``
(1-s clips, 30 words), ``<root>/validation_list.txt`` and ``<root>/testing_list.txt`` (the standard
split: ``<word>/<file>`` lines, drawn from a hash of the speaker), and
``<root>/_background_noise_/*.wav``. Optionally the separate test archive
(``speech_commands_test_set_v0.01``), ``<test>/<label>/*.wav`` with label directories for the 10
words, ``_unknown_`` and ``_silence_``: SUPERB's KS test set.

Labels (12 classes, as SUPERB): the 10 command words (yes no up down left right on off stop go),
``_unknown_`` for every other word, ``_silence_`` for background noise. Silence utterances are
1-s pieces of the background-noise recordings, cut once into WAV files under ``clip_dir``
(outside the data dir): the first 80 % of each recording serves ``train``, the next 10 % ``dev``
and the last 10 % ``test`` (SUPERB instead crops a random second of a whole recording at every
draw, for train and dev alike).

Utterance ids are ``<speaker>-<word>-<n>`` (speaker = the hash prefix of the file name, so each
speaker's utterances stay together) and ``bgnoise-<recording>-<NNNN>`` for silence.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Set

import soundfile

from ..data.audio import SAMPLE_RATE
from .common import CorpusError, PrepResult, Utterance, check_key, finish_prep, probe_all, resolve_dir, skip_if_done

logger = logging.getLogger("speechdistill.corpora")

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
SPLITS = ("train", "dev", "test")
NOISE_DIR = "_background_noise_"
_FILE = re.compile(r"^([0-9a-zA-Z]+)_nohash_([0-9]+)\.wav$")
# which share of each background-noise recording each split cuts its 1-s silence clips from
NOISE_SHARES = {"train": (0.0, 0.8), "dev": (0.8, 0.9), "test": (0.9, 1.0)}


def label_of(word: str) -> str:
    return word if word in COMMANDS else UNKNOWN


def read_list(path: Path) -> Set[str]:
    if not path.is_file():
        raise CorpusError(f"{path} not found: the standard Speech Commands split needs validation_list.txt and "
                          "testing_list.txt beside the word directories. Fix: unpack speech_commands_v0.01.tar.gz "
                          "completely (they are in the archive)")
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def _word_utterance(path: Path, word: str, label: str) -> Utterance:
    match = _FILE.match(path.name)
    if match is None:
        raise CorpusError(f"{path}: not a Speech Commands file name ('<speaker>_nohash_<n>.wav'). Fix: remove "
                          "foreign files from the word directories")
    key = f"{match.group(1)}-{word}-{match.group(2)}"
    check_key(key, str(path))
    return Utterance(key, str(path), match.group(1), label)


def scan_words(root: Path, split: str) -> List[Utterance]:
    """The word clips of ``split`` under ``root`` by the standard lists (label in ``text``)."""
    validation, testing = read_list(root / "validation_list.txt"), read_list(root / "testing_list.txt")
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != NOISE_DIR and not p.name.startswith("."))
    missing = [w for w in COMMANDS if w not in words]
    if missing:
        raise CorpusError(f"{root}: the command word directories {', '.join(missing)} are missing. Fix: point at "
                          "the unpacked speech_commands_v0.01 root (holding yes/, no/, ..., _background_noise_/)")
    utterances = []
    for word in words:
        for path in sorted((root / word).glob("*.wav")):
            name = f"{word}/{path.name}"
            in_split = {"dev": name in validation, "test": name in testing,
                        "train": name not in validation and name not in testing}[split]
            if in_split:
                utterances.append(_word_utterance(path, word, label_of(word)))
    return utterances


def cut_silence(root: Path, split: str, clip_dir: Path) -> List[Utterance]:
    """1-s silence clips of ``split``'s share of every background-noise recording, written under ``clip_dir``."""
    noise_dir = root / NOISE_DIR
    recordings = sorted(noise_dir.glob("*.wav")) if noise_dir.is_dir() else []
    if not recordings:
        raise CorpusError(f"{noise_dir}: no background-noise recordings; the _silence_ class is cut from them. Fix: "
                          "unpack speech_commands_v0.01 completely")
    start_share, end_share = NOISE_SHARES[split]
    utterances = []
    for recording in recordings:
        audio, rate = soundfile.read(str(recording), dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise CorpusError(f"{recording}: {rate} Hz, expected {SAMPLE_RATE}. Fix: use the original recordings")
        audio = audio[:, 0]
        first = int(len(audio) * start_share) // SAMPLE_RATE
        last = int(len(audio) * end_share) // SAMPLE_RATE
        name = re.sub(r"[^0-9A-Za-z_]", "_", recording.stem)
        for second in range(first, last):
            key = f"bgnoise-{name}-{second:04d}"
            target = clip_dir / f"{key}.wav"
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                soundfile.write(str(tmp), audio[second * SAMPLE_RATE:(second + 1) * SAMPLE_RATE], SAMPLE_RATE,
                                subtype="PCM_16", format="WAV")
                tmp.replace(target)
            utterances.append(Utterance(key, str(target.resolve()), f"bgnoise-{name}", SILENCE))
    return utterances


def scan_test_archive(test_root: Path) -> List[Utterance]:
    """SUPERB's KS test set: ``<test>/<label>/*.wav``, the label from the directory name."""
    utterances = []
    labels = [p.name for p in sorted(test_root.iterdir()) if p.is_dir()]
    unknown = [label for label in labels if label not in COMMANDS + (UNKNOWN, SILENCE)]
    if unknown or not labels:
        raise CorpusError(f"{test_root}: expected label directories {', '.join(COMMANDS + (UNKNOWN, SILENCE))}, found "
                          f"{', '.join(labels) or 'none'}. Fix: point at the unpacked speech_commands_test_set_v0.01")
    for label in labels:
        for path in sorted((test_root / label).glob("*.wav")):
            match = _FILE.match(path.name)
            speaker = match.group(1) if match else "test"
            number = match.group(2) if match else path.stem
            key = f"{speaker}-{label.strip('_')}-{number}"
            check_key(key, str(path))
            utterances.append(Utterance(key, str(path), speaker, label))
    return utterances


def prepare_speech_commands(corpus_dir: str, split: str, out_dir: str, *, test_dir: Optional[str] = None,
                            clip_dir: Optional[str] = None, nj: int = 1, verify: str = "tail") -> PrepResult:
    """Prepare ``split`` (train, dev, test) as a data dir with ``utt2label`` (see the module docstring).

    ``test_dir``: the separate test archive; with it the test split is that archive (SUPERB), without it
    the clips of ``testing_list.txt`` plus silence from the last 10 % of the noise recordings.
    """
    if split not in SPLITS:
        raise CorpusError(f"split '{split}' is unknown; use one of {', '.join(SPLITS)}")
    root = resolve_dir(corpus_dir, "Speech Commands directory",
                       "point at the unpacked speech_commands_v0.01 root (yes/, no/, ..., _background_noise_/)")
    out = Path(out_dir)
    clips = Path(clip_dir) if clip_dir else out.parent.parent / "dump" / "speech_commands_silence" / split
    settings = {"corpus": str(root), "split": split, "verify": verify, "kind": "speech_commands",
                "test_dir": str(Path(test_dir).resolve()) if test_dir else None, "clip_dir": str(clips.resolve())}
    done = skip_if_done(out, settings)
    if done is not None:
        return done
    if split == "test" and test_dir:
        utterances = scan_test_archive(resolve_dir(test_dir, "Speech Commands test set directory",
                                                   "point at the unpacked speech_commands_test_set_v0.01"))
    else:
        utterances = scan_words(root, split) + cut_silence(root, split, clips)
    counts: Dict[str, int] = {}
    for utterance in utterances:
        counts[utterance.text] = counts.get(utterance.text, 0) + 1
    logger.info("%s %s: %s", root, split, ", ".join(f"{label} {counts.get(label, 0)}"
                                                    for label in COMMANDS + (UNKNOWN, SILENCE)))
    labels = {u.key: u.text for u in utterances}
    for utterance in utterances:
        utterance.text = None
    probes = probe_all([(u.key, u.wav) for u in utterances], nj=nj, verify=verify, desc=f"probe {out.name}")
    return finish_prep(out, utterances, probes, extra_tables={"utt2label": labels}, settings=settings,
                       extra_summary={"labels": {k: counts.get(k, 0) for k in COMMANDS + (UNKNOWN, SILENCE)}})
