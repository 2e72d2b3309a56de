"""Speed perturbation of a data dir (Kaldi naming, materialised audio, no sox).

For each factor ``f`` other than 1.0, every utterance is read, resampled as if it had been
recorded at ``16000 * f`` Hz (so it plays ``f`` times faster: duration / f, pitch * f) with
:func:`speechdistill.data.resample.resample`, and written as 16-bit FLAC under
``<audio_dir>/sp<f>/``. Its ids get the ``sp<f>-`` prefix on utterance, speaker and recording,
as Kaldi's perturb_data_dir_speed.sh does, and ``utt2uniq`` maps each new id to the original
one. ``utt2num_samples`` is the length of the written audio (``ceil(n / f)``), ``utt2dur`` and
``reco2dur`` are divided by ``f``. Factor 1.0 keeps the original utterances unprefixed
(Kaldi's 3-way default) with an identity ``utt2uniq``.

Audio is written in parallel (``nj`` processes), each file under a temporary name and renamed;
a rerun skips files that already exist with the expected length, so an interrupted run resumes.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile
from tqdm import tqdm

from speechdistill.data.audio import SAMPLE_RATE, AudioError, read_audio
from speechdistill.data.datadir import DataDir, parse_segment, wav_fingerprint
from speechdistill.data.lengths import format_seconds
from speechdistill.data.resample import resample
from speechdistill.data.tables import sorted_items

from .banks import AugmentError

logger = logging.getLogger("speechdistill.augment")

# utterance-keyed files that stay valid under perturbation (values copied, keys prefixed)
_CARRIED_UTT_FILES = ("text", "utt2lang", "utt2category")
_CARRIED_SPK_FILES = ("spk2gender",)
# files that describe the old audio and are recomputed or dropped
_DROPPED = ("feats.scp", "cmvn.scp", "vad.scp", "utt2num_frames", "segments", "reco2file_and_channel")


def factor_text(factor: float) -> str:
    """The factor as written in ids: ``0.9``, ``1.1`` (Kaldi keeps the string the user gave)."""
    text = f"{factor:g}"
    return text if "." in text or "e" in text else f"{text}.0"


def source_rate(factor: float) -> int:
    """Rate (Hz) the audio is read as: ``16000 * factor``, exactly (an error if not an integer)."""
    rate = Fraction(str(factor)) * SAMPLE_RATE
    if rate.denominator != 1 or rate <= 0:
        raise AugmentError(f"speed factor {factor} gives a source rate of {float(rate)} Hz, not a positive whole "
                           "number. Fix: use factors with at most 4 decimals, e.g. 0.9 or 1.1")
    return int(rate)


def perturbed_length(num_samples: int, factor: float) -> int:
    """Samples after perturbation: the resampler returns ceil(n * 16000 / (16000 * factor))."""
    return int(math.ceil(Fraction(num_samples) / Fraction(str(factor))))


def _perturb_one(job: tuple) -> Tuple[str, int, Optional[str]]:
    """Write one perturbed file; ``job`` = (utt, wav.scp value, segment or None, factor, output path,
    expected samples or None). Returns (utt, num_samples, error)."""
    utt, wav_value, segment, factor, out_path, expected = job
    target = Path(out_path)
    if expected is not None and target.is_file():
        try:
            if soundfile.info(str(target)).frames == expected:
                return utt, expected, None
        except RuntimeError:
            pass  # unreadable leftover: rewrite it
    try:
        audio = read_audio(wav_value, key=utt, segment=segment)
    except AudioError as exc:
        return utt, 0, " ".join(str(exc).split())
    out = resample(audio, source_rate(factor), SAMPLE_RATE)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    soundfile.write(str(tmp), np.clip(out, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    os.replace(tmp, target)
    return utt, len(out), None


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _safe_relative(utt: str) -> str:
    parts = utt.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise AugmentError(f"utterance id '{utt}' cannot name a file (empty, '.' or '..' path component). "
                           "Fix: rename the utterance")
    return utt + ".flac"


def speed_perturb(src: str, dst: str, factors: Sequence[float] = (0.9, 1.0, 1.1), *,
                  audio_dir: Optional[str] = None, nj: int = 2) -> Dict[str, int]:
    """Write data dir ``dst``: ``src`` at every speed of ``factors``; returns counts (utts, bad)."""
    source = DataDir.load(src)
    if "wav.scp" not in source.tables:
        raise AugmentError(f"{src} has no wav.scp. Fix: speed perturbation needs audio")
    if len(set(factors)) != len(factors) or not factors:
        raise AugmentError(f"speed factors {list(factors)} must be distinct and at least one")
    audio_root = Path(audio_dir) if audio_dir else Path(dst).with_name(Path(dst).name + "_audio")
    wav = source.tables["wav.scp"]
    segments = source.tables.get("segments")
    if segments is not None and 1.0 in factors:
        raise AugmentError(f"{src} has a segments file: factor 1.0 would keep recordings that the perturbed copies "
                           "cut into utterances. Fix: leave 1.0 out of the factors and combine the original data "
                           "dir afterwards")
    num_samples = source.tables.get("utt2num_samples", {})
    jobs = []
    for factor in factors:
        if factor == 1.0:
            continue
        source_rate(factor)
        for utt in source.utts:
            segment = None
            if segments is not None:
                reco, start, end = parse_segment(segments[utt])
                value, segment = wav[reco], (start, end)
            else:
                value = wav[utt]
            expected = perturbed_length(int(num_samples[utt]), factor) if utt in num_samples else None
            out_path = audio_root / f"sp{factor_text(factor)}" / _safe_relative(utt)
            jobs.append((utt, value, segment, factor, str(out_path.resolve()), expected))
    results = _run(jobs, nj)
    tables: Dict[str, Dict[str, str]] = {name: {} for name in ("wav.scp", "utt2spk", "utt2uniq", "utt2num_samples",
                                                               "utt2dur")}
    carried = [n for n in _CARRIED_UTT_FILES if n in source.tables]
    for name in carried + [n for n in _CARRIED_SPK_FILES if n in source.tables]:
        tables[name] = {}
    dropped = [n for n in _DROPPED if n in source.tables]
    if dropped:
        logger.info("%s: not carried to %s (they describe the old audio): %s", src, dst, ", ".join(dropped))
    bad: Dict[str, str] = {}
    for factor in factors:
        prefix = "" if factor == 1.0 else f"sp{factor_text(factor)}-"
        for utt in source.utts:
            new = prefix + utt
            if factor == 1.0:
                tables["wav.scp"][new] = wav[utt]
                length = int(num_samples[utt]) if utt in num_samples else None
            else:
                length, error = results[(utt, factor)]
                if error is not None:
                    bad[new] = error
                    continue
                tables["wav.scp"][new] = str(audio_root.resolve() / f"sp{factor_text(factor)}" / _safe_relative(utt))
            tables["utt2spk"][new] = prefix + source.utt2spk[utt]
            tables["utt2uniq"][new] = utt
            if length is not None:
                tables["utt2num_samples"][new] = str(length)
                tables["utt2dur"][new] = format_seconds(length / SAMPLE_RATE)
            for name in carried:
                if utt in source.tables[name]:
                    tables[name][new] = source.tables[name][utt]
            if "spk2gender" in tables and source.utt2spk[utt] in source.tables["spk2gender"]:
                tables["spk2gender"][prefix + source.utt2spk[utt]] = source.tables["spk2gender"][source.utt2spk[utt]]
    if not tables["wav.scp"]:
        raise AugmentError(f"{src}: no utterance could be perturbed ({len(bad)} unreadable). Fix: check its audio")
    if len(tables["utt2num_samples"]) != len(tables["wav.scp"]):
        # lengths are only partly known (1.0 copies of a source without utt2num_samples): write none
        for name in ("utt2num_samples", "utt2dur"):
            tables.pop(name)
    else:
        tables["utt2wav_hash"] = {u: wav_fingerprint(v) for u, v in tables["wav.scp"].items()}
        if "reco2dur" in source.tables:  # no segments here, so recordings are the utterances
            tables["reco2dur"] = dict(tables["utt2dur"])
    out = DataDir(tables, verbatim={"bad_utts": "".join(f"{k} {v}\n" for k, v in sorted_items(bad)).encode()})
    out.save(dst)
    for key, reason in list(bad.items())[:5]:
        logger.warning("%s: unreadable, left out: %s: %s", dst, key, reason)
    return {"utterances": len(tables["wav.scp"]), "bad_utts": len(bad)}


def _run(jobs: List[tuple], nj: int) -> Dict[Tuple[str, float], Tuple[int, Optional[str]]]:
    results: Dict[Tuple[str, float], Tuple[int, Optional[str]]] = {}
    start = time.monotonic()
    produced = 0
    with tqdm(total=len(jobs), desc="speed perturb", unit="utt", file=sys.stderr, dynamic_ncols=True,
              disable=None) as bar:
        def collect(job, result) -> None:
            nonlocal produced
            utt, length, error = result
            results[(utt, job[3])] = (length, error)
            produced += length
            bar.update(1)
            bar.set_postfix_str(f"{produced / SAMPLE_RATE / max(time.monotonic() - start, 1e-9):.0f} audio-s/s")

        if nj <= 1 or len(jobs) < 8:
            for job in jobs:
                collect(job, _perturb_one(job))
        else:
            with multiprocessing.get_context("spawn").Pool(nj, initializer=_init_worker) as pool:
                for job, result in zip(jobs, pool.imap(_perturb_one, jobs, chunksize=4)):
                    collect(job, result)
    return results
