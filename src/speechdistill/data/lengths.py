"""Utterance lengths measured from the audio: utt2num_samples, utt2dur, reco2dur.

Lengths are counted the way :func:`speechdistill.data.audio.read_audio` returns the audio:
samples at the target rate (16 kHz) after cutting the ``segments`` range and, when asked,
resampling. Plain files are measured from their headers (no decoding); pipes and archive
entries are decoded. ``read_entire_file`` decodes everything, which also catches files cut
short after their header (a truncated FLAC says its full length in its header).

Each utterance's lengths are stamped in ``utt2wav_hash`` with a hash of the ``wav.scp`` value
(and segment) they came from, so a rerun measures only utterances whose audio entry changed.
"""
from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from .audio import CONVERT_HINT, SAMPLE_RATE, AudioError, AudioInfo, probe_audio, resampled_length, segment_bounds
from .datadir import DataDir, parse_segment

logger = logging.getLogger("speechdistill.data")


def format_seconds(seconds: float) -> str:
    """Seconds with up to 7 decimals (exact for sample counts at 16 kHz), trailing zeros dropped."""
    text = f"{seconds:.7f}".rstrip("0").rstrip(".")
    return text or "0"


def _probe_recording(job: Tuple[str, str, bool]) -> Tuple[str, Optional[AudioInfo], Optional[str]]:
    reco, value, decode = job
    try:
        return reco, probe_audio(value, key=reco, read_entire_file=decode), None
    except AudioError as exc:
        return reco, None, str(exc)


def measure_recordings(wav: Mapping[str, str], recordings: Iterable[str], *, decode: bool = False, nj: int = 1,
                       progress: bool = True, desc: str = "measuring audio"
                       ) -> Tuple[Dict[str, AudioInfo], Dict[str, str]]:
    """Probe each recording (header read, or full decode with ``decode``); returns (infos, errors).

    Runs ``nj`` worker processes; shows a tqdm bar on stderr with recordings/s and audio-seconds/s.
    """
    from tqdm import tqdm

    jobs = [(reco, wav[reco], decode) for reco in recordings]
    infos: Dict[str, AudioInfo] = {}
    errors: Dict[str, str] = {}
    audio_seconds = 0.0
    start = time.monotonic()
    # A bar in a non-interactive log is noise for a small dir; for a big one it shows the job is alive.
    quiet = not progress or not jobs or (not sys.stderr.isatty() and len(jobs) < 1000)
    with tqdm(total=len(jobs), desc=desc, unit="rec", file=sys.stderr, disable=quiet, mininterval=1.0) as bar:
        for reco, info, error in _run_jobs(jobs, nj):
            if info is not None:
                infos[reco] = info
                audio_seconds += info.duration
            else:
                errors[reco] = error or "unknown error"
            bar.update(1)
            elapsed = max(time.monotonic() - start, 1e-6)
            bar.set_postfix_str(f"{audio_seconds / elapsed:.0f} audio-s/s", refresh=False)
    return infos, errors


