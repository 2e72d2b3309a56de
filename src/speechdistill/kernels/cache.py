"""Tensors derived from frozen weights (casts, concatenations, packed layouts, spectra), kept between calls.

Re-deriving them costs every forward of a frozen teacher a pass over its weights (re-casting HuBERT
Base's 85 M weights to bf16 takes ~15 ms on a CPU, 10 % of a 4 s bf16 forward). A kept tensor must
never outlive a change of the weights it came from, so:

* only parameters with ``requires_grad=False`` are kept for (:func:`..registry.is_frozen`): an
  optimizer never steps them, and trained weights are never cached at all;
* an entry is valid for the same parameter objects (held, so a freed tensor's address cannot be
  reused by another) at the same version counters, storage, dtype and device: an in-place edit
  (``load_state_dict``, ``mul_`` under ``no_grad``), ``.to()`` or a replaced parameter invalidates it;
* every optimizer step bumps the version counter of each parameter it stepped (a hook on all
  optimizers): fused and foreach optimizers write the weights without bumping it (fused AdamW leaves
  it at 0), so a parameter trained, then frozen again, cannot match an entry made before.

Edits through ``.data`` bypass version counters and are not seen; edit weights under ``torch.no_grad()``
instead. Copies and pickles of a module do not carry its kept tensors (packed oneDNN weights cannot be
copied at all): a copy starts empty.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple

import torch
from torch import nn
from torch.autograd.graph import increment_version
from torch.optim.optimizer import register_optimizer_step_post_hook

from .registry import is_frozen

Derived = Tuple[Any, ...]


class _Kept(dict):
    """The kept tensors of one module: not carried by ``copy.deepcopy`` or pickling."""

    def __deepcopy__(self, memo: Dict[int, Any]) -> "_Kept":
        return _Kept()

    def __reduce__(self) -> Tuple[type, tuple]:
        return (_Kept, ())


def _state(parts: Sequence[torch.Tensor]) -> tuple:
    return tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in parts)


def kept(owner: nn.Module, slot: str, parts: Sequence[torch.Tensor],
         derive: Callable[[Sequence[torch.Tensor]], Derived]) -> Derived:
    """``derive(parts)``, kept on ``owner`` under ``slot`` while ``parts`` are frozen and unchanged.

    Each autocast dtype (and autocast off) has its own entry, so that a model run alternately in two
    precisions does not re-derive on every switch; ``derive`` sees the autocast state of the call.
    Parts that are not frozen get ``derive(parts)`` afresh on every call.
    """
    if not is_frozen(parts):
        return derive(parts)
    device_type = parts[0].device.type
    cast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    store = owner.__dict__.setdefault("_speechdistill_kept", _Kept())
    key = (slot, cast)
    entry = store.get(key)
    state = _state(parts)
    if entry is None or not (len(entry[0]) == len(parts) and all(a is b for a, b in zip(entry[0], parts))
                             and entry[1] == state):
        # normal tensors even under inference_mode, so that a later grad-enabled call may use them
        with torch.inference_mode(False), torch.no_grad():
            values = derive(parts)
        entry = (tuple(parts), state, values)
        store[key] = entry
    return entry[2]


def kept_entries(owner: nn.Module) -> Dict[Tuple[str, Any], Derived]:
    """``{(slot, autocast dtype): derived values}`` kept on ``owner`` (for tests and diagnostics)."""
    return {key: entry[2] for key, entry in owner.__dict__.get("_speechdistill_kept", {}).items()}


def _mark_stepped_parameters(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """After any optimizer step: bump the version counter of every parameter that had a gradient."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    increment_version(parameter)


_STEP_HOOK = register_optimizer_step_post_hook(_mark_stepped_parameters)
