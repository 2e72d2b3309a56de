"""Load fairseq / s3prl / unilm checkpoints without fairseq or omegaconf installed.

``torch.load(weights_only=True)`` refuses these files because their ``cfg`` is an omegaconf
``DictConfig`` (and older ones hold an ``argparse.Namespace`` or fairseq enums). A plain
unpickler would import whatever the file names, which is unsafe and needs the packages.

Here every global the pickle references is resolved against an allow-list:
tensors and storages (torch's own safe list), plain containers, ``argparse.Namespace``,
numpy arrays and scalars. Classes from ``omegaconf``, ``fairseq``, ``hydra`` and ``s3prl`` are
replaced by inert stand-ins that only record their pickled state; ``plain()`` then turns
them into dicts, lists and scalars (a DictConfig becomes a dict of its values, an enum member
its value). Anything else is refused with an error naming the global.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import builtins
import collections
import copyreg
import pathlib
import pickle
import typing
from typing import Any, Dict, Tuple

import torch

# Packages whose classes become stand-ins (their objects only carry configuration).
STAND_IN_PACKAGES = ("omegaconf", "fairseq", "hydra", "s3prl", "upstream", "dataclasses_json")

_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bytes", "bytearray",
                  "bool", "complex", "slice", "range", "object", "NoneType"}
_SAFE_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("pathlib", "PosixPath"): pathlib.PosixPath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
    ("pathlib", "WindowsPath"): pathlib.PureWindowsPath,
    ("pathlib", "PureWindowsPath"): pathlib.PureWindowsPath,
    ("typing", "Any"): typing.Any,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
}


class CheckpointUnpicklingError(ValueError):
    """A checkpoint references a Python object that is not allowed to be loaded."""


class StandIn:
    """Inert replacement for a class of a stand-in package; records what pickle gives it."""

    _module = ""
    _name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "StandIn":
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # pickle SETITEMS on dict subclasses
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value: Any) -> None:  # pickle APPENDS on list subclasses
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<stand-in for {self._module}.{self._name}>"


_stand_in_classes: Dict[Tuple[str, str], type] = {}


def _stand_in(module: str, name: str) -> type:
    key = (module, name)
    if key not in _stand_in_classes:
        _stand_in_classes[key] = type(name, (StandIn,), {"_module": module, "_name": name})
    return _stand_in_classes[key]


def _torch_safe_globals() -> Dict[str, Any]:
    try:
        from torch import _weights_only_unpickler as wou
        return dict(wou._get_allowed_globals())
    except (ImportError, AttributeError):  # older torch: fall back on the few we need
        import torch._utils as tu
        return {"torch._utils._rebuild_tensor_v2": tu._rebuild_tensor_v2,
                "torch._utils._rebuild_parameter": tu._rebuild_parameter,
                "torch.Size": torch.Size}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving globals only from the allow-list (see module docstring)."""

    _torch_globals: Dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 2 pickles (torch.save's default) carry Python 2 names such as __builtin__.dict;
        # the base class would translate them, but this method replaces its lookup.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if not RestrictedUnpickler._torch_globals:
            RestrictedUnpickler._torch_globals = _torch_safe_globals()
        full = f"{module}.{name}"
        if full in self._torch_globals:
            return self._torch_globals[full]
        if module == "builtins" and name in _SAFE_BUILTINS:
            return type(None) if name == "NoneType" else getattr(builtins, name)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module.split(".")[0] in STAND_IN_PACKAGES:
            return _stand_in(module, name)
        if module == "enum" and name == "Enum":
            return _stand_in(module, name)
        if module.split(".")[0] == "numpy":
            return self._numpy_global(module, name)
        if module == "torch" and hasattr(torch, name) and isinstance(getattr(torch, name), (torch.dtype, torch.device)):
            return getattr(torch, name)
        raise CheckpointUnpicklingError(
            f"the checkpoint references the Python object '{full}', which is not on the list of objects "
            "this loader accepts (tensors, plain containers, numpy arrays, omegaconf/fairseq configs); "
            "if the file is trusted, convert it to a plain state dict first")

    @staticmethod
    def _numpy_global(module: str, name: str) -> Any:
        import numpy as np
        allowed = {"_reconstruct", "scalar", "ndarray", "dtype"}
        if name in allowed and module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
            if name == "_reconstruct" or name == "scalar":
                try:
                    from numpy._core import multiarray
                except ImportError:  # numpy < 2
                    from numpy.core import multiarray  # type: ignore[no-redef]
                return getattr(multiarray, name)
            return getattr(np, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            return getattr(np.dtypes, name)
        raise CheckpointUnpicklingError(f"the checkpoint references '{module}.{name}', which is not allowed")


class _PickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load``."""

    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


def load_checkpoint(path: str) -> Any:
    """``torch.load`` of a trusted-format checkpoint through the restricted unpickler, on CPU.

    Raises:
        CheckpointUnpicklingError: the file references a disallowed object.
        pickle.UnpicklingError / RuntimeError: the file is not a PyTorch checkpoint.
    """
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PickleModule)


def plain(obj: Any, _seen: Any = None) -> Any:
    """Turn stand-ins (DictConfig, ListConfig, value nodes, enums, fairseq objects) and
    ``argparse.Namespace`` into plain dicts, lists and scalars; tensors are kept."""
    if _seen is None:
        _seen = set()
    if isinstance(obj, torch.Tensor) or isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return obj
    if id(obj) in _seen:
        return None
    if isinstance(obj, StandIn):
        _seen.add(id(obj))
        try:
            state = obj.__dict__.get("_state")
            if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], (dict, type(None))):
                state = {**(state[0] or {}), **(state[1] or {})}
            if isinstance(state, dict) and "_content" in state:  # DictConfig / ListConfig
                content = state["_content"]
                if isinstance(content, dict):
                    return {plain(k, _seen): plain(v, _seen) for k, v in content.items()}
                if isinstance(content, (list, tuple)):
                    return [plain(v, _seen) for v in content]
                return None if content in (None, "???") else plain(content, _seen)
            if isinstance(state, dict) and "_val" in state:  # omegaconf value node
                return plain(state["_val"], _seen)
            args = obj.__dict__.get("_args") or ()
            if state is None and len(args) == 1:  # enum member pickled as Class(value)
                return plain(args[0], _seen)
            if "_items" in obj.__dict__:
                return {plain(k, _seen): plain(v, _seen) for k, v in obj.__dict__["_items"].items()}
            if "_list" in obj.__dict__:
                return [plain(v, _seen) for v in obj.__dict__["_list"]]
            if isinstance(state, dict):
                return {k: plain(v, _seen) for k, v in state.items() if not str(k).startswith("_parent")}
            return None
        finally:
            _seen.discard(id(obj))
    if isinstance(obj, argparse.Namespace):
        return {k: plain(v, _seen) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: plain(v, _seen) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, _seen) for v in obj]
    return obj
