"""Kaldi data directories (conventions §1) as one object: load, hold the tables, save atomically.

A data dir is a folder of ``<key> <value>`` tables, every one sorted by key in C-locale byte
order with unique keys. Each file has a role that decides how it follows an operation:

* utterance-keyed: ``utt2spk`` (required), ``text``, ``segments``, ``feats.scp``, ``vad.scp``,
  ``utt2lang``, ``utt2dur``, ``utt2num_frames``, ``utt2num_samples``, ``utt2uniq``,
  ``utt2warp``, ``utt2category``, ``utt2wav_hash``, and ``wav.scp`` when there is no
  ``segments`` file; plus any ``utt_extra_files`` the caller names;
* speaker-keyed: ``spk2gender``, ``spk2warp``, ``cmvn.scp`` plus ``spk_extra_files``;
  ``spk2utt`` is always derived from ``utt2spk`` on save;
* recording-keyed: ``reco2file_and_channel``, ``reco2dur``, and ``wav.scp`` when a
  ``segments`` file exists (recording ids are then its second column);
* copied verbatim: ``frame_shift``, ``stm``, ``glm``, ``ctm``, ``feats_type``, ``audio_format``,
  ``feats_dim``.

Other files are not part of the data dir: they are neither read nor carried over (as in Kaldi).

``utt2wav_hash`` is ours: for each utterance, a short hash of the ``wav.scp`` value (and the
``segments`` line) that ``utt2num_samples``/``utt2dur`` were measured from. It travels with the
utterance through every operation, so the validator can tell exactly which lengths went stale
when ``wav.scp`` was edited, and the length computation can redo only those.

Operations (:mod:`.operations`: subset, copy, combine, split) return new :class:`DataDir` objects;
:meth:`DataDir.save` writes a new directory under a temporary name and renames it into place, so an
interrupted stage never leaves a half-written data dir.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .tables import (DataDirError, PathLike, atomic_write_text, format_error, read_table, replace_dir_atomically,
                     sorted_items,
                     write_table)

logger = logging.getLogger("speechdistill.data")

UTT_FILES = ("text", "segments", "feats.scp", "vad.scp", "utt2lang", "utt2dur", "utt2num_frames",
             "utt2num_samples", "utt2uniq", "utt2warp", "utt2category", "utt2wav_hash")
SPK_FILES = ("spk2gender", "spk2warp", "cmvn.scp")
RECO_FILES = ("reco2file_and_channel", "reco2dur")
VERBATIM_FILES = ("frame_shift", "stm", "glm", "ctm", "feats_type", "audio_format", "feats_dim")
KNOWN_TABLES = ("utt2spk", "wav.scp") + UTT_FILES + SPK_FILES + RECO_FILES

# Number of whitespace-separated fields per line, counting the key.
FIELD_COUNTS = {"utt2spk": 2, "segments": 4, "utt2dur": 2, "utt2num_frames": 2, "utt2num_samples": 2,
                "reco2dur": 2, "spk2gender": 2, "utt2uniq": 2, "utt2warp": 2, "spk2warp": 2, "utt2lang": 2,
                "utt2category": 2, "utt2wav_hash": 2, "reco2file_and_channel": 3}
EMPTY_VALUE_ALLOWED = ("text",)

FIX_HINT = "utils/fix_data_dir.sh keeps only the utterances present in every file"


def wav_fingerprint(wav_value: str, segment_value: Optional[str] = None) -> str:
    """Short hash of what an utterance's audio is read from (wav.scp value [+ segments value])."""
    source = wav_value if segment_value is None else f"{wav_value}\n{segment_value}"
    return hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def utt2spk_to_spk2utt(utt2spk: Union[Mapping[str, str], Iterable[Tuple[str, str]]]) -> Dict[str, List[str]]:
    """speaker -> utterances, speakers in order of first appearance, utterances in input order."""
    items = utt2spk.items() if isinstance(utt2spk, Mapping) else utt2spk
    spk2utt: Dict[str, List[str]] = {}
    for utt, spk in items:
        spk2utt.setdefault(spk, []).append(utt)
    return spk2utt


def spk2utt_to_utt2spk(spk2utt: Union[Mapping[str, Sequence[str]], Iterable[Tuple[str, Sequence[str]]]]
                       ) -> List[Tuple[str, str]]:
    """(utterance, speaker) pairs in spk2utt order (not re-sorted), as Kaldi's script prints them."""
    items = spk2utt.items() if isinstance(spk2utt, Mapping) else spk2utt
    return [(utt, spk) for spk, utts in items for utt in utts]


