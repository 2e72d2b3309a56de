"""What every corpus prep shares: probing audio, writing a data dir atomically, rerun markers.

A prep function gathers ``Utterance`` records (key, wav.scp value, speaker, optional text),
probes every recording in parallel (sample count, sample rate, channels, and whether the
audio decodes), moves unreadable ones to ``bad_utts`` with the reason, and writes the data
dir with :meth:`speechdistill.data.datadir.DataDir.save` (built under a temporary name,
renamed into place only when complete).

A finished prep leaves ``.prep_done`` (JSON: the settings it ran with and what it
produced). A rerun with the same settings returns at once; with other settings it rebuilds.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import soundfile
from tqdm import tqdm

from speechdistill.data.audio import SAMPLE_RATE, AudioError, probe_audio, rxfilename_kind
from speechdistill.data.datadir import KNOWN_TABLES, DataDir, wav_fingerprint
from speechdistill.data.lengths import format_seconds
from speechdistill.data.tables import byte_key

PathLike = Union[str, os.PathLike]
MARKER = ".prep_done"
VERIFY_MODES = ("header", "tail", "full")
# Decoding the last block catches truncated files (the commonest corruption of a copied corpus)
# at the cost of one seek, instead of decoding hours of audio.
_TAIL_FRAMES = 4096

logger = logging.getLogger("speechdistill.corpora")


class CorpusError(ValueError):
    """A corpus tree or a prep argument a user got wrong; the message names the path, problem and fix."""


@dataclasses.dataclass
class Utterance:
    """One recording to put in a data dir: ``key`` is both utt-id and recording-id."""

    key: str
    wav: str                      # wav.scp value: a path, or a command ending in '|'
    speaker: str
    text: Optional[str] = None


@dataclasses.dataclass
class Probe:
    """Result of probing one recording: ``num_samples`` (at ``SAMPLE_RATE``) or the reason it is bad."""

    key: str
    num_samples: int = 0
    channels: int = 1
    error: Optional[str] = None


@dataclasses.dataclass
class PrepResult:
    """What a prep produced (also recorded in the marker); ``summary()`` is the stage output line."""

    out_dir: Path
    num_utts: int
    num_bad: int
    seconds: float
    skipped: bool = False
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        state = "already prepared, nothing to do" if self.skipped else "prepared"
        text = (f"{self.out_dir}: {state}: {self.num_utts} utterances, {self.seconds / 3600:.2f} h, "
                f"{self.num_bad} unreadable (listed in {self.out_dir / 'bad_utts'})")
        for name, value in self.extra.items():
            text += f", {name} {value}"
        return text


def check_audio(key: str, value: str, verify: str = "tail", sample_rate: int = SAMPLE_RATE) -> Probe:
    """Probe one wav.scp value without raising: the problem, if any, goes into ``Probe.error``.

    ``verify``: ``header`` reads only the header, ``tail`` also decodes the last 4096 samples
    (catches the commonest corruption, a truncated file, at the cost of one seek), ``full``
    decodes everything. Pipes and archives are always decoded.
    """
    if verify not in VERIFY_MODES:
        raise CorpusError(f"verify mode '{verify}' is unknown; use one of {', '.join(VERIFY_MODES)}")
    try:
        info = probe_audio(value, key=key, read_entire_file=verify == "full")
        if verify == "tail" and rxfilename_kind(value) == "path":
            first = max(0, info.num_samples - _TAIL_FRAMES)
            try:
                with soundfile.SoundFile(value.strip()) as handle:
                    handle.seek(first)
                    got = handle.read(info.num_samples - first, dtype="float32", always_2d=True).shape[0]
            except Exception as exc:  # libsndfile: seek/decode errors of a cut or damaged file
                return Probe(key, error=f"truncated or damaged: the last samples do not decode "
                                        f"({_one_line(str(exc))}). Fix: copy the file again from the corpus archive")
            if got != info.num_samples - first:
                return Probe(key, error=f"truncated: the header says {info.num_samples} samples, only {first + got} "
                                        "decode. Fix: copy the file again from the corpus archive")
    except AudioError as exc:
        return Probe(key, error=_one_line(str(exc)))
    except Exception as exc:  # libsndfile reports corrupt data with assorted exception types
        return Probe(key, error=_one_line(f"cannot decode audio: {exc}"))
    if info.num_samples <= 0:
        return Probe(key, error="audio has no samples")
    if info.sample_rate != sample_rate:
        return Probe(key, error=f"sample rate {info.sample_rate} Hz, expected {sample_rate} Hz. Fix: resample the "
                                f"corpus to {sample_rate} Hz")
    return Probe(key, num_samples=info.num_samples, channels=info.channels)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _probe_star(args: Tuple[str, str, str, int]) -> Probe:
    return check_audio(*args)


def probe_all(items: Sequence[Tuple[str, str]], *, nj: int = 1, verify: str = "tail",
              sample_rate: int = SAMPLE_RATE, desc: str = "probe audio") -> List[Probe]:
    """Probe ``(key, wav.scp value)`` pairs with ``nj`` processes; progress shows files/s and audio-s/s."""
    jobs = [(key, value, verify, sample_rate) for key, value in items]
    results: List[Probe] = []
    audio_seconds = 0.0
    start = time.monotonic()
    with tqdm(total=len(jobs), desc=desc, unit="file", file=sys.stderr, dynamic_ncols=True,
              disable=None) as bar:
        def collect(probe: Probe) -> None:
            nonlocal audio_seconds
            results.append(probe)
            audio_seconds += probe.num_samples / sample_rate
            bar.update(1)
            if bar.n % 50 == 0 or bar.n == len(jobs):
                bar.set_postfix_str(f"{audio_seconds / max(time.monotonic() - start, 1e-9):.0f} audio-s/s")

        if nj <= 1 or len(jobs) < 32:
            for job in jobs:
                collect(_probe_star(job))
        else:
            with multiprocessing.get_context("spawn").Pool(nj) as pool:
                for probe in pool.imap(_probe_star, jobs, chunksize=max(1, min(64, len(jobs) // (8 * nj)))):
                    collect(probe)
    return results


def check_key(key: str, where: str) -> None:
    if not key or any(c.isspace() for c in key):
        raise CorpusError(f"{where}: id '{key}' is empty or contains whitespace. Fix: rename the file or directory")


def marker_matches(out_dir: PathLike, settings: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The marker of ``out_dir`` if it was made with exactly ``settings``, else None (and log why)."""
    path = Path(out_dir) / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        marker = None
    if marker is None:
        return None
    if marker.get("settings") != json.loads(json.dumps(dict(settings))):
        logger.info("%s was prepared with other settings (%s); rebuilding it", out_dir, marker.get("settings"))
        return None
    return marker


