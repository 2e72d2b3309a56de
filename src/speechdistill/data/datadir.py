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

Operations return new :class:`DataDir` objects; :meth:`DataDir.save` writes a new directory
under a temporary name and renames it into place, so an interrupted stage never leaves a
half-written data dir.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .tables import (DataDirError, PathLike, atomic_write_text, byte_key, format_error, read_table, sorted_items,
                     write_table)

if TYPE_CHECKING:  # circular at run time: both modules build on DataDir
    from .fix import FixReport
    from .validate import ValidationReport

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


def replace_dir_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Build a directory with ``write(staging_dir)`` beside ``target``, then rename it to ``target``.

    An existing ``target`` is moved aside first and deleted after the rename, so a reader sees
    either the old or the new directory, and an interrupted write leaves only a hidden
    ``.<name>.tmp-*`` folder behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=str(target.parent)))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; a data dir is shared like any other
        write(staging)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=str(target.parent)))
            os.rename(target, retired / "dir")
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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

    # ------------------------------------------------------------------ operations (see functions)
    def validate(self, **options) -> "ValidationReport":
        """Validate the saved directory; see :func:`speechdistill.data.validate.validate_data_dir`."""
        from .validate import ValidateOptions, validate_data_dir

        if self.path is None:
            raise DataDirError("DataDir.validate: save the data dir first (validation reads the files)")
        return validate_data_dir(self.path, ValidateOptions(**options))

    def subset(self, mode: str = "spaced", num: Optional[int] = None, *, ids: Optional[Iterable[str]] = None,
               seed: int = 0) -> "DataDir":
        return subset_data_dir(self, mode, num, ids=ids, seed=seed)

    def copy(self, *, utt_prefix: str = "", utt_suffix: str = "", spk_prefix: str = "", spk_suffix: str = ""
             ) -> "DataDir":
        return copy_data_dir(self, utt_prefix=utt_prefix, utt_suffix=utt_suffix, spk_prefix=spk_prefix,
                             spk_suffix=spk_suffix)

    def split(self, num_parts: int, *, per_utt: bool = False) -> List["DataDir"]:
        return split_data_dir(self, num_parts, per_utt=per_utt)

    @staticmethod
    def combine(sources: Sequence["DataDir"], *, extra_files: Iterable[str] = ()) -> "DataDir":
        return combine_data_dirs(sources, extra_files=extra_files)

    def fix(self) -> "FixReport":
        """Fix the saved directory in place; see :func:`speechdistill.data.fix.fix_data_dir`."""
        from .fix import fix_data_dir

        if self.path is None:
            raise DataDirError("DataDir.fix: save the data dir first (fixing works on the files)")
        return fix_data_dir(self.path, utt_extra_files=self.utt_extra_files, spk_extra_files=self.spk_extra_files)


# ========================================================================================= subset
SUBSET_MODES = ("spaced", "first", "last", "shortest", "per-spk", "speakers", "utt-list", "spk-list")


def read_id_list(path: PathLike) -> List[str]:
    """First column of every non-empty line of ``path`` (an utterance or speaker list)."""
    path = Path(path)
    if not path.is_file():
        raise DataDirError(format_error(path, "id list not found", fix="check the path"))
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields:
            ids.append(fields[0])
    return ids


def utterance_lengths(data: DataDir) -> Tuple[str, Dict[str, float]]:
    """(source file, utt -> length) from utt2num_samples, else utt2dur, else utt2num_frames."""
    for name in ("utt2num_samples", "utt2dur", "utt2num_frames"):
        if name in data.tables:
            lengths = {}
            for utt, value in data.tables[name].items():
                try:
                    lengths[utt] = float(value)
                except ValueError:
                    raise DataDirError(format_error(data.path / name if data.path else name,
                                                    f"'{value}' is not a number", key=utt)) from None
            return name, lengths
    where = data.path or "<data dir>"
    raise DataDirError(format_error(where, "needs utterance lengths (utt2num_samples, utt2dur or utt2num_frames)",
                                    fix=f"run utils/get_utt2num_samples.sh {where} first"))


