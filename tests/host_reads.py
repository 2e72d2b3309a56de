"""Counting what would synchronise a GPU with the host, on a CPU: every read of a tensor's value into
Python (``.item()``, ``float()``, ``bool()``, ``.tolist()``, ``.numpy()``, ``nonzero``) and every tensor made
from Python data (``torch.tensor(list)``, a host-to-device copy when a device is given). On CPU tensors these
cost nothing, so the counter is what tells whether code written for a GPU would stall it."""
from __future__ import annotations

import traceback
from typing import List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_READS = (torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero, torch.ops.aten.is_nonzero)
_FROM_PYTHON = (torch.ops.aten.lift_fresh,)


class HostReads(TorchDispatchMode):
    """``with HostReads() as reads: ...`` then ``reads.events``: (kind, where) per read or copy, ``where``
    the innermost frame of speechdistill's source (or of the caller) that caused it."""

    def __init__(self) -> None:
        super().__init__()
        self.events: List[tuple] = []
        self._saved = {}

    def _note(self, kind: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "speechdistill" in f.filename and "/tests/" not in f.filename]
        where = f"{frames[-1].filename.split('speechdistill/')[-1]}:{frames[-1].lineno}" if frames else "test"
        self.events.append((kind, where))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in _READS:
            self._note(str(func.overloadpacket))
        elif func.overloadpacket in _FROM_PYTHON:
            self._note("tensor from Python data")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in ("tolist", "numpy"):
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                self._note(_name)
                return _original(tensor, *args, **kwargs)
            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)
