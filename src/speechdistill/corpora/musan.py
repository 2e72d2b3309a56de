"""MUSAN -> ``data/musan_{noise,music,speech}`` (conventions §3.2).

Layout read: ``<musan>/{noise,music,speech}/<source>/<name>.wav`` (16 kHz); music sources
carry an ``ANNOTATIONS`` file whose third column is the vocals flag (``Y``/``N``). As in
Kaldi's make_musan, the id is the file name without ``.wav`` and every recording is its own
speaker. Each dir gets ``wav.scp``, ``utt2spk``, ``spk2utt``, ``utt2num_samples``,
``reco2dur`` and ``bad_utts``; the music dir also gets ``utt2vocals`` (``Y``, ``N``, or
``unknown`` when the file is missing from ANNOTATIONS).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Sequence

from .common import CorpusError, PrepResult, Utterance, check_key, finish_prep, probe_all, resolve_dir, skip_if_done

logger = logging.getLogger("speechdistill.corpora")

CATEGORIES = ("noise", "music", "speech")


def read_vocals(music_dir: Path) -> Dict[str, str]:
    """id -> Y/N from every ``ANNOTATIONS`` file under ``music_dir``."""
    vocals: Dict[str, str] = {}
    for listing in sorted(music_dir.glob("*/ANNOTATIONS")):
        for number, line in enumerate(listing.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 3 or fields[2] not in ("Y", "N"):
                raise CorpusError(f"{listing}:{number}: expected '<id> <genre> <Y|N> ...' (third column: vocals), "
                                  f"found '{line.strip()}'. Fix: restore ANNOTATIONS from the MUSAN archive")
            vocals[fields[0]] = fields[2]
    return vocals


def scan_category(category_dir: Path) -> List[Utterance]:
    utterances: Dict[str, Utterance] = {}
    for wav in sorted(category_dir.glob("*/*.wav")):
        key = wav.stem
        check_key(key, str(wav))
        if key in utterances:
            raise CorpusError(f"{wav}: the id '{key}' is also used by {utterances[key].wav}. "
                              "Fix: MUSAN file names are unique; remove the copy")
        utterances[key] = Utterance(key, str(wav), key)
    return list(utterances.values())


def prepare_musan(corpus_dir: str, out_root: str, *, categories: Sequence[str] = CATEGORIES, use_vocals: bool = True,
                  nj: int = 1, verify: str = "tail") -> Dict[str, PrepResult]:
    """Prepare ``<out_root>/musan_<category>`` for each category; returns the results by category."""
    root = resolve_dir(corpus_dir, "MUSAN directory", "point at the 'musan' directory holding noise/ music/ speech/")
    results: Dict[str, PrepResult] = {}
    for category in categories:
        if category not in CATEGORIES:
            raise CorpusError(f"unknown MUSAN category '{category}'. Fix: use {', '.join(CATEGORIES)}")
        category_dir = root / category
        if not category_dir.is_dir():
            raise CorpusError(f"{category_dir} not found. Fix: point at the 'musan' directory of the MUSAN archive")
        out = Path(out_root) / f"musan_{category}"
        settings = {"corpus": str(root), "category": category, "verify": verify, "kind": "musan",
                    "use_vocals": use_vocals if category == "music" else True}
        done = skip_if_done(out, settings)
        if done is not None:
            results[category] = done
            continue
        utterances = scan_category(category_dir)
        extra_tables = {}
        summary = {}
        if category == "music":
            vocals = read_vocals(category_dir)
            flags = {u.key: vocals.get(u.key, "unknown") for u in utterances}
            unknown = sum(1 for v in flags.values() if v == "unknown")
            if unknown:
                logger.warning("%s: %d music files are not in any ANNOTATIONS file; their vocals flag is 'unknown'",
                               category_dir, unknown)
            if not use_vocals:
                dropped = [u for u in utterances if flags[u.key] == "Y"]
                utterances = [u for u in utterances if flags[u.key] != "Y"]
                summary["dropped_with_vocals"] = len(dropped)
                logger.info("%s: %d music files with vocals left out (use_vocals false)", category_dir, len(dropped))
            extra_tables["utt2vocals"] = flags
        probes = probe_all([(u.key, u.wav) for u in utterances], nj=nj, verify=verify, desc=f"probe {out.name}")
        results[category] = finish_prep(out, utterances, probes, extra_tables=extra_tables, settings=settings,
                                        reco2dur=True, extra_summary=summary)
    return results