def subset_data_dir(data: DataDir, mode: str = "spaced", num: Optional[int] = None, *,
                    ids: Optional[Iterable[str]] = None, seed: int = 0) -> DataDir:
    """Select utterances as ``subset_data_dir.sh`` does (conventions §1.7).

    ``mode``: ``spaced`` (``num`` evenly spaced utterances, deterministic), ``first``/``last``
    (first/last ``num`` of utt2spk), ``shortest`` (``num`` shortest, needs lengths),
    ``per-spk`` (up to ``num`` per speaker, evenly spaced), ``speakers`` (whole speakers in a
    seeded shuffle until ``num`` utterances are reached), ``utt-list``/``spk-list`` (the ids in
    ``ids``). Asking for more utterances than there are is an error.
    """
    if mode not in SUBSET_MODES:
        raise DataDirError(f"unknown subset mode '{mode}'; choose one of {', '.join(SUBSET_MODES)}")
    utts = data.utts
    where = data.path or "<data dir>"
    if mode in ("utt-list", "spk-list"):
        if ids is None:
            raise DataDirError(f"subset mode '{mode}' needs a list of ids")
        wanted = set(ids)
        if mode == "utt-list":
            chosen = [u for u in utts if u in wanted]
            missing = len(wanted - set(utts))
        else:
            chosen = [u for u in utts if data.utt2spk[u] in wanted]
            missing = len(wanted - set(data.speakers))
        if missing:
            logger.warning("%d of the %d listed id(s) are not in %s", missing, len(wanted), where)
    else:
        if num is None or num <= 0:
            raise DataDirError(f"subset: the number of utterances must be a positive integer, got {num}")
        if mode != "per-spk" and num > len(utts):
            raise DataDirError(format_error(where, f"asked for {num} utterances but the data dir has only {len(utts)}",
                                            fix=f"ask for at most {len(utts)}"))
        if mode == "spaced":
            chosen = evenly_spaced(utts, num)
        elif mode == "first":
            chosen = utts[:num]
        elif mode == "last":
            chosen = utts[-num:]
        elif mode == "shortest":
            _, lengths = utterance_lengths(data)
            missing = [u for u in utts if u not in lengths]
            if missing:
                raise DataDirError(format_error(where, f"{len(missing)} utterance(s) have no length (first: "
                                                f"'{missing[0]}')", fix=f"run utils/fix_data_dir.sh {where}"))
            chosen = sorted(utts, key=lambda u: (lengths[u], byte_key(u)))[:num]
        elif mode == "per-spk":
            chosen = [u for spk_utts in data.spk2utt().values() for u in evenly_spaced(spk_utts, num)]
        else:  # speakers
            spk2utt = data.spk2utt()
            order = sorted(spk2utt, key=byte_key)
            random.Random(seed).shuffle(order)
            chosen = []
            for spk in order:
                if len(chosen) >= num:
                    break
                chosen.extend(spk2utt[spk])
    logger.info("reducing #utt from %d to %d", len(utts), len(chosen))
    return data.filter_utts(chosen)


