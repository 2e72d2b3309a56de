"""Per-utterance tables in a few flat numpy arrays instead of millions of Python objects.

A DataLoader worker is a fork of the training process. Reading a Python string or tuple
writes its reference count, which copies the memory page holding it into the worker: touching
every item of a 1,092,009-utterance index of Python objects grew a worker by about 300 MB
(8 workers x 8 ranks: over 20 GB per node). A numpy array is one object whose data pages are
only read, so every worker shares them with the parent.

:class:`FlatStrings` holds strings as one UTF-8 byte buffer plus offsets; :class:`FlatColumn`
holds any per-item value column (numbers, 1-D number sequences, strings) the same way.
"""
from __future__ import annotations

import numbers
from typing import Any, Iterable, List, Sequence, Union

import numpy as np


def _offsets(lengths: Iterable[int], count: int) -> np.ndarray:
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.fromiter(lengths, dtype=np.int64, count=count), out=offsets[1:])
    return offsets


class FlatStrings:
    """An immutable sequence of ``N`` strings: ``data`` uint8 ``[total bytes]``, ``offsets`` int64 ``[N + 1]``."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        self.offsets = _offsets((len(b) for b in encoded), len(encoded))
        self.data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.data[start:stop].tobytes().decode("utf-8", "surrogateescape")

    def tolist(self) -> List[str]:
        return [self[i] for i in range(len(self))]

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.offsets.nbytes)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, complex)


def _is_number_sequence(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "biuf"
    return isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)


class FlatColumn:
    """One value per item, stored flat when the values allow it.

    * numbers (all bool, all integer, or real) -> one array; items come back as numpy scalars;
    * 1-D number sequences -> one concatenated array + offsets; items come back as 1-D arrays
      (int64 when every value is an integer, else float64);
    * strings -> :class:`FlatStrings`;
    * anything else -> a plain list (the values a task passes are rarely of this kind).
    """

    def __init__(self, values: Sequence[Any]) -> None:
        self.kind = "list"
        self.values: Union[np.ndarray, FlatStrings, List[Any]]
        self.offsets = None
        if values and all(isinstance(v, (bool, np.bool_)) for v in values):
            self.kind, self.values = "scalar", np.array(values, dtype=bool)
        elif values and all(_is_number(v) and not isinstance(v, (bool, np.bool_)) for v in values):
            integer = all(isinstance(v, numbers.Integral) for v in values)
            self.kind, self.values = "scalar", np.array(values, dtype=np.int64 if integer else np.float64)
        elif values and all(isinstance(v, str) for v in values):
            self.kind, self.values = "string", FlatStrings(values)
        elif values and all(_is_number_sequence(v) for v in values):
            arrays = [np.asarray(v) for v in values]
            integer = all(a.dtype.kind in "biu" or a.size == 0 for a in arrays)
            self.kind = "sequence"
            self.offsets = _offsets((len(a) for a in arrays), len(arrays))
            dtype = np.int64 if integer else np.float64
            self.values = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
        else:
            self.values = list(values)

    def __len__(self) -> int:
        return len(self.values) if self.kind != "sequence" else len(self.offsets) - 1

    def __getitem__(self, index: int) -> Any:
        if self.kind == "sequence":
            return self.values[self.offsets[index]:self.offsets[index + 1]]
        return self.values[index]


__all__ = ["FlatStrings", "FlatColumn"]
