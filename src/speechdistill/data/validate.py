"""Validate a Kaldi data directory: the checks of ``validate_data_dir.sh`` (conventions §1.4), fixed.

Differences from Kaldi's script, on purpose:

* every malformed file is a failure (Kaldi exits 0 after a wrong-format utt2spk);
* all problems are reported, not only the first, each naming file, line, key, problem and fix;
  an ordering problem names the first offending pair of lines;
* ``text`` is checked as UTF-8 in Python, independent of the shell locale; a bad character is
  reported with its line, column and code point;
* ``feats.scp`` is checked when present but not required (speechdistill reads waveforms);
  ``--no-feats`` skips it entirely;
* ``segments`` utterances are always compared with utt2spk (Kaldi does it only with ``text``);
* lengths (``utt2num_samples``, ``utt2dur``) measured from a ``wav.scp`` entry that has changed
  since are reported as stale (see ``utt2wav_hash`` in :mod:`speechdistill.data.datadir`);
* ``check_audio`` reads every utterance and lists each unreadable one with its reason.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .datadir import (FIELD_COUNTS, FIX_HINT, DataDir, parse_segment, spk2utt_to_utt2spk, utt2spk_to_spk2utt,
                      wav_fingerprint)
from .lengths import measure_utterances
from .tables import DataDirError, PathLike, TableScan, bom_problem, format_error, scan_table

logger = logging.getLogger("speechdistill.data")

FORBIDDEN_WORDS = ("<s>", "</s>", "#0")
# Zero-width (non-)joiners are format characters that some scripts (Persian, Indic) need in words.
ALLOWED_FORMAT_CHARS = frozenset("\u200c\u200d")
# ASCII characters text_char_problem objects to: controls other than tab, and DEL.
_ASCII_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass
class ValidateOptions:
    """The switches of ``validate_data_dir.sh`` plus ``check_audio`` and how to read the audio."""
    no_feats: bool = False
    no_text: bool = False
    non_print: bool = False
    no_wav: bool = False
    no_spk_sort: bool = False
    check_audio: bool = False
    sample_rate: int = 16000
    resample: bool = False
    nj: int = 1
    progress: bool = True


@dataclass
class ValidationReport:
    """Problems (each one line: file:line: key: problem. Fix: ...), warnings, unreadable utterances."""
    path: Path
    problems: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    unreadable: Dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self) -> None:
        if self.problems:
            raise DataDirError(f"{self.path} failed validation with {len(self.problems)} problem(s); first: "
                               f"{self.problems[0]}")


def describe_char(ch: str) -> str:
    """``U+00A0 (NO-BREAK SPACE)``."""
    return f"U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed character')})"


def text_char_problem(ch: str, non_print_ok: bool) -> Optional[Tuple[str, str]]:
    """(kind, detail) if ``ch`` may not appear in a text line, else None.

    Mirrors Kaldi's validate_text.pl (no CR, no Unicode whitespace but space and tab) and its
    ``[:print:]`` test (no control, private-use, unassigned or invisible format characters,
    unless ``non_print_ok``).
    """
    if ch in " \t":
        return None
    if ch == "\r":
        return "carriage returns inside a line", "carriage return (CR)"
    if ch.isspace():
        return "Unicode whitespace other than space or tab", describe_char(ch)
    if non_print_ok:
        return None
    category = unicodedata.category(ch)
    if category in ("Cc", "Cs", "Co", "Cn") or (category == "Cf" and ch not in ALLOWED_FORMAT_CHARS):
        return "non-printable characters", describe_char(ch)
    return None


class _Validator:
    def __init__(self, path: Path, options: ValidateOptions):
        self.path = path
        self.options = options
        self.report = ValidationReport(path=path)
        self.scans: Dict[str, TableScan] = {}
        self.tables: Dict[str, Dict[str, str]] = {}

    # ------------------------------------------------------------------------------ reporting
    def problem(self, name: str, text: str, *, line: Optional[int] = None, key: Optional[str] = None,
                fix: Optional[str] = None) -> None:
        self.report.problems.append(format_error(self.path / name, text, line=line, key=key, fix=fix))

    def warn(self, text: str) -> None:
        self.report.warnings.append(text)

    def line_of(self, name: str, key: str) -> Optional[int]:
        for line in self.scans[name].lines:
            if line.key == key:
                return line.number
        return None

    # ------------------------------------------------------------------------------- loading
    def load(self, name: str, *, value_check: Optional[Callable[[str], Optional[str]]] = None,
             fix: str = "") -> Optional[Dict[str, str]]:
        """Scan a table and report every kind of format problem (first occurrence and count)."""
        try:
            scan = scan_table(self.path / name)
        except DataDirError as exc:
            self.report.problems.append(str(exc))
            return None
        self.scans[name] = scan
        fix_cmd = f"utils/fix_data_dir.sh {self.path}"
        if scan.byte_order_mark:
            self.report.problems.append(bom_problem(self.path / name))
        if not scan.lines:
            self.problem(name, "is empty", fix=fix or "remove it, or regenerate it")
        if scan.missing_final_newline:
            last = scan.lines[-1] if scan.lines else None
            self.problem(name, "missing newline at the end of the last line", line=last.number if last else None,
                         key=last.key if last else None, fix=f"append a final newline ({fix_cmd} does it)")
        if scan.crlf_lines:
            self.problem(name, f"{len(scan.crlf_lines)} line(s) end with CR (Windows line endings)",
                         line=scan.crlf_lines[0], fix=f"convert with dos2unix, or run {fix_cmd}")
        if scan.empty_lines:
            self.problem(name, f"{len(scan.empty_lines)} empty line(s)", line=scan.empty_lines[0],
                         fix=f"remove empty lines ({fix_cmd} does it)")
        unsorted = scan.first_unsorted()
        if unsorted:
            before, after = unsorted
            self.problem(name, f"not sorted in C-locale byte order: line {before.number} '{before.key}' comes before "
                               f"line {after.number} '{after.key}'", line=after.number, key=after.key,
                         fix=f"sort with 'LC_ALL=C sort -k1,1' ({fix_cmd} does it); a locale other than C sorts "
                             "differently")
        duplicates = scan.duplicates()
        if duplicates:
            first, repeat = duplicates[0]
            self.problem(name, f"{len(duplicates)} repeated key(s); first: '{repeat.key}' on lines {first.number} and "
                               f"{repeat.number}", line=repeat.number, key=repeat.key,
                         fix=f"keys must be unique ({fix_cmd} keeps the first line of each)")
        wanted = FIELD_COUNTS.get(name)
        bad_fields = [(ln, 1 + len(ln.value.split())) for ln in scan.lines
                      if wanted is not None and 1 + len(ln.value.split()) != wanted]
        if bad_fields:
            ln, found = bad_fields[0]
            self.problem(name, f"{len(bad_fields)} line(s) with the wrong number of fields; expected {wanted}, "
                               f"found {found}", line=ln.number, key=ln.key,
                         fix=f"every line must have {wanted} whitespace-separated fields")
        elif name != "text":
            empty = [ln for ln in scan.lines if not ln.value]
            if empty:
                self.problem(name, f"{len(empty)} line(s) with a key but no value", line=empty[0].number,
                             key=empty[0].key, fix="every line must be '<key> <value>'")
        if value_check is not None:
            bad = [(ln, why) for ln in scan.lines for why in [value_check(ln.value)] if why]
            if bad:
                ln, why = bad[0]
                self.problem(name, f"{len(bad)} line(s) with a bad value; first: {why}", line=ln.number, key=ln.key,
                             fix=fix or None)
        table = scan.as_dict()
        self.tables[name] = table
        return table

    def compare_keys(self, name: str, keys: Iterable[str], expected: Sequence[str], expected_what: str) -> None:
        """The keys of ``name`` must be exactly ``expected`` (e.g. the utterances of utt2spk)."""
        keys = list(keys)
        have, want = set(keys), set(expected)
        if have == want:
            return
        missing = [k for k in expected if k not in have]
        extra = [k for k in keys if k not in want]
        parts = []
        if missing:
            parts.append(f"{len(missing)} {expected_what} missing here (first: '{missing[0]}')")
        if extra:
            line = self.line_of(name, extra[0]) if name in self.scans else None
            parts.append(f"{len(extra)} key(s) that are not {expected_what} (first: '{extra[0]}'"
                         + (f" on line {line}" if line else "") + ")")
        self.problem(name, "keys differ from the " + expected_what + ": " + "; ".join(parts),
                     fix=FIX_HINT)

    # -------------------------------------------------------------------------------- checks
    def run(self) -> ValidationReport:
        if not self.path.is_dir():
            self.report.problems.append(format_error(self.path, "is not a directory", fix="check the path"))
            return self.report
        utt2spk = self.check_speakers()
        if utt2spk is None:
            return self.report
        utts = list(utt2spk)
        speakers = list(dict.fromkeys(utt2spk.values()))
        self.check_text(utts)
        recordings = self.check_audio_tables(utts)
        if not self.options.no_feats and (self.path / "feats.scp").is_file():
            self.keyed("feats.scp", utts, "utterances of utt2spk")
        self.keyed("cmvn.scp", speakers, "speakers of utt2spk")
        self.keyed("spk2gender", speakers, "speakers of utt2spk",
                   value_check=lambda v: None if v in ("m", "f") else f"gender '{v}' is not 'm' or 'f'")
        self.keyed("spk2warp", speakers, "speakers of utt2spk", value_check=_warp_check)
        self.keyed("utt2warp", utts, "utterances of utt2spk", value_check=_warp_check)
        for name in ("vad.scp", "utt2lang", "utt2uniq", "utt2category"):
            self.keyed(name, utts, "utterances of utt2spk")
        self.keyed("utt2dur", utts, "utterances of utt2spk", value_check=_positive_float,
                   fix="durations are seconds > 0; regenerate with utils/get_utt2num_samples.sh")
        self.keyed("utt2num_frames", utts, "utterances of utt2spk", value_check=_positive_int)
        self.keyed("utt2num_samples", utts, "utterances of utt2spk", value_check=_positive_int,
                   fix="sample counts are integers > 0; regenerate with utils/get_utt2num_samples.sh")
        if recordings is not None:
            self.keyed("reco2dur", recordings, "recordings" if (self.path / "segments").is_file()
                       else "utterances of utt2spk", value_check=_positive_float)
        self.check_stale_lengths(utts)
        if self.options.check_audio:
            self.check_audio(utts)
        return self.report

    def keyed(self, name: str, expected: Sequence[str], expected_what: str, *,
              value_check: Optional[Callable[[str], Optional[str]]] = None, fix: str = "") -> None:
        if (self.path / name).is_file():
            table = self.load(name, value_check=value_check, fix=fix)
            if table is not None:
                self.compare_keys(name, table, expected, expected_what)

    def check_speakers(self) -> Optional[Dict[str, str]]:
        for name in ("utt2spk", "spk2utt"):
            if not (self.path / name).is_file():
                fix = (f"utils/utt2spk_to_spk2utt.pl {self.path}/utt2spk > {self.path}/spk2utt"
                       if name == "spk2utt" else "every data dir needs '<utt> <spk>' lines in utt2spk")
                self.problem(name, "file not found", fix=fix)
        if not (self.path / "utt2spk").is_file():
            return None
        utt2spk = self.load("utt2spk")
        if utt2spk is None or not utt2spk:
            return None
        pairs = [(ln.key, ln.value) for ln in self.scans["utt2spk"].lines]
        if len(set(utt2spk.values())) == 1 and len(utt2spk) > 1:
            self.warn(f"{self.path}/utt2spk: all {len(utt2spk)} utterances have the same speaker; per-speaker "
                      "splitting and normalisation break. If there is no speaker information, use '<utt> <utt>'")
        if not self.options.no_spk_sort:
            lines = self.scans["utt2spk"].lines
            for index, ((u1, s1), (u2, s2)) in enumerate(zip(pairs, pairs[1:])):
                if s2 < s1:  # code point order = C-locale byte order for UTF-8
                    line1, line2 = lines[index].number, lines[index + 1].number
                    self.problem("utt2spk", f"not sorted by speaker: line {line1} '{u1} {s1}' comes before line {line2} "
                                            f"'{u2} {s2}', but speaker '{s2}' sorts before '{s1}' in byte order",
                                 line=line2, key=u2,
                                 fix="make every utterance id start with its speaker id followed by '-' (e.g. "
                                     "'13-1', not '13_1'; '_' sorts after digits), or zero-pad the speaker ids")
                    break
        if (self.path / "spk2utt").is_file():
            spk2utt = self.load("spk2utt")
            if spk2utt is not None:
                expanded = spk2utt_to_utt2spk([(ln.key, ln.value.split()) for ln in self.scans["spk2utt"].lines])
                derived = utt2spk_to_spk2utt(pairs)
                if expanded != pairs:
                    index = next((i for i, (a, b) in enumerate(zip(expanded, pairs)) if a != b),
                                 min(len(expanded), len(pairs)))
                    got = " ".join(expanded[index]) if index < len(expanded) else "nothing"
                    want = " ".join(pairs[index]) if index < len(pairs) else "nothing"
                    self.problem("spk2utt", f"does not match utt2spk: expanding it gives '{got}' at position "
                                            f"{index + 1}, utt2spk has '{want}'",
                                 fix=f"regenerate it: utils/utt2spk_to_spk2utt.pl {self.path}/utt2spk > "
                                     f"{self.path}/spk2utt ({len(derived)} speakers)")
        return utt2spk

    def check_text(self, utts: Sequence[str]) -> None:
        path = self.path / "text"
        if not path.is_file():
            if not self.options.no_text:
                self.problem("text", "file not found", fix="write the transcripts, or pass --no-text for data "
                                                           "without transcripts")
            return
        table = self.load("text")
        if table is None:
            return
        lines = path.read_text(encoding="utf-8").split("\n")
        by_kind: Dict[str, List[str]] = {}
        for number, line in enumerate(lines, start=1):
            if line.endswith("\r"):
                line = line[:-1]  # CRLF endings are reported once, by load()
            if line.isascii() and not _ASCII_BAD.search(line):
                continue  # the common case, without a per-character loop
            for column, ch in enumerate(line, start=1):
                found = text_char_problem(ch, self.options.non_print)
                if found is not None:
                    kind, detail = found
                    by_kind.setdefault(kind, []).append(f"line {number} column {column}: {detail}")
                    break
        fixes = {"non-printable characters": "remove or replace them, or pass --non-print if they are intended",
                 "Unicode whitespace other than space or tab": "replace it with a plain space",
                 "carriage returns inside a line": "remove them (dos2unix for Windows line endings)"}
        for kind, hits in by_kind.items():
            self.problem("text", f"{len(hits)} line(s) with {kind}; first: {hits[0]}", fix=fixes[kind])
        forbidden = [(ln, w) for ln in self.scans["text"].lines for w in ln.value.split() if w in FORBIDDEN_WORDS]
        if forbidden:
            ln, word = forbidden[0]
            self.problem("text", f"{len(forbidden)} forbidden word(s) {'/'.join(FORBIDDEN_WORDS)}; first: '{word}'",
                         line=ln.number, key=ln.key, fix="remove sentence markers and disambiguation symbols")
        self.compare_keys("text", table, utts, "utterances of utt2spk")

    def check_audio_tables(self, utts: Sequence[str]) -> Optional[List[str]]:
        """wav.scp and segments; returns the recording ids (None when they cannot be known)."""
        has_segments = (self.path / "segments").is_file()
        has_wav = (self.path / "wav.scp").is_file()
        if has_segments and not has_wav:
            self.problem("wav.scp", "file not found, but segments exists",
                         fix="segments cut recordings listed in wav.scp; add wav.scp")
        elif not has_wav and not self.options.no_wav:
            self.problem("wav.scp", "file not found", fix="list the audio as '<utt> <path or command |>' lines, or "
                                                          "pass --no-wav")
        wav = self.load("wav.scp") if has_wav else None
        if wav is not None:
            tilde = [ln for ln in self.scans["wav.scp"].lines if ln.value.startswith("~")]
            if tilde:
                self.problem("wav.scp", f"{len(tilde)} value(s) start with '~', which is not expanded",
                             line=tilde[0].number, key=tilde[0].key, fix="write the full path (e.g. $HOME/...)")
        if not has_segments:
            if wav is not None:
                self.compare_keys("wav.scp", wav, utts, "utterances of utt2spk")
            return list(utts)
        segments = self.load("segments", value_check=_segment_check,
                             fix="a segments line is '<utt> <recording> <start-s> <end-s>' with end > start >= 0")
        if segments is None:
            return None
        self.compare_keys("segments", segments, utts, "utterances of utt2spk")
        recordings = list(dict.fromkeys(v.split(None, 1)[0] for v in segments.values() if v))
        if wav is not None:
            in_segments = set(recordings)
            unused = [r for r in wav if r not in in_segments]
            unknown = [(u, v.split(None, 1)[0]) for u, v in segments.items() if v and v.split(None, 1)[0] not in wav]
            if unknown:
                utt, reco = unknown[0]
                self.problem("segments", f"{len(unknown)} segment(s) name a recording that is not in wav.scp "
                                         f"(first: '{reco}')", line=self.line_of("segments", utt), key=utt,
                             fix=FIX_HINT)
            if unused:
                self.problem("wav.scp", f"{len(unused)} recording(s) that no segment uses (first: '{unused[0]}')",
                             line=self.line_of("wav.scp", unused[0]), key=unused[0], fix=FIX_HINT)
        if (self.path / "reco2file_and_channel").is_file():
            table = self.load("reco2file_and_channel", value_check=_channel_check)
            if table is not None:
                self.compare_keys("reco2file_and_channel", table, recordings, "recordings of segments")
                ones = [r for r, v in table.items() if v.split()[-1:] == ["1"]]
                if ones:
                    self.warn(f"{self.path}/reco2file_and_channel: channel '1' for {len(ones)} recording(s); sclite "
                              "scoring expects 'A' or 'B'")
        return recordings

    def check_stale_lengths(self, utts: Sequence[str]) -> None:
        if not (self.path / "utt2wav_hash").is_file():
            return
        stamped = self.load("utt2wav_hash")
        wav = self.tables.get("wav.scp")
        if stamped is None or wav is None:
            return
        lengths = [n for n in ("utt2num_samples", "utt2dur") if (self.path / n).is_file()]
        if not lengths:
            return
        segments = self.tables.get("segments")
        stale = []
        for utt in utts:
            if utt not in stamped:
                continue
            if segments is not None:
                segment = segments.get(utt)
                reco = segment.split(None, 1)[0] if segment else None
                current = wav_fingerprint(wav[reco], segment) if reco in wav else None
            else:
                current = wav_fingerprint(wav[utt]) if utt in wav else None
            if current is not None and current != stamped[utt]:
                stale.append(utt)
        if stale:
            self.problem(" and ".join(lengths), f"stale for {len(stale)} utterance(s) (first: '{stale[0]}'): their "
                                                "wav.scp or segments entry changed after the lengths were measured",
                         fix=f"rerun utils/get_utt2num_samples.sh {self.path} (it re-measures only those)")

    def check_audio(self, utts: Sequence[str]) -> None:

        if "wav.scp" not in self.tables or ((self.path / "segments").is_file() and "segments" not in self.tables):
            self.warn(f"{self.path}: audio not checked; fix the wav.scp/segments problems above first")
            return
        tables = {name: self.tables[name] for name in ("wav.scp", "segments") if name in self.tables}
        tables["utt2spk"] = {u: u for u in utts}
        data = DataDir(tables, path=self.path)
        measured = measure_utterances(data, utts, decode=True, sample_rate=self.options.sample_rate,
                                      resample=self.options.resample, nj=self.options.nj,
                                      progress=self.options.progress)
        self.report.unreadable = {u: measured.failures[u] for u in utts if u in measured.failures}
        if self.report.unreadable:
            first = next(iter(self.report.unreadable))
            self.problem("wav.scp", f"{len(self.report.unreadable)} of {len(utts)} utterance(s) have unreadable "
                                    f"audio (first: '{first}'; each is listed with its reason)",
                         fix=f"repair the audio, or drop those utterances: remove them from wav.scp and run "
                             f"utils/fix_data_dir.sh {self.path}")
        recorded = self.tables.get("utt2num_samples")
        if recorded:
            wrong = [(u, recorded[u], n) for u, n in measured.num_samples.items() if u in recorded
                     and recorded[u] != str(n)]
            if wrong:
                utt, old, new = wrong[0]
                self.problem("utt2num_samples", f"{len(wrong)} value(s) differ from the audio (first: '{utt}' says "
                                                f"{old}, the audio has {new} samples)",
                             line=self.line_of("utt2num_samples", utt), key=utt,
                             fix=f"regenerate: utils/get_utt2num_samples.sh --read-entire-file true {self.path}")


def _positive_float(value: str) -> Optional[str]:
    try:
        return None if float(value) > 0 else f"'{value}' is not > 0"
    except ValueError:
        return f"'{value}' is not a number"


def _positive_int(value: str) -> Optional[str]:
    try:
        return None if int(value) > 0 else f"'{value}' is not > 0"
    except ValueError:
        return f"'{value}' is not an integer"


def _warp_check(value: str) -> Optional[str]:
    try:
        return None if 0.5 < float(value) < 1.5 else f"warp factor '{value}' is not in (0.5, 1.5)"
    except ValueError:
        return f"'{value}' is not a number"


def _segment_check(value: str) -> Optional[str]:
    try:
        _, start, end = parse_segment(value)
    except ValueError as exc:
        return str(exc)
    if start < 0:
        return f"start {start} is negative"
    if end <= start:
        return f"end {end} is not greater than start {start}"
    return None


def _channel_check(value: str) -> Optional[str]:
    fields = value.split()
    if len(fields) == 2 and fields[1] not in ("A", "B", "1"):
        return f"channel '{fields[1]}' is not A or B"
    return None


def validate_data_dir(path: PathLike, options: Optional[ValidateOptions] = None, **kwargs) -> ValidationReport:
    """Run every check on the data dir at ``path``; options as :class:`ValidateOptions` or keywords."""
    if options is None:
        options = ValidateOptions(**kwargs)
    elif kwargs:
        raise TypeError("give either a ValidateOptions or keywords, not both")
    return _Validator(Path(path), options).run()