# ========================================================================================== copy
def copy_data_dir(data: DataDir, *, utt_prefix: str = "", utt_suffix: str = "", spk_prefix: str = "",
                  spk_suffix: str = "") -> DataDir:
    """A copy with new ids: utt -> ``utt_prefix + utt + utt_suffix``, spk likewise (conventions §1.8).

    Recording ids stay as they are when there is a ``segments`` file (only its first column
    is remapped); without one, ``wav.scp`` and ``reco2dur`` keys are utterance ids and are
    remapped. ``utt2uniq`` keeps its second column; when the source has none and the
    utterance ids change, a new one maps each new id to the old one.
    """
    def new_utt(u: str) -> str:
        return f"{utt_prefix}{u}{utt_suffix}"

    def new_spk(s: str) -> str:
        return f"{spk_prefix}{s}{spk_suffix}"

    for affix in (utt_prefix, utt_suffix, spk_prefix, spk_suffix):
        if any(c.isspace() for c in affix):
            raise DataDirError(f"copy: prefix/suffix '{affix}' contains whitespace; ids cannot contain whitespace")
    tables = {}
    for name, table in data.tables.items():
        role = data.role(name)
        if name == "utt2spk":
            tables[name] = {new_utt(u): new_spk(s) for u, s in table.items()}
        elif role == "utt":
            tables[name] = {new_utt(u): v for u, v in table.items()}
        elif role == "spk":
            tables[name] = {new_spk(s): v for s, v in table.items()}
        else:
            tables[name] = dict(table)
    if "utt2uniq" not in data.tables and (utt_prefix or utt_suffix):
        tables["utt2uniq"] = {new_utt(u): u for u in data.utts}
    copied = data._derived(tables)
    logger.info("copied %d utterances of %d speakers (utt ids: %s<utt>%s, speaker ids: %s<spk>%s)", len(copied),
                len(copied.speakers), utt_prefix, utt_suffix, spk_prefix, spk_suffix)
    return copied


# ======================================================================================= combine
def _whole_file_segments(data: DataDir, where: str) -> Dict[str, str]:
    """``utt -> "utt 0 <duration>"`` for a data dir without segments, from its lengths or the audio."""
    if "utt2dur" in data.tables:
        durations = {u: float(v) for u, v in data.tables["utt2dur"].items()}
    elif "utt2num_samples" in data.tables:
        from .audio import SAMPLE_RATE

        durations = {u: int(v) / SAMPLE_RATE for u, v in data.tables["utt2num_samples"].items()}
    else:
        from .audio import probe_audio

        wav = data.table("wav.scp")
        durations = {u: probe_audio(wav[u], key=u).duration for u in data.utts if u in wav}
    missing = [u for u in data.utts if u not in durations]
    if missing:
        raise DataDirError(format_error(where, f"cannot make whole-file segments: {len(missing)} utterance(s) have "
                                        f"no duration (first: '{missing[0]}')",
                                        fix=f"run utils/get_utt2num_samples.sh {where}"))
    return {u: f"{u} 0 {durations[u]:.4f}" for u in data.utts}


