"""LibriSpeech -> Kaldi data dir (conventions §3.1), ESPnet-compatible ids.

Layout read: ``<corpus>/<part>/<reader>/<chapter>/<reader>-<chapter>-<NNNN>.flac`` with one
``<reader>-<chapter>.trans.txt`` per chapter, and ``<corpus>/SPEAKERS.TXT`` (optional) for
gender. Ids are the bare LibriSpeech ids (``103-1240-0000``, no ``lbi-`` prefix) and the
speaker is ``<reader>-<chapter>`` as in Kaldi/ESPnet, so results line up with theirs.
``wav.scp`` holds plain FLAC paths (read by libsndfile; no ``flac`` binary needed).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .common import (CorpusError, PrepResult, Utterance, finish_prep, probe_all, resolve_dir, skip_if_done)

logger = logging.getLogger("speechdistill.corpora")

PARTS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean",
         "test-other")
_UTT_ID = re.compile(r"^([0-9]+)-([0-9]+)-([0-9]+)$")


def read_speakers_txt(path: Path) -> Dict[str, str]:
    """reader id -> 'm'/'f' from LibriSpeech's pipe-separated SPEAKERS.TXT (';' lines are comments)."""
    genders: Dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|", 4)]
        if len(fields) < 2 or not fields[0].isdigit() or fields[1].upper() not in ("M", "F"):
            raise CorpusError(f"{path}:{number}: expected 'ID | SEX | SUBSET | MINUTES | NAME' with SEX M or F, "
                              f"found '{line.strip()}'. Fix: restore SPEAKERS.TXT from the LibriSpeech archive")
        genders[fields[0]] = fields[1].lower()
    return genders


def scan_part(part_dir: Path) -> Tuple[List[Utterance], Dict[str, str]]:
    """Utterances of one part with their transcripts, and the ones rejected before probing (key -> reason)."""
    utterances: List[Utterance] = []
    rejected: Dict[str, str] = {}
    for reader_dir in sorted(p for p in part_dir.iterdir() if p.is_dir()):
        if not reader_dir.name.isdigit():
            raise CorpusError(f"{reader_dir}: reader directory names must be integers in a LibriSpeech part. "
                              "Fix: point at the part directory (e.g. LibriSpeech/train-clean-100) and remove "
                              "foreign directories from it")
        for chapter_dir in sorted(p for p in reader_dir.iterdir() if p.is_dir()):
            if not chapter_dir.name.isdigit():
                raise CorpusError(f"{chapter_dir}: chapter directory names must be integers. "
                                  "Fix: remove foreign directories from the LibriSpeech part")
            speaker = f"{reader_dir.name}-{chapter_dir.name}"
            trans = chapter_dir / f"{speaker}.trans.txt"
            texts: Dict[str, str] = {}
            if trans.is_file():
                for number, line in enumerate(trans.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                    if not line.strip():
                        continue
                    parts = line.strip().split(None, 1)
                    match = _UTT_ID.match(parts[0])
                    if match is None or f"{match.group(1)}-{match.group(2)}" != speaker:
                        raise CorpusError(f"{trans}:{number}: utterance id '{parts[0]}' does not belong to chapter "
                                          f"{speaker}. Fix: restore the transcript from the LibriSpeech archive")
                    if len(parts) < 2 or not parts[1].strip():
                        rejected[parts[0]] = f"empty transcript in {trans}:{number}"
                        continue
                    texts[parts[0]] = " ".join(parts[1].split())
            audio = {p.stem: p for p in chapter_dir.glob("*.flac")}
            for key in sorted(set(texts) | set(audio)):
                if key in rejected:
                    continue
                if key not in audio:
                    rejected[key] = f"audio file {chapter_dir / (key + '.flac')} not found"
                elif key not in texts:
                    rejected[key] = f"no transcript line in {trans}"
                else:
                    utterances.append(Utterance(key, str(audio[key]), speaker, texts[key]))
    return utterances, rejected


def prepare_librispeech(corpus_dir: str, parts: Sequence[str], out_dir: str, *, nj: int = 1,
                        verify: str = "tail") -> PrepResult:
    """Prepare ``parts`` (e.g. ``["train-clean-100"]``) of ``corpus_dir`` (the ``LibriSpeech`` dir) as one data dir.

    Writes ``wav.scp``, ``text``, ``utt2spk``, ``spk2utt``, ``utt2num_samples``, ``spk2gender``
    (when SPEAKERS.TXT covers every reader) and ``bad_utts``. Several parts are merged.
    """
    corpus = resolve_dir(corpus_dir, "LibriSpeech directory",
                         "point at the directory that holds the parts (train-clean-100/, dev-clean/, ...)")
    if not parts:
        raise CorpusError("no LibriSpeech part given. Fix: name at least one, e.g. --parts train-clean-100")
    out = Path(out_dir)
    settings = {"corpus": str(corpus), "parts": list(parts), "verify": verify, "kind": "librispeech"}
    done = skip_if_done(out, settings)
    if done is not None:
        return done
    utterances: List[Utterance] = []
    rejected: Dict[str, str] = {}
    for part in parts:
        part_dir = corpus / part
        if not part_dir.is_dir():
            present = sorted(p.name for p in corpus.iterdir() if p.is_dir())
            raise CorpusError(f"LibriSpeech part '{part}' not found in {corpus} (present: "
                              f"{', '.join(present) or 'none'}). Fix: download and extract it, or choose another part")
        found, bad = scan_part(part_dir)
        logger.info("%s: %d utterances with transcripts, %d rejected", part_dir, len(found), len(bad))
        utterances.extend(found)
        rejected.update(bad)
    keys = [u.key for u in utterances]
    if len(set(keys)) != len(keys):
        raise CorpusError(f"the parts {', '.join(parts)} of {corpus} share utterance ids. Fix: list each part once")
    probes = probe_all([(u.key, u.wav) for u in utterances], nj=nj, verify=verify, desc=f"probe {out.name}")
    extra_tables = {}
    speakers_txt = corpus / "SPEAKERS.TXT"
    if speakers_txt.is_file():
        genders = read_speakers_txt(speakers_txt)
        spk2gender = {u.speaker: genders.get(u.speaker.split("-")[0], "") for u in utterances}
        missing = sorted({s.split("-")[0] for s, g in spk2gender.items() if not g})
        if missing:
            logger.warning("%s lacks readers %s; spk2gender not written", speakers_txt, ", ".join(missing[:10]))
        else:
            extra_tables["spk2gender"] = spk2gender
    else:
        logger.info("no %s: spk2gender not written", speakers_txt)
    return finish_prep(out, utterances, probes, extra_tables=extra_tables, extra_bad=rejected, settings=settings)

