"""Reading and writing Kaldi-style ``<key> <value>`` tables (wav.scp, utt2spk, text, ...).

Every ordering here is C-locale byte order (``LC_ALL=C sort``): keys are compared as their
UTF-8 bytes, whatever the locale of the Python process. Every write goes to a temporary
file in the same directory and is renamed into place, so an interrupted stage never leaves
a half-written table behind.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Union

PathLike = Union[str, os.PathLike]
_WHITESPACE = re.compile(r"\s")
BOM = "\ufeff"  # a UTF-8 byte-order mark (bytes EF BB BF), as some editors write at the start of a file


class DataDirError(ValueError):
    """A malformed data directory or table; the message names file, line, key, problem and fix."""


def byte_key(text: str) -> bytes:
    """Sort key giving C-locale (byte) order for a str.

    For text decoded as strict UTF-8 (every table here) plain ``str`` comparison gives the same
    order, because UTF-8 byte order is code point order; the hot paths below rely on that.
    """
    return text.encode("utf-8", "surrogateescape")


def _first(item: Tuple[str, str]) -> str:
    return item[0]


def format_error(path: PathLike, problem: str, *, line: Optional[int] = None, key: Optional[str] = None,
                 fix: Optional[str] = None) -> str:
    where = str(path) + (f":{line}" if line is not None else "")
    msg = f"{where}: " + (f"key '{key}': " if key is not None else "") + problem
    if fix:
        msg += f". Fix: {fix}"
    return msg


def bom_problem(path: PathLike) -> str:
    """The error for a table that starts with a byte-order mark (it would become part of the first key)."""
    return format_error(path, "starts with a UTF-8 byte-order mark (BOM, bytes EF BB BF), which Kaldi tools read as "
                              "part of the first key", line=1,
                        fix=f"utils/fix_data_dir.sh {Path(path).parent} removes it (keeping every line), or "
                            f"sed -i '1s/^\\xEF\\xBB\\xBF//' {path}")


def parse_table_lines(path: PathLike, raw: bytes) -> List[Tuple[int, str, str]]:
    """Split raw bytes into (line_number, key, value) triples without judging order.

    A line is stripped of leading/trailing whitespace and split at the first run of
    whitespace, as Kaldi does. Empty lines and lines without a value are errors.
    """
    text = decode_utf8(path, raw)
    if text.startswith(BOM):
        raise DataDirError(bom_problem(path))
    if text and not text.endswith("\n"):
        raise DataDirError(format_error(path, "missing newline at the end of the last line",
                                        line=text.count("\n") + 1, fix="append a final newline"))
    rows = []
    for number, line in enumerate(text.split("\n")[:-1] if text else [], start=1):
        if "\r" in line:
            raise DataDirError(format_error(path, "carriage return (CR) in line", line=number,
                                            fix="convert the file to Unix line endings (dos2unix)"))
        stripped = line.strip(" \t")
        if not stripped:
            raise DataDirError(format_error(path, "empty line", line=number, fix="remove empty lines"))
        parts = stripped.split(None, 1)
        key = parts[0]
        value = parts[1].strip() if len(parts) > 1 else ""
        rows.append((number, key, value))
    return rows


class TableLine(NamedTuple):
    """One non-empty line of a table: 1-based line ``number``, ``key`` and the rest (``value``)."""
    number: int
    key: str
    value: str


@dataclass
class TableScan:
    """A table read without judging it: every non-empty line in file order, plus what is off.

    Used by the validator (to report every kind of problem) and by the fixer (to repair them);
    :func:`read_table` is the strict reader for everything else.
    """
    path: Path
    lines: List[TableLine]
    missing_final_newline: bool = False
    byte_order_mark: bool = False  # the file started with a BOM, removed from the first line here
    empty_lines: List[int] = field(default_factory=list)
    crlf_lines: List[int] = field(default_factory=list)

    def first_unsorted(self) -> Optional[Tuple[TableLine, TableLine]]:
        """The first pair of adjacent lines whose keys are out of C-locale byte order."""
        for before, after in zip(self.lines, self.lines[1:]):
            if after.key < before.key:
                return before, after
        return None

    def duplicates(self) -> List[Tuple[TableLine, TableLine]]:
        """(first occurrence, repeat) for every repeated key, in file order of the repeats."""
        first: Dict[str, TableLine] = {}
        repeats = []
        for line in self.lines:
            if line.key in first:
                repeats.append((first[line.key], line))
            else:
                first[line.key] = line
        return repeats

    def as_dict(self) -> Dict[str, str]:
        """key -> value, keeping the first occurrence of a repeated key, in file order."""
        table: Dict[str, str] = {}
        for line in self.lines:
            table.setdefault(line.key, line.value)
        return table


def decode_utf8(path: PathLike, raw: bytes) -> str:
    """Decode a table's bytes; invalid UTF-8 is an error naming the line, column and byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw[: exc.start].count(b"\n") + 1
        column = len(raw[line_start: exc.start].decode("utf-8", "replace")) + 1
        raise DataDirError(format_error(path, f"invalid UTF-8 byte 0x{raw[exc.start]:02x} at column {column}",
                                        line=line, fix="re-encode the file as UTF-8 (e.g. 'iconv -f latin1 -t utf-8')"
                                        )) from None