def combine_data_dirs(sources: Sequence[DataDir], *, extra_files: Iterable[str] = ()) -> DataDir:
    """Concatenate data dirs (conventions §1.6, with our fixes).

    A file is combined only if every source has it (a note says which were dropped), except
    ``segments`` and ``utt2uniq``, which are synthesised for sources that lack them (whole-file
    segments; identity maps). An utterance id found in two sources is an error, as is a speaker
    or recording that two sources describe differently. ``frame_shift`` must agree where given.
    """
    if not sources:
        raise DataDirError("combine: give at least one source data dir")
    names = [str(s.path) if s.path else f"<source {i + 1}>" for i, s in enumerate(sources)]
    owner: Dict[str, int] = {}
    for index, source in enumerate(sources):
        for utt in source.utts:
            if utt in owner:
                dups = sum(1 for u in source.utts if u in owner)
                raise DataDirError(
                    f"combine: utterance id '{utt}' is in both {names[owner[utt]]} and {names[index]} "
                    f"({dups} duplicate id(s) in {names[index]}). Fix: give one source distinct ids, e.g. "
                    f"utils/copy_data_dir.sh --utt-prefix <p>- --spk-prefix <p>- {names[index]} <new dir>")
            owner[utt] = index
    shifts = {s.verbatim["frame_shift"].strip() for s in sources if "frame_shift" in s.verbatim and "feats.scp" in s.tables}
    if len(shifts) > 1:
        raise DataDirError(f"combine: the sources have different frame_shift values {sorted(shifts)}; "
                           "features with different frame shifts cannot be combined")
    extra_files = tuple(extra_files)
    prepared = []
    any_segments = any(s.has_segments for s in sources)
    any_uniq = any("utt2uniq" in s.tables for s in sources)
    for source, name in zip(sources, names):
        tables = {k: dict(v) for k, v in source.tables.items()}
        if any_segments and not source.has_segments:
            tables["segments"] = _whole_file_segments(source, name)
            if "utt2wav_hash" in tables and "wav.scp" in tables:
                tables["utt2wav_hash"] = {u: wav_fingerprint(tables["wav.scp"][u], tables["segments"][u])
                                          for u in tables["utt2wav_hash"] if u in tables["wav.scp"]}
            if "reco2dur" not in tables and "utt2dur" in tables:
                tables["reco2dur"] = dict(tables["utt2dur"])
            logger.info("%s has no segments file; using whole-file segments for it", name)
        if any_uniq and "utt2uniq" not in tables:
            tables["utt2uniq"] = {u: u for u in tables["utt2spk"]}
        prepared.append(tables)
    all_files = []
    for tables in prepared:
        all_files.extend(n for n in tables if n not in all_files)
    combined: Dict[str, Dict[str, str]] = {}
    for name in all_files:
        if not all(name in t for t in prepared):
            logger.warning("not combining %s as it does not exist everywhere", name)
            continue
        merged: Dict[str, str] = {}
        if name in SPK_FILES:
            role = "spk"
        elif name in RECO_FILES or name == "wav.scp":
            role = "reco" if any_segments else "utt"
        else:
            role = "utt"
        for tables, source_name in zip(prepared, names):
            for key, value in tables[name].items():
                if key in merged and merged[key] != value:
                    what = {"spk": "speaker", "reco": "recording"}.get(role, "key")
                    raise DataDirError(f"combine: {what} '{key}' has different {name} entries in the sources "
                                       f"('{merged[key]}' vs '{value}' in {source_name}). Fix: make the ids distinct "
                                       "(utils/copy_data_dir.sh --spk-prefix/--utt-prefix)")
                merged[key] = value
        combined[name] = merged
    verbatim = {}
    if all("frame_shift" in s.verbatim for s in sources) and len({s.verbatim["frame_shift"] for s in sources}) == 1:
        verbatim["frame_shift"] = sources[0].verbatim["frame_shift"]
    result = DataDir(combined, verbatim=verbatim, utt_extra_files=extra_files)
    logger.info("combined %d data dirs: %d utterances, %d speakers", len(sources), len(result), len(result.speakers))
    return result


