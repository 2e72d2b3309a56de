"""Operations on Kaldi data dirs (conventions §1): subset (utils/subset_data_dir.sh modes), copy with
id prefixes/suffixes, combine, and split into parts by speaker or utterance. Each returns new
:class:`~.datadir.DataDir` objects; saving them is atomic (:meth:`DataDir.save`)."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .datadir import RECO_FILES, SPK_FILES, DataDir, evenly_spaced, wav_fingerprint
from .tables import replace_dir_atomically
from .tables import DataDirError, PathLike, byte_key, format_error

logger = logging.getLogger("speechdistill.data")


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
