"""Fluent Speech Commands -> Kaldi data dirs for intent classification (SUPERB IC), intents in ``utt2intent``.

Layout read (the corpus as distributed): ``<root>/data/{train,valid,test}_data.csv`` with the
columns ``path, speakerId, transcription, action, object, location`` (plus pandas' unnamed index
column) and the audio at ``<root>/<path>`` (``wavs/speakers/<speakerId>/<name>.wav``).

``utt2intent`` holds ``<action> <object> <location>``; spaces inside a slot value become ``_``
(``change language`` -> ``change_language``). ``text`` holds the transcription. Utterance ids are
``<speakerId>-<file stem>``. Splits: ``train``, ``dev`` (the corpus's valid list) and ``test``.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from .common import CorpusError, PrepResult, Utterance, check_key, finish_prep, probe_all, resolve_dir, skip_if_done

logger = logging.getLogger("speechdistill.corpora")

SPLIT_FILES = {"train": "train_data.csv", "dev": "valid_data.csv", "test": "test_data.csv"}
COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")


def slot_value(value: str) -> str:
    return "_".join(value.split()) or "none"


def prepare_fluent_commands(corpus_dir: str, split: str, out_dir: str, *, nj: int = 1,
                            verify: str = "tail") -> PrepResult:
    """Prepare ``split`` (train, dev, test) of Fluent Speech Commands as a data dir (see the module docstring)."""
    if split not in SPLIT_FILES:
        raise CorpusError(f"split '{split}' is unknown; use one of {', '.join(SPLIT_FILES)}")
    root = resolve_dir(corpus_dir, "Fluent Speech Commands directory",
                       "point at fluent_speech_commands_dataset (holding data/ and wavs/)")
    csv_path = root / "data" / SPLIT_FILES[split]
    if not csv_path.is_file():
        raise CorpusError(f"{csv_path} not found. Fix: point at the corpus root holding data/{SPLIT_FILES[split]}")
    out = Path(out_dir)
    settings = {"corpus": str(root), "split": split, "verify": verify, "kind": "fluent_commands",
                "csv_size": csv_path.stat().st_size}
    done = skip_if_done(out, settings)
    if done is not None:
        return done
    utterances, intents, rejected = [], {}, {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CorpusError(f"{csv_path}: columns {', '.join(missing)} are missing (found "
                              f"{', '.join(reader.fieldnames or [])}). Fix: use the CSV files as distributed")
        for number, row in enumerate(reader, start=2):
            audio = root / row["path"]
            key = f"{row['speakerId']}-{Path(row['path']).stem}"
            check_key(key, f"{csv_path}:{number}")
            if key in intents or key in rejected:
                raise CorpusError(f"{csv_path}:{number}: utterance '{key}' is listed twice. Fix: restore the CSV")
            if not audio.is_file():
                rejected[key] = f"audio file {audio} not found ({csv_path}:{number})"
                continue
            intents[key] = " ".join(slot_value(row[slot]) for slot in ("action", "object", "location"))
            utterances.append(Utterance(key, str(audio), row["speakerId"], " ".join(row["transcription"].split())))
    utterances.sort(key=lambda u: u.key.encode())
    logger.info("%s: %d utterances, %d intents, %d missing audio", csv_path, len(utterances),
                len(set(intents.values())), len(rejected))
    probes = probe_all([(u.key, u.wav) for u in utterances], nj=nj, verify=verify, desc=f"probe {out.name}")
    return finish_prep(out, utterances, probes, extra_tables={"utt2intent": intents}, extra_bad=rejected,
                       settings=settings, extra_summary={"intents": len(set(intents.values()))})