# ========================================================================================= split
def _split_counts(total: int, parts: int) -> List[int]:
    """Sizes of ``parts`` nearly equal chunks; the first ``total % parts`` get one more."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _group_speakers(spk2utt: Mapping[str, List[str]], parts: int) -> List[List[str]]:
    """Cut the speaker sequence into ``parts`` non-empty runs with balanced utterance counts.

    Each speaker goes to the part its utterance midpoint falls in (``mid * parts / total``);
    the part indices are then made to start at 0, end at ``parts - 1`` and grow by at most one
    per speaker, so that no part is empty (needs ``parts`` <= number of speakers).
    """
    speakers = list(spk2utt)
    total = sum(len(u) for u in spk2utt.values())
    wanted, seen = [], 0
    for spk in speakers:
        count = len(spk2utt[spk])
        wanted.append(min(parts - 1, int((seen + count / 2) * parts / total)))
        seen += count
    index = [0] * len(speakers)
    for i in range(1, len(speakers)):
        index[i] = min(max(wanted[i], index[i - 1]), index[i - 1] + 1)
    index[-1] = parts - 1
    for i in range(len(speakers) - 2, -1, -1):
        index[i] = max(index[i], index[i + 1] - 1)
    groups: List[List[str]] = [[] for _ in range(parts)]
    for spk, part in zip(speakers, index):
        groups[part].append(spk)
    return groups


def effective_num_parts(data: DataDir, num_parts: int, *, per_utt: bool = False) -> int:
    """``num_parts`` clamped to the number of speakers (or utterances with ``per_utt``)."""
    if num_parts < 1:
        raise DataDirError(f"split: the number of parts must be at least 1, got {num_parts}")
    available = len(data) if per_utt else len(data.speakers)
    return max(1, min(num_parts, available))


def split_data_dir(data: DataDir, num_parts: int, *, per_utt: bool = False) -> List[DataDir]:
    """Split into parts for parallel jobs (conventions §1.9).

    By default each speaker stays whole (parts balanced by utterance count); ``per_utt`` cuts
    utt2spk into nearly equal chunks of lines. Asking for more parts than there are speakers
    (or utterances) gives fewer parts with a warning instead of failing.
    """
    if len(data) == 0:
        raise DataDirError(format_error(data.path or "<data dir>", "has no utterances to split"))
    parts = effective_num_parts(data, num_parts, per_utt=per_utt)
    if parts < num_parts:
        unit = "utterances" if per_utt else "speakers"
        logger.warning("%s has only %d %s: splitting into %d parts instead of %d (use nj=%d)",
                       data.path or "the data dir", parts, unit, parts, num_parts, parts)
    if per_utt:
        utts = data.utts
        chunks, start = [], 0
        for size in _split_counts(len(utts), parts):
            chunks.append(utts[start:start + size])
            start += size
    else:
        spk2utt = data.spk2utt()
        chunks = [[u for spk in group for u in spk2utt[spk]] for group in _group_speakers(spk2utt, parts)]
    return _distribute(data, chunks)


def _distribute(data: DataDir, chunks: Sequence[Sequence[str]]) -> List[DataDir]:
    """One DataDir per chunk of utterances, every table distributed in a single pass.

    A speaker (or recording) whose utterances fall in several chunks is listed in each.
    """
    part_of = {utt: k for k, chunk in enumerate(chunks) for utt in chunk}
    spk_parts: Dict[str, List[int]] = {}
    reco_parts: Dict[str, List[int]] = {}
    segments = data.tables.get("segments")
    for utt, k in part_of.items():
        for owners, key in ((spk_parts, data.utt2spk[utt]),
                            (reco_parts, segments[utt].split(None, 1)[0] if segments and utt in segments else utt)):
            found = owners.setdefault(key, [])
            if k not in found:
                found.append(k)
    tables: List[Dict[str, Dict[str, str]]] = [{name: {} for name in data.tables} for _ in chunks]
    for name, table in data.tables.items():
        role = data.role(name)
        for key, value in table.items():
            if role == "utt":
                targets = (part_of[key],) if key in part_of else ()
            else:
                targets = (spk_parts if role == "spk" else reco_parts).get(key, ())
            for k in targets:
                tables[k][name][key] = value
    return [data._derived(t) for t in tables]


def split_dir_name(num_parts: int, per_utt: bool = False) -> str:
    return f"split{num_parts}{'utt' if per_utt else ''}"


def split_is_up_to_date(source: Path, num_parts: int, per_utt: bool = False) -> bool:
    """True when ``<source>/split<N>/{1..N}`` exist and are newer than every input file."""
    split_dir = source / split_dir_name(num_parts, per_utt)
    if not split_dir.is_dir():
        return False
    inputs = [p.stat().st_mtime for p in source.iterdir() if p.is_file()]
    newest_input = max(inputs) if inputs else 0.0
    for index in range(1, num_parts + 1):
        marker = split_dir / str(index) / "utt2spk"
        if not marker.is_file() or marker.stat().st_mtime < newest_input:
            return False
    return not (split_dir / str(num_parts + 1)).exists()


def write_split(data: DataDir, parts: Sequence[DataDir], *, per_utt: bool = False) -> Path:
    """Write parts to ``<data>/split<N>[utt]/<1..N>/``, the whole split dir built aside and renamed."""
    if data.path is None:
        raise DataDirError("write_split: the data dir must be on disk")
    split_dir = data.path / split_dir_name(len(parts), per_utt)

    def write_parts(staging: Path) -> None:
        for index, part in enumerate(parts, start=1):
            part._write_into(staging / str(index))

    replace_dir_atomically(split_dir, write_parts)
    return split_dir