def finish_prep(out_dir: Path, utterances: Sequence[Utterance], probes: Sequence[Probe], *,
                extra_tables: Optional[Mapping[str, Mapping[str, str]]] = None,
                extra_bad: Optional[Mapping[str, str]] = None,
                settings: Mapping[str, Any], reco2dur: bool = False,
                extra_summary: Optional[Mapping[str, Any]] = None,
                extra_files: Optional[Callable[[Set[str]], Tuple[Dict[str, str], Dict[str, Any]]]] = None
                ) -> PrepResult:
    """Write the data dir of the readable utterances, ``bad_utts`` for the rest, and the marker.

    ``extra_tables`` (utt- or spk-keyed) are filtered to what survives; ``extra_bad`` adds
    utterances that were rejected before probing (e.g. no transcript), with their reasons.
    ``extra_files(kept_keys)`` returns more files to write (name -> text) and summary entries.
    """
    bad: Dict[str, str] = dict(extra_bad or {})
    num_samples: Dict[str, int] = {}
    for probe in probes:
        if probe.error is not None:
            bad[probe.key] = probe.error
        else:
            num_samples[probe.key] = probe.num_samples
    kept = [utt for utt in utterances if utt.key in num_samples]
    if not kept:
        listing = "; ".join(f"{k}: {v}" for k, v in list(bad.items())[:3])
        raise CorpusError(f"{out_dir}: no readable utterance found ({len(bad)} unreadable: {listing}). "
                          "Fix: check the corpus path and that the audio files are intact")
    tables: Dict[str, Dict[str, str]] = {
        "wav.scp": {u.key: u.wav for u in kept},
        "utt2spk": {u.key: u.speaker for u in kept},
        "utt2num_samples": {u.key: str(num_samples[u.key]) for u in kept},
        "utt2wav_hash": {u.key: wav_fingerprint(u.wav) for u in kept},
    }
    if any(u.text is not None for u in kept):
        tables["text"] = {u.key: u.text for u in kept if u.text is not None}
    if reco2dur:
        tables["reco2dur"] = {u.key: format_seconds(num_samples[u.key] / SAMPLE_RATE) for u in kept}
    speakers = set(tables["utt2spk"].values())
    kept_keys = set(tables["wav.scp"])
    for name, table in (extra_tables or {}).items():
        keys = speakers if name.startswith("spk2") else kept_keys
        tables[name] = {k: v for k, v in table.items() if k in keys}
    check_speaker_order(tables["utt2spk"], out_dir)
    bad_text = "".join(f"{key} {_one_line(reason)}\n"
                       for key, reason in sorted(bad.items(), key=lambda kv: byte_key(kv[0])))
    total = sum(num_samples[u.key] for u in kept) / SAMPLE_RATE
    summary: Dict[str, Any] = {"utterances": len(kept), "bad_utts": len(bad), "hours": round(total / 3600, 4)}
    summary.update(extra_summary or {})
    files = {"bad_utts": bad_text}
    if extra_files is not None:
        more_files, more_summary = extra_files(kept_keys)
        files.update(more_files)
        summary.update(more_summary)
    marker_text = json.dumps({"settings": json.loads(json.dumps(dict(settings))), "produced": summary},
                             indent=1, sort_keys=True) + "\n"
    files[MARKER] = marker_text
    DataDir(tables, verbatim={name: text.encode("utf-8") for name, text in files.items()},
            utt_extra_files=[n for n in tables if n not in KNOWN_TABLES and not n.startswith("spk2")],
            spk_extra_files=[n for n in tables if n not in KNOWN_TABLES and n.startswith("spk2")]).save(out_dir)
    for key, reason in list(bad.items())[:10]:
        logger.warning("%s: unreadable, excluded: %s: %s", out_dir, key, reason)
    if len(bad) > 10:
        logger.warning("%s: ... and %d more unreadable utterances (see %s)", out_dir, len(bad) - 10,
                       out_dir / "bad_utts")
    extra = {k: v for k, v in summary.items() if k not in ("utterances", "bad_utts", "hours")}
    return PrepResult(out_dir, len(kept), len(bad), total, extra=extra)