def parse_segment(value: str) -> Tuple[str, float, float]:
    """``<reco> <start> <end>`` (the value of a segments line) -> (reco, start, end) in seconds."""
    fields = value.split()
    if len(fields) != 3:
        raise ValueError(f"expected '<recording> <start> <end>', found {len(fields)} field(s)")
    try:
        start, end = float(fields[1]), float(fields[2])
    except ValueError:
        raise ValueError(f"start/end '{fields[1]}' '{fields[2]}' are not numbers") from None
    return fields[0], start, end


def evenly_spaced(items: Sequence, count: int) -> List:
    """``count`` items spread evenly over ``items`` (deterministic; centred in equal strides)."""
    total = len(items)
    if count >= total:
        return list(items)
    return [items[(2 * i + 1) * total // (2 * count)] for i in range(count)]


class DataDir:
    """A Kaldi data directory held in memory.

    ``tables`` maps a file name (``"utt2spk"``, ``"wav.scp"``, ...) to an ordered ``key -> value``
    dict; ``verbatim`` maps the copied-as-is files to their bytes. ``spk2utt`` is not stored:
    :meth:`spk2utt` derives it from ``utt2spk``.
    """

    def __init__(self, tables: Mapping[str, Mapping[str, str]], *, verbatim: Optional[Mapping[str, bytes]] = None,
                 path: Optional[PathLike] = None, utt_extra_files: Iterable[str] = (),
                 spk_extra_files: Iterable[str] = ()):
        if "utt2spk" not in tables:
            raise DataDirError(format_error(path or "<data dir>", "a data dir needs utt2spk",
                                            fix="write '<utt> <spk>' lines to utt2spk"))
        # Byte order everywhere: the order of utts, speakers, subsets and splits never depends on
        # how a table was built (already-sorted input costs one linear pass).
        self.tables: Dict[str, Dict[str, str]] = {name: dict(sorted_items(table)) for name, table in tables.items()}
        self.tables.pop("spk2utt", None)
        self.verbatim: Dict[str, bytes] = dict(verbatim or {})
        self.path: Optional[Path] = Path(path) if path is not None else None
        self.utt_extra_files: Tuple[str, ...] = tuple(utt_extra_files)
        self.spk_extra_files: Tuple[str, ...] = tuple(spk_extra_files)

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: PathLike, *, utt_extra_files: Iterable[str] = (), spk_extra_files: Iterable[str] = ()
             ) -> "DataDir":
        """Read every known file of the data dir at ``path``.

        Each table must be well-formed (final newline, byte-order sorted unique keys, the right
        number of fields); otherwise :class:`DataDirError` names the file, line and fix.
        Cross-file consistency is the validator's job (:mod:`speechdistill.data.validate`).
        Extra files that do not exist are skipped, as Kaldi does.
        """
        path = Path(path)
        if not (path / "utt2spk").is_file():
            problem = "is not a directory" if not path.is_dir() else "is not a data directory (no utt2spk)"
            raise DataDirError(format_error(path, problem, fix="check the path; a data dir has at least utt2spk"))
        utt_extra_files, spk_extra_files = tuple(utt_extra_files), tuple(spk_extra_files)
        tables = {}
        for name in KNOWN_TABLES + utt_extra_files + spk_extra_files:
            if name in tables or not (path / name).is_file():
                continue
            tables[name] = read_table(path / name, allow_empty_value=name in EMPTY_VALUE_ALLOWED,
                                      nfields=FIELD_COUNTS.get(name))
        verbatim = {name: (path / name).read_bytes() for name in VERBATIM_FILES if (path / name).is_file()}
        return cls(tables, verbatim=verbatim, path=path, utt_extra_files=utt_extra_files,
                   spk_extra_files=spk_extra_files)

    # ---------------------------------------------------------------------------------- accessors
    @property
    def utt2spk(self) -> Dict[str, str]:
        return self.tables["utt2spk"]

    @property
    def utts(self) -> List[str]:
        return list(self.tables["utt2spk"])

    @property
    def speakers(self) -> List[str]:
        """Speakers in order of first appearance in utt2spk."""
        return list(dict.fromkeys(self.tables["utt2spk"].values()))

    def spk2utt(self) -> Dict[str, List[str]]:
        return utt2spk_to_spk2utt(self.tables["utt2spk"])

    @property
    def has_segments(self) -> bool:
        return "segments" in self.tables

    def has(self, name: str) -> bool:
        return name in self.tables or name in self.verbatim

    def table(self, name: str) -> Dict[str, str]:
        if name not in self.tables:
            where = self.path / name if self.path else name
            raise DataDirError(format_error(where, "file not found", fix=f"the data dir needs {name} for this"))
        return self.tables[name]

    def recording_of(self, utt: str) -> str:
        """Recording id of an utterance: its segments line's second column, or the utterance itself."""
        if self.has_segments:
            return self.tables["segments"][utt].split(None, 1)[0]
        return utt

    def role(self, name: str) -> str:
        """``"utt"``, ``"spk"``, ``"reco"`` or ``"verbatim"``: how the file follows an operation."""
        if name == "wav.scp":
            return "reco" if self.has_segments else "utt"
        if name in ("utt2spk",) + UTT_FILES or name in self.utt_extra_files:
            return "utt"
        if name in SPK_FILES or name in self.spk_extra_files:
            return "spk"
        if name in RECO_FILES:
            return "reco" if self.has_segments else "utt"
        return "verbatim"

    def fingerprints(self, utts: Optional[Iterable[str]] = None) -> Dict[str, str]:
        """utt -> :func:`wav_fingerprint` of its current wav.scp value (and segment); skips utts without audio."""
        wav = self.tables.get("wav.scp", {})
        segments = self.tables.get("segments")
        result = {}
        for utt in (self.utts if utts is None else utts):
            if segments is not None:
                if utt in segments:
                    reco = segments[utt].split(None, 1)[0]
                    if reco in wav:
                        result[utt] = wav_fingerprint(wav[reco], segments[utt])
            elif utt in wav:
                result[utt] = wav_fingerprint(wav[utt])
        return result

    def __len__(self) -> int:
        return len(self.tables["utt2spk"])

    def __repr__(self) -> str:
        return (f"DataDir({str(self.path) if self.path else '<memory>'}: {len(self)} utts, "
                f"{len(self.speakers)} spks, files={sorted(self.tables) + sorted(self.verbatim)})")

    def _derived(self, tables: Mapping[str, Mapping[str, str]]) -> "DataDir":
        return DataDir(tables, verbatim=self.verbatim, utt_extra_files=self.utt_extra_files,
                       spk_extra_files=self.spk_extra_files)

    # -------------------------------------------------------------------------------- filtering
    def filter_utts(self, keep: Iterable[str]) -> "DataDir":
        """A new DataDir with only the utterances in ``keep`` (and their speakers and recordings)."""
        keep_set = set(keep)
        tables = {}
        utt2spk = {u: s for u, s in self.utt2spk.items() if u in keep_set}
        speakers = set(utt2spk.values())
        if self.has_segments:
            segments = {u: v for u, v in self.tables["segments"].items() if u in utt2spk}
            recordings = {v.split(None, 1)[0] for v in segments.values()}
        else:
            recordings = set(utt2spk)
        for name, table in self.tables.items():
            role = self.role(name)
            wanted = utt2spk if role == "utt" else speakers if role == "spk" else recordings
            tables[name] = {k: v for k, v in table.items() if k in wanted}
        return self._derived(tables)

    # ---------------------------------------------------------------------------------- writing
    def save(self, path: Optional[PathLike] = None, *, only: Optional[Iterable[str]] = None) -> Path:
        """Write the data dir to ``path`` (default: where it was loaded from).

        Saving over the directory it was loaded from rewrites each table atomically in place
        (``only`` limits which tables). Saving elsewhere builds the whole directory under a
        temporary name beside ``path`` and renames it into place, replacing an existing data
        dir there (never a directory that is not a data dir).
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise DataDirError("DataDir.save: no path given and the data dir was not loaded from disk")
        if self.path is not None and target.is_dir() and self.path.is_dir() and os.path.samefile(target, self.path):
            self._write_into(target, only=only)
            return target
        if target.exists():
            if not target.is_dir():
                raise DataDirError(format_error(target, "exists and is not a directory", fix="choose another path"))
            if any(target.iterdir()) and not (target / "utt2spk").is_file():
                raise DataDirError(format_error(target, "refusing to replace a directory that is not a data dir "
                                                "(it has files but no utt2spk)", fix="choose another output path"))
        replace_dir_atomically(target, self._write_into)
        self.path = target
        return target

    def _write_into(self, directory: Path, *, only: Optional[Iterable[str]] = None) -> None:
        wanted = None if only is None else set(only)
        for name, table in self.tables.items():
            if wanted is None or name in wanted:
                write_table(directory / name, table)
        if wanted is None or "spk2utt" in wanted or "utt2spk" in wanted:
            write_table(directory / "spk2utt", [(spk, " ".join(utts)) for spk, utts in self.spk2utt().items()],
                        sort=False)
        for name, content in self.verbatim.items():
            if wanted is None or name in wanted:
                atomic_write_text(directory / name, content.decode("utf-8", "surrogateescape"))
