"""Repair a data directory in place, as ``fix_data_dir.sh`` does (conventions §1.5), and say why.

What it does, in order:

1. reads every known file leniently and repairs what can be repaired mechanically: removes a
   leading UTF-8 byte-order mark, sorts it in C-locale byte order, keeps the first line of a repeated key, adds a missing final newline,
   strips CR line endings, drops empty and malformed lines (each repair is reported);
2. with a ``segments`` file, keeps the recordings present in both ``segments`` and ``wav.scp``;
3. keeps the utterances present in ``utt2spk`` and in every one of ``feats.scp``, ``text``,
   ``segments``, ``utt2lang``, ``wav.scp`` (without segments), ``utt2dur``,
   ``utt2num_frames`` and ``utt2num_samples`` (the last three only with positive values),
   and reports how many each file removed and which removed the most;
4. filters every utterance-, speaker- and recording-keyed file to what is left and
   regenerates ``spk2utt``.

Nothing is written until all of this succeeded; then the old files are copied to
``<dir>/.backup/`` and the new ones renamed into place. It fails (and changes nothing) when
``utt2spk`` is missing, when ``utt2spk`` cannot be sorted by utterance and speaker at once
(ids need the speaker as a ``-``-joined prefix), or when no utterance would remain.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from .datadir import (EMPTY_VALUE_ALLOWED, FIELD_COUNTS, KNOWN_TABLES, RECO_FILES, DataDir,
                      parse_segment)
from .tables import DataDirError, PathLike, format_error, scan_table, sorted_items

logger = logging.getLogger("speechdistill.data")

# Files whose keys take part in the utterance intersection; the flag says "only positive values count".
INTERSECTION_FILES = (("feats.scp", False), ("text", False), ("segments", False), ("utt2lang", False),
                      ("wav.scp", False), ("utt2dur", True), ("utt2num_frames", True), ("utt2num_samples", True))


@dataclass
class FixReport:
    """What :func:`fix_data_dir` did: utterance counts, per-file removals, and every repair note."""
    total: int
    kept: int
    removed_by: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    backup: Optional[Path] = None

    @property
    def worst_file(self) -> Optional[str]:
        """The file that removed the most utterances (None when nothing was removed)."""
        if not self.removed_by or max(self.removed_by.values()) == 0:
            return None
        return max(self.removed_by, key=lambda name: self.removed_by[name])

    def summary(self) -> str:
        text = f"kept {self.kept} utterances out of {self.total}"
        removals = [(n, c) for n, c in sorted(self.removed_by.items(), key=lambda nc: -nc[1]) if c]
        if removals:
            text += " (missing from " + ", ".join(f"{n}: {c}" for n, c in removals) + \
                    f"; {self.worst_file} removed the most)"
        return text


def _repair(path: Path, name: str, notes: List[str]) -> Dict[str, str]:
    """Read one table leniently and return it sorted, unique and well-formed, noting each repair."""
    scan = scan_table(path)
    rel = f"{path.parent.name}/{name}"
    if scan.byte_order_mark:
        notes.append(f"{rel}: removed the UTF-8 byte-order mark (BOM) at its start")
    if scan.crlf_lines:
        notes.append(f"{rel}: removed CR line endings ({len(scan.crlf_lines)} line(s))")
    if scan.empty_lines:
        notes.append(f"{rel}: dropped {len(scan.empty_lines)} empty line(s) (first: line {scan.empty_lines[0]})")
    if scan.missing_final_newline:
        notes.append(f"{rel}: added the missing final newline")
    wanted_fields = FIELD_COUNTS.get(name)
    good, malformed = [], []
    for line in scan.lines:
        fields = 1 + len(line.value.split())
        if not line.value and name not in EMPTY_VALUE_ALLOWED:
            malformed.append((line.number, "no value after the key"))
        elif wanted_fields is not None and fields != wanted_fields:
            malformed.append((line.number, f"expected {wanted_fields} fields, found {fields}"))
        elif name == "segments" and not _segment_ok(line.value):
            malformed.append((line.number, "start/end are not numbers with end > start >= 0"))
        else:
            good.append(line)
    if malformed:
        number, why = malformed[0]
        notes.append(f"{rel}: dropped {len(malformed)} malformed line(s) (first: line {number}: {why})")
    table: Dict[str, str] = {}
    duplicates = []
    for line in good:
        if line.key in table:
            duplicates.append(line)
        else:
            table[line.key] = line.value
    if duplicates:
        first = duplicates[0]
        kept_at = next(line.number for line in good if line.key == first.key)
        notes.append(f"{rel}: {len(duplicates)} repeated key(s); kept the first line of each (first: "
                     f"'{first.key}' on lines {kept_at} and {first.number}, kept line {kept_at})")
    ordered = sorted_items(table)
    if [k for k, _ in ordered] != list(table):
        notes.append(f"{rel}: was not in C-locale byte order; sorted it")
    return dict(ordered)


def _segment_ok(value: str) -> bool:
    try:
        _, start, end = parse_segment(value)
    except ValueError:
        return False
    return 0 <= start < end


def _positive(value: str) -> bool:
    try:
        return float(value) > 0
    except ValueError:
        return False


def _check_speaker_order(utt2spk: Dict[str, str], path: Path) -> None:
    """utt2spk sorted by utterance must also be sorted by speaker; ids that break this need renaming."""
    items = list(utt2spk.items())
    for (u1, s1), (u2, s2) in zip(items, items[1:]):
        if s2 < s1:  # code point order = C-locale byte order for UTF-8
            raise DataDirError(format_error(
                path, f"cannot be sorted by utterance and by speaker at once: '{u1} {s1}' comes before '{u2} {s2}' "
                      f"but speaker '{s2}' sorts before '{s1}'",
                fix="make every utterance id start with its speaker id followed by '-' (e.g. '13-1', not '13_1'), "
                    "or zero-pad the speaker ids so that they all have the same length"))


def fix_data_dir(path: PathLike, *, utt_extra_files: Iterable[str] = (), spk_extra_files: Iterable[str] = ()
                 ) -> FixReport:
    """Fix the data dir at ``path`` in place; returns a :class:`FixReport` (also logged line by line)."""
    path = Path(path)
    if not (path / "utt2spk").is_file():
        raise DataDirError(format_error(path / "utt2spk", "file not found",
                                        fix="fix_data_dir needs utt2spk; check the data dir path"))
    utt_extra_files, spk_extra_files = tuple(utt_extra_files), tuple(spk_extra_files)
    notes: List[str] = []
    tables: Dict[str, Dict[str, str]] = {}
    for name in KNOWN_TABLES + utt_extra_files + spk_extra_files:
        if name not in tables and (path / name).is_file():
            tables[name] = _repair(path / name, name, notes)
    for note in notes:
        logger.info("%s", note)

    recordings_filtered = _filter_recordings(tables, notes)
    _check_speaker_order(tables["utt2spk"], path / "utt2spk")

    all_utts = list(tables["utt2spk"])
    keep = set(all_utts)
    removed_by: Dict[str, int] = {}
    for name, positive_only in INTERSECTION_FILES:
        if name not in tables or (name == "wav.scp" and "segments" in tables):
            continue
        present = {k for k, v in tables[name].items() if not positive_only or _positive(v)}
        missing = [u for u in all_utts if u not in present]
        removed_by[name] = len(missing)
        if missing:
            reason = "missing or not positive in" if positive_only else "missing from"
            notes.append(f"{len(missing)} utterance(s) {reason} {name} (first: '{missing[0]}')")
            logger.info("%s", notes[-1])
        keep &= present
    report = FixReport(total=len(all_utts), kept=len(keep), removed_by=removed_by, notes=notes)
    if not keep:
        worst = report.worst_file
        detail = (f"{worst} removed the most ({removed_by[worst]} of {len(all_utts)}); "
                  if worst else "utt2spk is empty; ")
        raise DataDirError(format_error(path, f"no utterances remained: not proceeding further ({detail}"
                                              "nothing was changed)",
                                        fix=f"compare the utterance ids of utt2spk and {worst or 'the other files'} "
                                            "(e.g. 'diff <(cut -d\" \" -f1 utt2spk) <(cut -d\" \" -f1 FILE)')"))
    fixed = DataDir(tables, path=path, utt_extra_files=utt_extra_files, spk_extra_files=spk_extra_files)
    fixed = fixed.filter_utts(keep)
    fixed.path = path
    dropped_elsewhere = {name: len(tables[name]) - len(fixed.tables[name]) for name in tables
                         if len(fixed.tables[name]) < len(tables[name]) and name != "utt2spk"
                         and name not in recordings_filtered}
    for name, count in dropped_elsewhere.items():
        logger.info("%s: dropped %d line(s) of removed utterances/speakers/recordings", name, count)
    logger.info("%s", report.summary())

    report.backup = _backup(path, list(tables) + ["spk2utt"])
    fixed._write_into(path)
    logger.info("old files are kept in %s", report.backup)
    return report


def _filter_recordings(tables: Dict[str, Dict[str, str]], notes: List[str]) -> Tuple[str, ...]:
    """With segments: keep recordings present in both segments and wav.scp (Kaldi step 3)."""
    if "segments" not in tables or "wav.scp" not in tables:
        return ()
    wav = tables["wav.scp"]
    segment_recos = {v.split(None, 1)[0] for v in tables["segments"].values()}
    both = segment_recos & set(wav)
    before = len(tables["segments"])
    tables["segments"] = {u: v for u, v in tables["segments"].items() if v.split(None, 1)[0] in both}
    if len(tables["segments"]) < before:
        notes.append(f"segments: dropped {before - len(tables['segments'])} segment(s) whose recording is not in wav.scp")
        logger.info("%s", notes[-1])
    unused = len(set(wav) - both)
    if unused:
        notes.append(f"wav.scp: dropped {unused} recording(s) no segment uses")
        logger.info("%s", notes[-1])
    for name in ("wav.scp",) + RECO_FILES:
        if name in tables:
            tables[name] = {k: v for k, v in tables[name].items() if k in both}
    return ("wav.scp",) + RECO_FILES


def _backup(path: Path, names: List[str]) -> Path:
    backup = path / ".backup"
    backup.mkdir(exist_ok=True)
    for name in names:
        if (path / name).is_file():
            shutil.copy2(path / name, backup / name)
    return backup
