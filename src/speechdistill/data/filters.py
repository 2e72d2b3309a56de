"""Line filters over Kaldi tables as bytes (what ``utt2spk_to_spk2utt.pl``, ``spk2utt_to_utt2spk.pl`` and
``filter_scp.pl`` do), order-preserving and encoding-agnostic; errors name the input and line."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

from .tables import DataDirError


def read_lines(paths: Sequence[str]) -> List[bytes]:
    """The lines of ``paths`` in order (stdin when there is none)."""
    if not paths:
        return sys.stdin.buffer.read().splitlines()
    lines: List[bytes] = []
    for path in paths:
        if not Path(path).is_file():
            raise DataDirError(f"{path}: file not found")
        lines.extend(Path(path).read_bytes().splitlines())
    return lines


def spk2utt_from_utt2spk(lines: Iterable[bytes], source: str) -> bytes:
    """``<spk> <utt> ...`` lines, speakers in order of first appearance, utterances in input order."""
    spk2utt: Dict[bytes, List[bytes]] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataDirError(f"{source}:{number}: expected '<utt> <spk>', found {len(fields)} field(s)")
        spk2utt.setdefault(fields[1], []).append(fields[0])
    return b"".join(spk + b" " + b" ".join(utts) + b"\n" for spk, utts in spk2utt.items())


def utt2spk_from_spk2utt(lines: Iterable[bytes], source: str) -> bytes:
    """One ``<utt> <spk>`` line per utterance, in spk2utt order."""
    out = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DataDirError(f"{source}:{number}: speaker '{fields[0].decode(errors='replace')}' has no utterances")
        out.extend(utt + b" " + fields[0] + b"\n" for utt in fields[1:])
    return b"".join(out)


def filter_by_ids(lines: Iterable[bytes], ids: set, field: int, exclude: bool, source: str) -> bytes:
    """The lines whose field ``field`` (1-based) is in ``ids`` (not in it when ``exclude``), in input order."""
    out = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < field:
            raise DataDirError(f"{source}:{number}: has {len(fields)} field(s), but -f {field} was asked for")
        if (fields[field - 1] in ids) != exclude:
            out.append(line + b"\n")
    return b"".join(out)