def scan_table(path: PathLike) -> TableScan:
    """Read every non-empty line of a table leniently (order, duplicates, CR and final newline noted).

    Raises :class:`DataDirError` only for what cannot be read at all: a missing file or bytes
    that are not UTF-8. A leading byte-order mark is noted and left out of the first key.
    """
    path = Path(path)
    if not path.is_file():
        raise DataDirError(format_error(path, "file not found", fix="create it or point to the right data dir"))
    text = decode_utf8(path, path.read_bytes())
    bom = text.startswith(BOM)
    text = text[len(BOM):] if bom else text
    scan = TableScan(path=path, lines=[], missing_final_newline=bool(text) and not text.endswith("\n"),
                     byte_order_mark=bom)
    pieces = text.split("\n")
    if not scan.missing_final_newline:
        pieces.pop()  # the empty piece after the final newline is not a line
    lines = scan.lines
    for number, line in enumerate(pieces, start=1):
        if line.endswith("\r"):
            scan.crlf_lines.append(number)
            line = line[:-1]
        parts = line.split(None, 1)
        if not parts:
            scan.empty_lines.append(number)
        elif len(parts) == 1:
            lines.append(TableLine(number, parts[0], ""))
        else:
            lines.append(TableLine(number, parts[0], parts[1].rstrip()))
    return scan


def read_table(path: PathLike, *, allow_empty_value: bool = False, nfields: Optional[int] = None,
               check_sorted: bool = True) -> Dict[str, str]:
    """Read a ``<key> <value>`` table into an ordered dict (file order).

    Raises :class:`DataDirError` on a missing file, a leading byte-order mark, a missing final newline, an empty line or
    value, a wrong number of fields (when ``nfields`` is given, counting the key), a duplicate
    key, or (with ``check_sorted``) keys out of C-locale byte order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataDirError(format_error(path, "file not found", fix="create it or point to the right data dir"))
    rows = parse_table_lines(path, path.read_bytes())
    table: Dict[str, str] = {}
    previous: Optional[Tuple[int, str]] = None
    for number, key, value in rows:
        if not value and not allow_empty_value:
            raise DataDirError(format_error(path, "no value after the key", line=number, key=key,
                                            fix="every line must be '<key> <value>'"))
        if nfields is not None:
            found = 1 + len(value.split())
            if found != nfields:
                raise DataDirError(format_error(path, f"expected {nfields} fields, found {found}", line=number,
                                                key=key))
        if key in table:
            raise DataDirError(format_error(path, "duplicate key", line=number, key=key,
                                            fix="keys must be unique; run utils/fix_data_dir.sh or remove duplicates"))
        if check_sorted and previous is not None and key < previous[1]:
            raise DataDirError(format_error(
                path, f"not sorted in C-locale byte order: '{previous[1]}' (line {previous[0]}) comes before it",
                line=number, key=key,
                fix="sort with 'LC_ALL=C sort -k1,1' (utils/fix_data_dir.sh does it); if ids join fields with '_', "
                    "use '-' or zero-pad the speaker ids"))
        table[key] = value
        previous = (number, key)
    return table


def sorted_items(mapping: Union[Mapping[str, str], Iterable[Tuple[str, str]]]) -> List[Tuple[str, str]]:
    items = list(mapping.items()) if isinstance(mapping, Mapping) else list(mapping)
    return sorted(items, key=_first)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is renamed to ``path`` (readable as any
    file the user writes), on an exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs are shared like any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def writable_output_file(path: PathLike, example: str) -> Path:
    """Fail before any work when the file ``path`` cannot be written (it is a directory, or its folder cannot
    be made or written in): ValueError naming the path and the fix. ``example``: a file name to suggest."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory. Fix: give the file to write, e.g. {path / example}")
    existing = next(folder for folder in path.absolute().parents if folder.exists())
    if not existing.is_dir():
        raise ValueError(f"{path}: {existing} is a file, not a directory. Fix: choose another output path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=str(path.parent), prefix=f".{path.name}.write-test-"):
            pass
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ValueError(f"{path}: cannot write it: {exc.strerror or exc}{where}. Fix: make {path.parent} a "
                         "writable directory or choose another output path") from None
    return path


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory + rename."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)


def write_table(path: PathLike, mapping: Union[Mapping[str, str], Iterable[Tuple[str, str]]], *,
                sort: bool = True) -> None:
    """Write a table, byte-order sorted by key (unless ``sort=False``), atomically.

    Values are written as given; a key containing whitespace or an empty key is refused.
    """
    items = sorted_items(mapping) if sort else (list(mapping.items()) if isinstance(mapping, Mapping)
                                                 else list(mapping))
    lines = []
    for key, value in items:
        if not key or _WHITESPACE.search(key):
            raise DataDirError(format_error(path, "refusing to write a key that is empty or contains whitespace",
                                            key=key))
        value = str(value)
        lines.append(f"{key} {value}\n" if value != "" else f"{key}\n")
    atomic_write_text(path, "".join(lines))


def write_list(path: PathLike, lines: Iterable[str]) -> None:
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def filter_table(table: Mapping[str, str], keep: Callable[[str], bool]) -> Dict[str, str]:
    return {k: v for k, v in table.items() if keep(k)}


def replace_dir_atomically(target: PathLike, write: Callable[[Path], None]) -> None:
    """Build a directory with ``write(staging_dir)`` beside ``target``, then rename it to ``target``.

    An existing ``target`` is moved aside first and deleted after the rename, so a reader sees
    either the old or the new directory, and an interrupted write leaves only a hidden
    ``.<name>.tmp-*`` folder behind. Data dirs, model dirs and exports are all written this way.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=str(target.parent)))
    try:
        os.chmod(staging, 0o777 & ~_current_umask())  # mkdtemp makes 0700; outputs are shared like any dir
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