def check_speaker_order(utt2spk: Mapping[str, str], where: Path) -> None:
    """utt2spk must sort the same by utt and by speaker (Kaldi rule); say which ids break it."""
    items = sorted(utt2spk.items(), key=lambda kv: byte_key(kv[0]))
    for (u1, s1), (u2, s2) in zip(items, items[1:]):
        if byte_key(s2) < byte_key(s1):
            raise CorpusError(f"{where}: utt2spk would not be sorted by speaker: '{u1} {s1}' comes before "
                              f"'{u2} {s2}'. Fix: make the speaker id a '-'-joined prefix of the utterance id")


def skip_if_done(out_dir: Path, settings: Mapping[str, Any]) -> Optional[PrepResult]:
    """A PrepResult marked ``skipped`` when ``out_dir`` was already prepared with ``settings``."""
    marker = marker_matches(out_dir, settings)
    if marker is None or not (out_dir / "wav.scp").is_file():
        return None
    produced = marker.get("produced", {})
    extra = {k: v for k, v in produced.items() if k not in ("utterances", "bad_utts", "hours")}
    return PrepResult(out_dir, int(produced.get("utterances", 0)), int(produced.get("bad_utts", 0)),
                      float(produced.get("hours", 0.0)) * 3600, skipped=True, extra=extra)


def setup_logging(log_file: Optional[PathLike] = None, verbose: bool = False) -> None:
    """Log lines to stderr and, when given, to ``log_file`` (created with its directory)."""
    root = logging.getLogger("speechdistill")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        root.addHandler(stream)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        handler.setFormatter(formatter)
        root.addHandler(handler)


def run_cli(name: str, body: Callable[[], int]) -> int:
    """Run an entry point body: a user error (ValueError) is printed on one line and returns 1."""
    try:
        return body()
    except (ValueError, OSError) as exc:  # DataDirError, AudioError, CorpusError, ConfigError are ValueErrors
        message = " ".join(str(exc).split())
        print(f"{name}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def resolve_dir(path: PathLike, what: str, fix: str) -> Path:
    """An existing directory, or a CorpusError naming ``what`` and the ``fix``."""
    path = Path(path)
    if not path.is_dir():
        raise CorpusError(f"{what} '{path}' does not exist or is not a directory. Fix: {fix}")
    return path.resolve()




def parse_bool(text: str) -> bool:
    """argparse type for ``true``/``false`` values (as parse_options.sh passes booleans)."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false, found '{text}'")


def add_prep_options(parser) -> None:
    """--nj, --verify and --log, shared by the corpus prep entry points."""
    parser.add_argument("--nj", type=int, default=2,
                        help="parallel processes probing audio (and ffmpeg conversions of m4a; default: 2)")
    parser.add_argument("--verify", choices=VERIFY_MODES, default="tail",
                        help="how much of each file to decode: header only, header + last 4096 samples "
                             "(catches truncated files; default), or everything")
    parser.add_argument("--log", default=None, help="also write the log here (default: <out>/../log/<name>.log)")


__all__ = [
    "CorpusError", "Utterance", "Probe", "PrepResult", "check_audio", "probe_all", "finish_prep", "skip_if_done",
    "setup_logging", "run_cli", "resolve_dir", "VERIFY_MODES", "MARKER", "check_key", "parse_bool",
    "add_prep_options",
]
