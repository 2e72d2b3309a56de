"""Which kernel runs an op: a registry of kernels, each saying when it applies.

The model (``speechdistill.models``) is written in plain PyTorch; that code is what a CUDA device
runs and what ``SPEECHDISTILL_KERNELS=reference`` runs everywhere. At a few places the model asks
:func:`find` whether a faster kernel exists for the call at hand; if one does, the model hands the
call to it, otherwise it goes on with its own code. Each kernel belongs to a backend (``onednn``,
``cpu``, ``frozen``) and says in :attr:`Kernel.applies` for which calls it is valid and faster: a
:class:`Request` holds the device, the compute dtype, whether the parameters are frozen, whether
autograd records the call, and a size (multiply-adds or elements). Kernels of an op are tried in the
order they were registered; the first that applies runs.

Which backends may run is a policy: ``auto`` (every backend), ``reference`` (none: the model's own
code) or a comma-separated list of backend names. It comes from :func:`use` (a context manager,
e.g. the trainer's ``kernels`` option) or, outside one, from the environment variable
``SPEECHDISTILL_KERNELS`` (default ``auto``). Under ``torch.compile`` no kernel runs: the compiler
generates its own.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch

ENV_VARIABLE = "SPEECHDISTILL_KERNELS"
OPS = ("linear", "conv_features", "positional_conv", "dropout")


class Request(NamedTuple):
    """What a kernel needs to know to say whether it applies (a tuple: built on every call of the model).

    Attributes:
        op: one of :data:`OPS`.
        device: the input's device.
        dtype: the compute dtype (the autocast dtype when autocast is on for the device).
        frozen: every parameter of the call has ``requires_grad=False`` (a teacher, a frozen
            upstream): nothing but an explicit edit can change them, so derived tensors may be kept.
        grad: autograd records the call (grad mode on and the input or a parameter requires grad).
        size: the op's size: multiply-adds of a product, elements of a dropout, samples of a CNN input.
    """

    op: str
    device: torch.device
    dtype: torch.dtype
    frozen: bool
    grad: bool
    size: int = 0


@dataclass(frozen=True)
class Kernel:
    """One implementation of an op by one backend.

    Attributes:
        name: ``<op>/<what>``, e.g. ``linear/onednn-packed``.
        backend: the policy name that enables it.
        applies: whether it runs a call described by a :class:`Request`.
        run: the implementation; its arguments are the op's (see the model's call sites).
    """

    name: str
    backend: str
    applies: Callable[[Request], bool]
    run: Callable


_KERNELS: Dict[str, Tuple[Kernel, ...]] = {op: () for op in OPS}
_POLICY: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("speechdistill_kernels", default=None)


def register(kernel: Kernel) -> Kernel:
    """Add ``kernel`` after the kernels already registered for its op (import time only)."""
    op = kernel.name.split("/", 1)[0]
    if op not in _KERNELS:
        raise ValueError(f"kernel {kernel.name}: unknown op '{op}'; ops are {', '.join(OPS)}")
    if any(k.name == kernel.name for k in _KERNELS[op]):
        raise ValueError(f"kernel {kernel.name} is registered twice")
    _KERNELS[op] = _KERNELS[op] + (kernel,)
    return kernel


def backends() -> List[str]:
    """Names of the registered backends, in registration order."""
    return list(dict.fromkeys(k.backend for kernels in _KERNELS.values() for k in kernels))


def kernels(op: Optional[str] = None) -> List[Kernel]:
    """The registered kernels (of ``op``), in the order they are tried."""
    return [k for name in ([op] if op else OPS) for k in _KERNELS[name]]


def parse_policy(text: str, *, source: str = ENV_VARIABLE) -> Optional[FrozenSet[str]]:
    """``auto`` -> None (every backend), ``reference`` -> no backend, ``a,b`` -> those backends.

    Raises:
        ValueError: naming ``source`` and the known values, for anything else.
    """
    value = (text or "auto").strip()
    if value == "auto":
        return None
    if value == "reference":
        return frozenset()
    names = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = sorted(names - set(backends()))
    if unknown or not names:
        raise ValueError(f"{source}: '{text}' is not a kernel policy; use auto, reference or a comma-separated "
                         f"list of backends from: {', '.join(backends())}")
    return names


def policy() -> str:
    """The policy in force: the innermost :func:`use`, else ``$SPEECHDISTILL_KERNELS``, else ``auto``."""
    chosen = _POLICY.get()
    return chosen if chosen is not None else os.environ.get(ENV_VARIABLE, "auto") or "auto"


@functools.lru_cache(maxsize=32)
def _parsed(text: str, source: str) -> Optional[FrozenSet[str]]:
    return parse_policy(text, source=source)


def _allowed() -> Optional[FrozenSet[str]]:
    chosen = _POLICY.get()
    if chosen is not None:
        return _parsed(chosen, "kernels")
    return _parsed(os.environ.get(ENV_VARIABLE, "auto"), ENV_VARIABLE)


@contextlib.contextmanager
def use(choice: Optional[str]) -> Iterator[None]:
    """Run the body under kernel policy ``choice`` (None: leave the policy as it is)."""
    if choice is None:
        yield
        return
    parse_policy(choice, source="kernels")
    token = _POLICY.set(choice)
    try:
        yield
    finally:
        _POLICY.reset(token)


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype matrix products produce for ``tensor``: the autocast dtype when autocast is on."""
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


def is_frozen(parameters: Sequence[Optional[torch.Tensor]]) -> bool:
    """Whether derived tensors of ``parameters`` may be kept: none requires grad, none is an inference
    tensor (those have no version counter), and not under ``torch.compile``."""
    for p in parameters:
        if p is not None and (p.requires_grad or p.is_inference()):
            return False
    return not torch.compiler.is_compiling()


def request(op: str, x: torch.Tensor, parameters: Sequence[Optional[torch.Tensor]] = (), size: int = 0) -> Request:
    """The :class:`Request` of a call of ``op`` on input ``x`` with ``parameters``."""
    frozen = is_frozen(parameters)
    grad = torch.is_grad_enabled() and (x.requires_grad or not frozen and any(p is not None and p.requires_grad
                                                                              for p in parameters))
    return Request(op, x.device, compute_dtype(x), frozen, grad, int(size))


def _first(req: Request, allowed: Optional[FrozenSet[str]]) -> Optional[Kernel]:
    for kernel in _KERNELS[req.op]:
        if (allowed is None or kernel.backend in allowed) and kernel.applies(req):
            return kernel
    return None


def select(req: Request) -> Optional[Kernel]:
    """The kernel that runs ``req`` under the current policy, or None (the model's own code)."""
    allowed = _allowed()
    if not _KERNELS[req.op] or (allowed is not None and not allowed) or torch.compiler.is_compiling():
        return None
    return _first(req, allowed)


def find(op: str, x: torch.Tensor, parameters: Sequence[Optional[torch.Tensor]] = (), size: int = 0
         ) -> Optional[Callable]:
    """The implementation that runs ``op`` on ``x`` here, or None when the model's own code does."""
    allowed = _allowed()
    if not _KERNELS[op] or (allowed is not None and not allowed) or torch.compiler.is_compiling():
        return None
    kernel = _first(request(op, x, parameters, size), allowed)
    return None if kernel is None else kernel.run
