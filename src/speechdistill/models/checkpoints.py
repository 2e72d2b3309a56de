"""Loading any supported model: the format is told from the path, then the importer of that format runs
(:mod:`.model_dir` for ours, :mod:`.import_huggingface`, :mod:`.import_fairseq` for fairseq and s3prl).

``load_model(path)`` accepts
  * our model directory: ``config.yaml`` + ``model.safetensors`` (no pickle);
  * a Hugging Face directory: ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``
    (or their sharded index) of HubertModel, Wav2Vec2Model, WavLMModel and their *ForCTC /
    *ForPreTraining / *ForSequenceClassification wrappers (prefix ``hubert.`` etc.);
  * a fairseq ``.pt`` (HuBERT, wav2vec 2.0, also CTC fine-tuned; WavLM as unilm ships it,
    ``{"cfg", "model"}``) -- read without fairseq through ``unpickle.load_checkpoint``;
  * an s3prl converted checkpoint ``{"task_cfg", "model_cfg", "model_weight", ...}``.
The format is detected from the path; anything else is a ``ModelFormatError`` that says what
was found. Key maps are spec 00_teachers.md §2-§4; weight norm is accepted both as
``weight_g/weight_v`` and as ``parametrizations.weight.original0/1``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

from .encoder import Encoder
from .import_fairseq import FAIRSEQ_IGNORED, FAIRSEQ_RULES, config_from_fairseq, import_pickled, parse_conv_layers
from .import_huggingface import HF_BASE_PREFIXES, HF_MODEL_TYPES, HF_RULES, config_from_hf, import_hf
from .model_dir import (CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, HEADS_WEIGHTS_FILE, WEIGHTS_FILE, import_ours,
                        load_heads, read_model_config, save_model)
from .weights import (ImportReport, ModelFormatError, PathLike, count_parameters, describe_shape,
                      encoder_with_weights, map_state_dict, read_safetensors)

__all__ = ["CONFIG_FILE", "FAIRSEQ_IGNORED", "FAIRSEQ_RULES", "FORMAT_NAME", "FORMAT_VERSION", "HEADS_WEIGHTS_FILE",
           "HF_BASE_PREFIXES", "HF_MODEL_TYPES", "HF_RULES", "WEIGHTS_FILE", "ImportReport", "ModelFormatError",
           "config_from_fairseq", "config_from_hf", "count_parameters", "describe_shape", "detect_format",
           "encoder_with_weights", "import_model", "load_heads", "load_model", "map_state_dict", "parse_conv_layers",
           "read_model_config", "read_safetensors", "save_model"]


def detect_format(path: PathLike) -> str:
    """'ours', 'huggingface' or 'checkpoint' (a pickled file: fairseq or s3prl, told apart on load)."""
    p = Path(path)
    if not p.exists():
        raise ModelFormatError(f"{p}: no such file or directory")
    if p.is_dir():
        names = sorted(x.name for x in p.iterdir())
        if CONFIG_FILE in names:
            if WEIGHTS_FILE not in names:
                raise ModelFormatError(f"{p}: has {CONFIG_FILE} but no {WEIGHTS_FILE}; the model directory is "
                                       "incomplete (re-run the stage that wrote it)")
            return "ours"
        if "config.json" in names:
            return "huggingface"
        raise ModelFormatError(f"{p}: a directory with neither {CONFIG_FILE} (our format) nor config.json "
                               f"(Hugging Face); it contains {names[:10]}")
    if p.suffix in (".safetensors", ".yaml", ".yml", ".json"):
        raise ModelFormatError(f"{p}: a lone {p.suffix} file is not a model; point to the directory that holds "
                               "the config and the weights together")
    return "checkpoint"


def import_model(path: PathLike) -> Tuple[Encoder, ImportReport]:
    """Load any supported model (see module docstring); returns the encoder in eval mode and a report."""
    fmt = detect_format(path)
    p = Path(path)
    if fmt == "ours":
        return import_ours(p)
    if fmt == "huggingface":
        return import_hf(p)
    return import_pickled(str(p))


def load_model(path: PathLike) -> Encoder:
    """Our model directory, a Hugging Face directory, a fairseq .pt or an s3prl converted checkpoint
    -> ``Encoder`` (eval mode; call ``.train()`` to train it)."""
    return import_model(path)[0]
