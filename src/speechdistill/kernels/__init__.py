"""Device-specific speed-ups of the model, behind one small interface.

The model (:mod:`speechdistill.models`) is plain PyTorch: the code a CUDA device runs. At four places it
asks :func:`find` for a faster kernel and, if there is one for the call at hand, hands the call to it:

=================  ==============================================  ==========================================
op                 model call site                                  kernels (backend), tried in this order
=================  ==============================================  ==========================================
``linear``         ``components.project`` (every projection)        ``linear/onednn-packed``,
                                                                    ``linear/onednn-dense`` (onednn),
                                                                    ``linear/frozen-cast`` (frozen, any device)
``conv_features``  ``ConvFeatureExtractor.forward`` (the CNN)       ``conv_features/cpu-windows`` (cpu)
``positional_conv`` ``PositionalConv.forward``                      ``positional_conv/cpu`` (cpu)
``dropout``        ``components.dropout`` (and attention dropout)   ``dropout/cpu-words`` (cpu)
=================  ==============================================  ==========================================

Each kernel is tested against the model's own code, forward and backward (``tests/test_kernels.py``).
``SPEECHDISTILL_KERNELS=reference`` (or the trainer's ``--kernels reference``, or :func:`use`) runs the
model's own code on any device; ``auto`` (the default) lets every backend run where it applies; a
comma-separated list of backends enables only those. See ``docs/internals.md`` for adding a backend.
"""
from . import conv, dropout, linear, positional  # noqa: F401  (importing registers the kernels)
from .cache import kept, kept_entries
from .registry import (ENV_VARIABLE, OPS, Kernel, Request, backends, compute_dtype, find, is_frozen, kernels,
                       parse_policy, policy, register, request, select, use)

__all__ = ["ENV_VARIABLE", "OPS", "Kernel", "Request", "backends", "compute_dtype", "find", "is_frozen", "kept",
           "kept_entries", "kernels", "parse_policy", "policy", "register", "request", "select", "use"]
