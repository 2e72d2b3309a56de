"""Our model directory: ``config.yaml`` (format name and version, the encoder config, optional heads and
provenance) + ``model.safetensors`` (+ ``heads.safetensors``); no pickle. Written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Type

import torch
import yaml

from ..config import ConfigError, to_dict
from ..data.tables import replace_dir_atomically
from .config import EncoderConfig
from .encoder import Encoder
from .weights import ImportReport, ModelFormatError, PathLike, count_parameters, encoder_with_weights, read_safetensors

FORMAT_NAME = "speechdistill-encoder"
FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
HEADS_WEIGHTS_FILE = "heads.safetensors"


def read_format_config(path: Path, format_name: str, format_version: int,
                       error: Type[Exception] = ModelFormatError) -> Dict[str, Any]:
    """The mapping of a versioned YAML config (``format: <format_name>``, ``format_version: <n>``) that this
    speechdistill can read, or ``error`` naming the file and what is wrong with it."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != format_name:
        raise error(f"{path}: not a {format_name} config (missing 'format: {format_name}')")
    if int(data.get("format_version", 0)) > format_version:
        raise error(f"{path}: format_version {data.get('format_version')} is newer than this speechdistill "
                    f"({format_version}); upgrade speechdistill")
    return data


def read_model_config(directory: PathLike) -> Dict[str, Any]:
    return read_format_config(Path(directory) / CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION)


def import_ours(directory: Path) -> Tuple[Encoder, ImportReport]:
    data = read_model_config(directory)
    try:
        config = EncoderConfig.from_dict(data.get("encoder") or {}, where=f"{directory / CONFIG_FILE}: encoder")
    except ConfigError as exc:
        raise ModelFormatError(str(exc)) from None
    model = encoder_with_weights(config, read_safetensors(directory / WEIGHTS_FILE), str(directory / WEIGHTS_FILE))
    source = data.get("source") or {}
    report = ImportReport(path=str(directory), format="ours",
                          architecture=str(source.get("architecture", "speechdistill")), config=config,
                          num_params=count_parameters(model))
    return model.eval(), report


def save_model(model: Encoder, out_dir: PathLike, *, heads: Optional[torch.nn.Module] = None,
               source: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``config.yaml`` + ``model.safetensors`` (+ ``heads.safetensors`` when heads are given).

    The directory appears complete or not at all (written under a temporary name, then renamed).
    ``source`` is free-form provenance stored in config.yaml (e.g. the imported path and format).
    """
    from safetensors.torch import save_file

    if not isinstance(model, Encoder):
        raise TypeError(f"save_model expects an Encoder, got {type(model).__name__}")
    out = Path(out_dir)
    document: Dict[str, Any] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                "encoder": to_dict(model.config)}
    if source:
        document["source"] = dict(source)
    if heads is not None:
        from .heads import heads_config
        document["heads"] = heads_config(heads)

    def write(tmp: Path) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        if heads is not None:
            head_state = {k: v.detach().to("cpu").contiguous() for k, v in heads.state_dict().items()}
            save_file(head_state, str(tmp / HEADS_WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=None),
                                       encoding="utf-8")

    replace_dir_atomically(out, write)
    return out


def load_heads(directory: PathLike) -> Optional[torch.nn.Module]:
    """The target-mapping heads saved next to a model (None when the directory has none)."""
    from .heads import build_heads

    data = read_model_config(directory)
    if not data.get("heads"):
        return None
    heads = build_heads(data["heads"], where=f"{Path(directory) / CONFIG_FILE}: heads")
    heads.load_state_dict(read_safetensors(Path(directory) / HEADS_WEIGHTS_FILE), strict=True)
    return heads