def _run_jobs(jobs: List[Tuple[str, str, bool]], nj: int) -> Iterator[Tuple[str, Optional[AudioInfo], Optional[str]]]:
    if nj <= 1 or len(jobs) < 2:
        for job in jobs:
            yield _probe_recording(job)
        return
    with ProcessPoolExecutor(max_workers=nj) as pool:
        yield from pool.map(_probe_recording, jobs, chunksize=max(1, min(64, len(jobs) // (4 * nj))))


def utterance_num_samples(info: AudioInfo, *, value: str, segment: Optional[str] = None,
                          sample_rate: int = SAMPLE_RATE, resample: bool = False, key: Optional[str] = None) -> int:
    """Samples :func:`read_audio` would return for an utterance of a recording described by ``info``.

    Raises :class:`AudioError` for audio read_audio would refuse: more than one channel, another
    sample rate without ``resample``, a segment starting after the recording ends, no samples.
    """
    if info.channels != 1:
        raise AudioError(f"{value}: audio has {info.channels} channels, expected mono. Fix: {CONVERT_HINT} (or "
                         "select a channel: 'sox FILE -t wav - remix 1 |')")
    count = info.num_samples
    if segment is not None:
        _, start, end = parse_segment(segment)
        first, last = segment_bounds(info.num_samples, info.sample_rate, (start, end), key=key, value=value)
        count = last - first
    if info.sample_rate != sample_rate:
        if not resample:
            raise AudioError(f"{value}: sample rate is {info.sample_rate} Hz, expected {sample_rate} Hz. Fix: "
                             f"{CONVERT_HINT}")
        count = resampled_length(count, info.sample_rate, sample_rate)
    if count <= 0:
        raise AudioError(f"{value}: the utterance has no samples")
    return count


@dataclass
class Measurement:
    """Per-utterance sample counts (at the target rate), recording durations (s) and failures."""
    num_samples: Dict[str, int] = field(default_factory=dict)
    recording_seconds: Dict[str, float] = field(default_factory=dict)
    failures: Dict[str, str] = field(default_factory=dict)


def measure_utterances(data: DataDir, utts: Iterable[str], *, decode: bool = False, sample_rate: int = SAMPLE_RATE,
                       resample: bool = False, nj: int = 1, progress: bool = True,
                       extra_recordings: Iterable[str] = ()) -> Measurement:
    """Measure ``utts`` of ``data`` from their audio; every unusable utterance gets a reason."""
    wav = data.table("wav.scp")
    segments = data.tables.get("segments")
    utts = list(utts)
    result = Measurement()
    reco_of: Dict[str, str] = {}
    for utt in utts:
        reco = segments[utt].split(None, 1)[0] if segments is not None and utt in segments else utt
        if segments is not None and utt not in segments:
            result.failures[utt] = "no line in segments"
        elif reco not in wav:
            result.failures[utt] = f"recording '{reco}' has no line in wav.scp"
        else:
            reco_of[utt] = reco
    recordings = list(dict.fromkeys(list(reco_of.values()) + [r for r in extra_recordings if r in wav]))
    infos, errors = measure_recordings(wav, recordings, decode=decode, nj=nj, progress=progress,
                                       desc="reading audio" if decode else "reading audio headers")
    for reco, info in infos.items():
        result.recording_seconds[reco] = info.duration
    for utt, reco in reco_of.items():
        if reco in errors:
            result.failures[utt] = errors[reco]
            continue
        try:
            result.num_samples[utt] = utterance_num_samples(
                infos[reco], value=wav[reco], segment=segments[utt] if segments is not None else None,
                sample_rate=sample_rate, resample=resample, key=utt)
        except (AudioError, ValueError) as exc:
            result.failures[utt] = str(exc)
    return result


@dataclass
class LengthsReport:
    """What :func:`compute_lengths` did: utterances measured, reused from a previous run, failed."""
    measured: int
    reused: int
    failures: Dict[str, str]


def compute_lengths(data: DataDir, *, nj: int = 1, read_entire_file: bool = False, sample_rate: int = SAMPLE_RATE,
                    resample: bool = False, progress: bool = True) -> LengthsReport:
    """Fill ``utt2num_samples``, ``utt2dur``, ``utt2wav_hash`` (and ``reco2dur``) of ``data`` in memory.

    Utterances whose ``utt2wav_hash`` still matches their audio entry keep their old lengths;
    the others are measured. Utterances that cannot be measured are left out of the length
    files (so ``fix_data_dir`` removes them) and returned in ``failures`` with the reason.
    """
    fingerprints = data.fingerprints()
    old_samples = data.tables.get("utt2num_samples", {})
    old_hash = data.tables.get("utt2wav_hash", {})
    old_reco2dur = data.tables.get("reco2dur", {}) if data.has_segments else {}
    reused = [u for u in data.utts if u in old_samples and u in fingerprints and old_hash.get(u) == fingerprints[u]]
    reused_set = set(reused)
    todo = [u for u in data.utts if u not in reused_set]
    extra_recordings = []
    if data.has_segments:
        extra_recordings = [data.recording_of(u) for u in reused if data.recording_of(u) not in old_reco2dur]
    measurement = measure_utterances(data, todo, decode=read_entire_file, sample_rate=sample_rate,
                                     resample=resample, nj=nj, progress=progress, extra_recordings=extra_recordings)
    num_samples = {u: int(old_samples[u]) for u in reused}
    num_samples.update(measurement.num_samples)
    ordered = [u for u in data.utts if u in num_samples]
    data.tables["utt2num_samples"] = {u: str(num_samples[u]) for u in ordered}
    data.tables["utt2dur"] = {u: format_seconds(num_samples[u] / sample_rate) for u in ordered}
    data.tables["utt2wav_hash"] = {u: fingerprints[u] for u in ordered}
    if data.has_segments:
        reco2dur = {r: v for r, v in old_reco2dur.items()}
        reco2dur.update({r: format_seconds(s) for r, s in measurement.recording_seconds.items()})
        used = {data.recording_of(u) for u in ordered}
        data.tables["reco2dur"] = {r: v for r, v in reco2dur.items() if r in used}
    elif "reco2dur" in data.tables:
        data.tables["reco2dur"] = dict(data.tables["utt2dur"])
    return LengthsReport(measured=len(measurement.num_samples), reused=len(reused), failures=measurement.failures)
